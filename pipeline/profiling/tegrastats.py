"""Parse Jetson ``tegrastats`` lines (pure functions, no Jetson needed).

Handles the Orin formats (Orin Nano / NX: ``VDD_IN``, ``VDD_CPU_GPU_CV``, ``VDD_SOC``; AGX Orin:
``VDD_GPU_SOC``, ``VDD_CPU_CV``, ``VIN_SYS_5V0``, ...), the optional timestamp prefix of newer
JetPack (``11-23-2026 10:00:00 RAM ...``), CPU cores that are ``off``, ``GR3D_FREQ 0%@[305]`` and
``GR3D_FREQ 0%`` and older ``POM_*`` rails with or without ``mW``. Temperatures of absent
sensors (tegrastats prints ``-256C``) are left out.
"""
from __future__ import annotations

import re
from typing import Any

from pipeline.errors import InputDataError

_STAMP = re.compile(r"^\s*(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})\s+")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_CORE = re.compile(r"^\s*(\d+)%(?:@(\d+))?\s*$")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+)[^\s]*)?")
_TEMP = re.compile(r"(?<![\w%])([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b((?:VDD|VIN|POM)_[A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?")
ABSENT_TEMP_C = -200.0          # tegrastats prints -256C for sensors that are not there


def parse_tegrastats(line: str, *, source: str = "tegrastats") -> dict[str, Any]:
    """One tegrastats line -> a dict of numbers.

    Keys: ``timestamp`` (str or None), ``ram_used_mb``, ``ram_total_mb``, ``swap_used_mb``,
    ``swap_total_mb``, ``cpu`` (per core: ``{"load_pct", "freq_mhz"}`` or None when off),
    ``emc_pct``, ``emc_freq_mhz``, ``gr3d_pct``, ``gr3d_freq_mhz``, ``temps_c`` (name -> °C),
    ``power_mw`` (rail -> ``{"now", "avg"}``). A line without ``RAM`` is refused.
    """
    m = _RAM.search(line)
    if m is None:
        raise InputDataError(f"not a tegrastats line: {line[:80]!r}", path=source, field="RAM")
    out: dict[str, Any] = {"timestamp": None, "ram_used_mb": int(m.group(1)), "ram_total_mb": int(m.group(2))}
    s = _STAMP.match(line)
    if s:
        out["timestamp"] = s.group(1)
    s = _SWAP.search(line)
    out["swap_used_mb"], out["swap_total_mb"] = (int(s.group(1)), int(s.group(2))) if s else (None, None)
    cores: list[dict[str, Any] | None] = []
    s = _CPU.search(line)
    if s:
        for part in s.group(1).split(","):
            c = _CORE.match(part)
            if c is None:                    # "off" (core offline)
                cores.append(None)
            else:
                cores.append({"load_pct": int(c.group(1)),
                              "freq_mhz": int(c.group(2)) if c.group(2) else None})
    out["cpu"] = cores
    s = _EMC.search(line)
    out["emc_pct"] = int(s.group(1)) if s else None
    out["emc_freq_mhz"] = int(s.group(2)) if s and s.group(2) else None
    s = _GR3D.search(line)
    out["gr3d_pct"] = int(s.group(1)) if s else None
    out["gr3d_freq_mhz"] = int(s.group(2)) if s and s.group(2) else None
    temps = {}
    for name, value in _TEMP.findall(line):
        v = float(value)
        if v > ABSENT_TEMP_C:
            temps[name.lower()] = v
    out["temps_c"] = temps
    out["power_mw"] = {name: {"now": int(now), "avg": int(avg)} for name, now, avg in _RAIL.findall(line)}
    return out


def cpu_load_mean(parsed: dict[str, Any]) -> float | None:
    """Mean load of the online cores of a parsed line (None when no core is online)."""
    loads = [c["load_pct"] for c in parsed.get("cpu", []) if c is not None]
    return sum(loads) / len(loads) if loads else None
