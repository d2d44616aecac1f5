"""Profiling: the tegrastats parser on real Orin formats, a short profile run (JSON + report whose
numbers agree with it), compare, find-peak (tiny), refusals."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.errors import InputDataError
from pipeline.profiling.tegrastats import cpu_load_mean, parse_tegrastats

REPO = Path(__file__).resolve().parents[1]

# Orin Nano / NX (JetPack 6: timestamp prefix), per NVIDIA's documented tegrastats output.
ORIN_NX = ("11-23-2026 10:00:00 RAM 2448/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
           "CPU [2%@729,1%@729,0%@729,5%@729,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] NVDEC off NVJPG off "
           "VIC_FREQ 0%@115 APE 174 cpu@47.5C soc2@46.9C soc0@46.1C gpu@-256C tj@47.5C soc1@47.1C "
           "VDD_IN 4862mW/4862mW VDD_CPU_GPU_CV 482mW/482mW VDD_SOC 1444mW/1444mW")
# AGX Orin (JetPack 5: no timestamp), 12 cores, two GR3D TPC frequencies.
AGX_ORIN = ("RAM 3472/30536MB (lfb 6536x4MB) SWAP 0/15268MB (cached 0MB) CPU [1%@1190,0%@1190,0%@1190,"
            "0%@1190,0%@729,0%@729,0%@729,0%@729,18%@2201,3%@2201,0%@2201,0%@2201] EMC_FREQ 1%@3199 "
            "GR3D_FREQ 57%@[1300,1300] VIC_FREQ 729 APE 174 CV0@-256C CPU@45.75C SOC2@42.906C SOC0@43.5C "
            "CV1@-256C GPU@41.843C tj@45.75C SOC1@41.656C CV2@-256C VDD_GPU_SOC 3030mW/3030mW "
            "VDD_CPU_CV 757mW/757mW VIN_SYS_5V0 2919mW/2919mW NC 0mW/0mW VDDQ_VDD2_1V8AO 402mW/402mW NC 0mW/0mW")


def test_tegrastats_orin_nx():
    t = parse_tegrastats(ORIN_NX)
    assert t["timestamp"] == "11-23-2026 10:00:00"
    assert (t["ram_used_mb"], t["ram_total_mb"], t["swap_used_mb"], t["swap_total_mb"]) == (2448, 7620, 0, 3810)
    assert len(t["cpu"]) == 6 and t["cpu"][4] is None and t["cpu"][5] is None
    assert t["cpu"][0] == {"load_pct": 2, "freq_mhz": 729} and t["cpu"][3]["load_pct"] == 5
    assert cpu_load_mean(t) == pytest.approx(2.0)
    assert (t["emc_pct"], t["emc_freq_mhz"], t["gr3d_pct"], t["gr3d_freq_mhz"]) == (0, 2133, 0, 305)
    assert t["temps_c"] == {"cpu": 47.5, "soc2": 46.9, "soc0": 46.1, "tj": 47.5, "soc1": 47.1}   # gpu@-256C: absent
    assert t["power_mw"] == {"VDD_IN": {"now": 4862, "avg": 4862}, "VDD_CPU_GPU_CV": {"now": 482, "avg": 482},
                             "VDD_SOC": {"now": 1444, "avg": 1444}}


def test_tegrastats_agx_orin():
    t = parse_tegrastats(AGX_ORIN)
    assert t["timestamp"] is None
    assert (t["ram_used_mb"], t["ram_total_mb"]) == (3472, 30536)
    assert len(t["cpu"]) == 12 and t["cpu"][8] == {"load_pct": 18, "freq_mhz": 2201}
    assert (t["emc_pct"], t["emc_freq_mhz"], t["gr3d_pct"], t["gr3d_freq_mhz"]) == (1, 3199, 57, 1300)
    assert t["temps_c"]["gpu"] == pytest.approx(41.843) and t["temps_c"]["cpu"] == pytest.approx(45.75)
    assert "cv0" not in t["temps_c"]
    assert t["power_mw"]["VDD_GPU_SOC"] == {"now": 3030, "avg": 3030}
    assert t["power_mw"]["VDD_CPU_CV"] == {"now": 757, "avg": 757}
    assert t["power_mw"]["VIN_SYS_5V0"]["now"] == 2919
    assert "NC" not in t["power_mw"] and "VDD_IN" not in t["power_mw"]


def test_tegrastats_older_rails_and_refusal():
    t = parse_tegrastats("RAM 1000/3956MB (lfb 1x1MB) CPU [10%@1479,20%@1479,off,off] EMC_FREQ 3% "
                         "GR3D_FREQ 0% PLL@31C CPU@33.5C POM_5V_IN 2012/2012 POM_5V_GPU 0/0 POM_5V_CPU 402/402")
    assert t["power_mw"]["POM_5V_IN"] == {"now": 2012, "avg": 2012}
    assert t["gr3d_pct"] == 0 and t["gr3d_freq_mhz"] is None and t["emc_freq_mhz"] is None
    assert t["swap_total_mb"] is None and cpu_load_mean(t) == pytest.approx(15.0)
    with pytest.raises(InputDataError, match="RAM"):
        parse_tegrastats("tegrastats: command not found")


@pytest.fixture(scope="session")
def drive(tmp_path_factory) -> Path:
    from pipeline.sim.simulate import simulate

    path = tmp_path_factory.mktemp("profiling") / "drive"
    simulate(path, frames=8, seed=5, scale=0.3, progress=False, workers=1)
    return path


def _config(tmp: Path, drive: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["input"]["uri"] = str(drive)
    cfg["run"]["progress"] = False
    cfg["masks"] = "ground_truth"            # the profiler's mechanics, on the oracle masks (small drive)
    cfg["sinks"]["overlay"]["enabled"] = False
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def profiled(drive, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("profile")
    assert main(["profile", str(_config(tmp, drive)), "--frames", "5", "--interval", "0.05",
                 "--out", str(tmp / "a"), "--no-progress"]) == 0
    return tmp / "a"


def test_profile_json(profiled):
    from pipeline.profiling.stats import compute_stats

    p = json.loads((profiled / "profile.json").read_text())
    assert p["schema"] == "segfuse.profile/1"
    assert p["counts"] == {"in": 5, "done": 5, "dropped": 0, "failed": 0} and p["dropped_indices"] == []
    assert [f["index"] for f in p["frames"]] == [0, 1, 2, 3, 4]
    for f in p["frames"]:
        assert {"source", "sync", "masks", "fuse", "record"} <= set(f["stages"])
        assert all(a <= b for a, b in f["stages"].values()) and f["sensor_stamp_ns"] > 0
        assert f["stages"]["sync"][1] <= f["stages"]["masks"][0] <= f["stages"]["fuse"][0] <= f["stages"]["record"][0]
    m = p["machine"]
    assert m["cores_logical"] >= 1 and m["cpu_model"]
    assert m["jetson"] == "not a Jetson" or isinstance(m["jetson"], dict)
    assert isinstance(m["gpu"], (str, list))
    # system samples on the frames' clock, around the frames
    ts = [s["t_ns"] for s in p["samples"]]
    assert len(ts) >= 2 and ts == sorted(ts)
    assert ts[0] <= p["frames"][0]["stages"]["sync"][0] and ts[-1] >= p["frames"][-1]["stages"]["record"][1]
    assert all(len(s["cpu_percent"]) == m["cores_logical"] and s["rss_mb"] > 0 for s in p["samples"])
    # the stored stats are the stats of the stored frames; percentiles ordered
    assert p["stats"] == compute_stats(p)
    for v in [p["stats"]["e2e_ms"], *p["stats"]["stages_ms"].values()]:
        assert 0 <= v["p50"] <= v["p90"] <= v["p99"] <= v["max"]
    assert p["tracing"]["per_frame_us"] > 0 and p["tracing"]["records_per_frame"] == len(p["frames"][0]["stages"])
    assert p["summary"]["frames"]["done"] == 5


def test_report_numbers_agree_with_json(profiled):
    from pipeline.profiling.report import PLOTS, fmt
    from pipeline.profiling.stats import lookup

    p = json.loads((profiled / "profile.json").read_text())
    text = (profiled / "report.html").read_text()
    cells = re.findall(r'data-stat="([^"]+)">([^<]*)<', text)
    keys = {k for k, _ in cells}
    assert {"e2e_ms.p50", "e2e_ms.p99", "e2e_ms.max", "jitter_ms.interval_std", "throughput_fps",
            "stages_ms.fuse.p90", "stages_ms.record.p99", "system.cpu_mean_pct"} <= keys
    for key, shown in cells:
        assert shown == fmt(lookup(p["stats"], key)), key
    for name in PLOTS:
        png = profiled / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"alt='{name}'" in text


def test_compare(profiled, drive, tmp_path, capsys):
    assert main(["profile", str(_config(tmp_path, drive)), "--frames", "3", "--rate", "2", "--interval", "0.05",
                 "--out", str(tmp_path / "b"), "--no-progress", "--no-report"]) == 0
    assert not (tmp_path / "b" / "report.html").exists()
    capsys.readouterr()
    png = tmp_path / "cmp.png"
    assert main(["profile", "compare", str(profiled / "profile.json"), str(tmp_path / "b"), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["a", "b"]
    row = next(line for line in out.splitlines() if line.startswith("frames out"))
    assert row.split()[-2:] == ["5", "3"]
    assert any(line.startswith("fuse p99 ms") for line in out.splitlines())
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_compare_refuses_non_profile(tmp_path, caplog):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert main(["profile", "compare", str(bad)]) == 2
    assert "x.json" in caplog.text and "schema" in caplog.text


def test_find_peak_tiny(drive, tmp_path, capsys):
    assert main(["profile", str(_config(tmp_path, drive)), "--frames", "3", "--find-peak", "--peak-range", "1:1000",
                 "--iterations", "1", "--interval", "0.1", "--out", str(tmp_path / "peak"), "--no-progress"]) == 0
    result = json.loads((tmp_path / "peak" / "peak.json").read_text())
    hz = [t["hz"] for t in result["trials"]]
    assert hz[:2] == [1.0, 1000.0]
    assert len(hz) in (2, 3)
    for t in result["trials"]:
        p = json.loads(Path(t["profile"]).read_text())
        assert p["run"]["policy"] == "live" and p["run"]["rate_hz"] == t["hz"]
        assert t["ok"] == (t["drop_pct"] <= 1.0 and t["e2e_p99_ms"] <= result["max_latency_ms"])
    assert result["peak_hz"] in [t["hz"] for t in result["trials"] if t["ok"]] + [None]
    assert "peak:" in capsys.readouterr().out


def test_sampler_reads_a_tegrastats_process(tmp_path, monkeypatch):
    """The Jetson path end to end without a Jetson: a stand-in ``tegrastats`` on PATH printing
    Orin NX lines; the sampler attaches the parsed line to its samples, stats average them."""
    from pipeline.profiling.stats import system_stats
    from pipeline.profiling.system import SystemSampler, jetson_info

    exe = tmp_path / "bin" / "tegrastats"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\nwhile true; do echo '{ORIN_NX}'; sleep 0.02; done\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}:{__import__('os').environ['PATH']}")
    info = jetson_info()
    assert isinstance(info, dict) and info["nvpmodel"].startswith("unavailable")
    import time
    with SystemSampler(0.05) as s:
        time.sleep(0.4)
    assert s.sources["tegrastats"].startswith("tegrastats --interval 50")
    teg = [x["tegrastats"] for x in s.samples if "tegrastats" in x]
    assert teg and teg[-1]["power_mw"]["VDD_IN"]["now"] == 4862 and teg[-1]["gr3d_freq_mhz"] == 305
    st = system_stats(s.samples, 0, 2**62)
    assert st["vdd_in_mean_mw"] == 4862.0 and st["gr3d_mean_pct"] == 0.0
    assert s._teg_proc.poll() is not None                  # the tegrastats process is gone


def test_nvtx_ranges_per_stage(drive, tmp_path, monkeypatch):
    """With an ``nvtx`` module importable, every stage call runs inside a range named after it."""
    import sys
    import threading
    import types

    calls: list[tuple[str, str]] = []
    lock = threading.Lock()
    fake = types.ModuleType("nvtx")

    def push_range(message=None, domain=None, **_):
        with lock:
            calls.append(("push", message))

    def pop_range(domain=None, **_):
        with lock:
            calls.append(("pop", None))
    fake.push_range, fake.pop_range = push_range, pop_range
    monkeypatch.setitem(sys.modules, "nvtx", fake)
    from pipeline.profiling.profile import run_profile
    from pipeline.run_config import load_run_config

    cfg = load_run_config(_config(tmp_path, drive)).with_overrides(frames=2)
    calls_before = len(calls)
    r = run_profile(cfg, tmp_path / "nvtx", interval_s=0.1, progress=False, trace_cost=False)
    assert r.profile["nvtx"].startswith("on")
    pushed = [m for op, m in calls[calls_before:] if op == "push"]
    assert sorted(set(pushed)) == ["fuse", "masks", "record", "track"]
    assert pushed.count("fuse") == 2
    assert sum(op == "pop" for op, _ in calls) == sum(op == "push" for op, _ in calls)
