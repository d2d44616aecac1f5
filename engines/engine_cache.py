"""TensorRT engine cache and version dispatch, in pure Python (testable without TensorRT).

An engine is valid only for the exact ONNX, precision, input shapes, TensorRT version,
GPU (name and compute capability), DLA core and INT8 calibration cache it was built
with. ``cache_key`` hashes all of them; the engine is stored as ``<stem>.<key16>.engine``
with a JSON sidecar holding the key's inputs, so a stale engine is never loaded and an
``engines info`` can say what an engine was built from. The timing cache is kept per
TensorRT version and GPU, and reused across builds.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import EngineError

CACHE_FORMAT = 1
STRONGLY_TYPED_FROM = (10, 12)     # weak typing deprecated in 10.12, removed in 11
PRECISIONS = ("fp32", "fp16", "int8")


def parse_version(version: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); '8.5.2-1+cuda11.4' -> (8, 5, 2)."""
    nums = re.findall(r"\d+", version.split("+")[0].split("-")[0])
    if not nums:
        raise EngineError(f"cannot parse TensorRT version {version!r}", field="tensorrt.__version__")
    return tuple(int(n) for n in nums)


def select_build_path(trt_version: str) -> str:
    """"legacy_flags" below 10.12 (JetPack 5's 8.5, JetPack 6's 10.3): FP16/INT8 by builder flags,
    INT8 by an entropy calibrator. "strongly_typed" from 10.12 and on 11 (where the flags are
    gone): the precision is in the ONNX (AutoCast FP16 or Q/DQ INT8), the network strongly typed."""
    v = parse_version(trt_version)
    if v[:2] < (8, 5):
        raise EngineError(f"TensorRT {trt_version} is too old: segfuse needs 8.5 or newer (name-based I/O API)",
                          field="tensorrt.__version__")
    return "strongly_typed" if v[:2] >= STRONGLY_TYPED_FROM else "legacy_flags"


@dataclass(frozen=True)
class BuildKey:
    """Everything an engine depends on."""

    onnx_sha256: str
    precision: str
    shapes: dict[str, list[list[int]]]         # input name -> [min, opt, max] shapes
    trt_version: str
    gpu_name: str
    compute_capability: str                    # "8.7"
    dla_core: int | None = None
    calibration_sha256: str | None = None      # INT8 legacy path: the calibration cache's hash
    build_path: str = ""                       # legacy_flags | strongly_typed
    extra: dict[str, Any] = field(default_factory=dict)   # workspace, builder options that change the plan

    def canonical(self) -> str:
        d = asdict(self)
        d["cache_format"] = CACHE_FORMAT
        return json.dumps(d, sort_keys=True, separators=(",", ":"))


def cache_key(key: BuildKey) -> str:
    """sha256 hex of the canonical JSON of ``key``: any change to any field changes it."""
    if key.precision not in PRECISIONS:
        raise EngineError(f"precision must be one of {', '.join(PRECISIONS)}, got {key.precision!r}",
                          field="precision")
    return hashlib.sha256(key.canonical().encode()).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def engine_paths(cache_dir: str | Path, onnx_path: str | Path, key_hex: str) -> tuple[Path, Path]:
    stem = Path(onnx_path).stem
    base = Path(cache_dir) / f"{stem}.{key_hex[:16]}"
    return base.with_suffix(".engine"), base.with_suffix(".json")


def timing_cache_path(cache_dir: str | Path, trt_version: str, gpu_name: str, compute_capability: str) -> Path:
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    return Path(cache_dir) / f"timing-trt{trt_version}-{gpu}-sm{compute_capability.replace('.', '')}.cache"


def write_sidecar(path: str | Path, key: BuildKey, key_hex: str, *, engine_file: str | Path,
                  build_seconds: float | None = None, notes: dict[str, Any] | None = None) -> None:
    data = {"cache_format": CACHE_FORMAT, "key": key_hex, "engine": Path(engine_file).name,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_seconds": build_seconds,
            "inputs": asdict(key), "notes": notes or {}}
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The sidecar's content, or None if it is missing or unreadable (the engine is then rebuilt)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def lookup(cache_dir: str | Path, onnx_path: str | Path, key: BuildKey) -> tuple[Path, Path, bool]:
    """(engine path, sidecar path, hit). A hit needs both files and a sidecar naming the same key."""
    key_hex = cache_key(key)
    engine, sidecar = engine_paths(cache_dir, onnx_path, key_hex)
    meta = read_sidecar(sidecar)
    hit = engine.is_file() and engine.stat().st_size > 0 and meta is not None and meta.get("key") == key_hex \
        and meta.get("cache_format") == CACHE_FORMAT
    return engine, sidecar, bool(hit)
