"""TensorRT engine cache and version dispatch, in pure Python (testable without TensorRT).

An engine is valid only for the exact ONNX, precision, input shapes, TensorRT version,
GPU (name and compute capability), DLA core and INT8 calibration cache it was built
with. ``cache_key`` hashes all of them; the engine is stored as ``<stem>.<key16>.engine``
with a JSON sidecar holding the key's inputs, so a stale engine is never loaded and an
``engines info`` can say what an engine was built from. The timing cache is kept per
TensorRT version and GPU, and reused across builds.

Every file of the cache (plan, sidecar, timing cache, AutoCast ONNX, calibration cache) is
written atomically (``atomic_write_bytes``: a temporary file in the same folder, fsync, then
``os.replace``), so a crash mid-write never leaves a truncated file under the final name; and
a build holds an exclusive ``fcntl`` lock on ``<key>.lock`` (``build_lock``) so two processes
building the same engine do not both build it: the second waits, then finds the first's
result in the cache.

The INT8 calibration cache of the < 10.12 path is keyed (``calibration_cache_path``) by the
ONNX, the TensorRT version, the calibration source, the frame count and the algorithm: a
cache made by another TensorRT, from other frames or with another algorithm is never reused.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

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


def dla_unsupported_reason(trt_version: str) -> str | None:
    """None where this TensorRT version can build for DLA, else why not. From NVIDIA's TensorRT
    11.4.1 "Working with DLA" and Jetson migration pages: 10.7 was the last 10.x release with DLA;
    11.0-11.3 have none; 11.4.0 only on Windows on ARM (beta, not Jetson); 11.4.1 has it again on
    Jetson AGX Orin with JetPack 7.2.2 or later (strongly typed networks). Whether the device has
    DLA cores at all (Orin yes, Thor no) is the builder's ``num_DLA_cores``."""
    v = parse_version(trt_version)
    if v[:2] <= (10, 7):
        return None
    if v[:3] < (11, 4, 1):
        return (f"TensorRT {trt_version} has no DLA support on Jetson (10.7 was the last 10.x release with DLA; "
                "11.0-11.3 have none; 11.4.0 only on Windows on ARM; 11.4.1 on JetPack 7.2.2+ brings it back)")
    return None


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
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that ``path`` is either its old content or all of ``data``:
    a temporary file in the same folder, flushed and fsynced, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def build_lock(path: str | Path, *, timeout_s: float | None = None) -> Iterator[Path]:
    """An exclusive ``fcntl.flock`` on ``path`` (created if missing) for the duration of the block.
    The lock goes with the process: a crashed builder never leaves it held. ``timeout_s``:
    raise EngineError after waiting that long (None: wait)."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+b")
    try:
        if timeout_s is None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise EngineError(f"another process holds the build lock for {timeout_s:.0f} s",
                                          path=path) from None
                    time.sleep(0.05)
        yield path
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


def lock_path(engine_file: str | Path) -> Path:
    return Path(engine_file).with_suffix(".lock")


def build_once(cache_dir: str | Path, onnx_path: str | Path, key: BuildKey,
               build: Callable[[], tuple[bytes, dict[str, Any]]], *, force: bool = False,
               lock_timeout_s: float | None = None) -> tuple[Path, dict[str, Any], bool]:
    """The engine for ``key``, built at most once across processes: under the key's lock, a
    cache hit is returned as it is (``built`` False); otherwise ``build()`` returns the plan
    bytes and the sidecar notes, and plan then sidecar are written atomically (the sidecar
    last: a plan without its sidecar is never a hit). Returns (engine path, sidecar, built)."""
    engine, sidecar, _ = lookup(cache_dir, onnx_path, key)
    with build_lock(lock_path(engine), timeout_s=lock_timeout_s):
        engine, sidecar, hit = lookup(cache_dir, onnx_path, key)
        if hit and not force:
            return engine, read_sidecar(sidecar) or {}, False
        t0 = time.perf_counter()
        plan, notes = build()
        if not plan:
            raise EngineError("the build produced an empty plan", path=engine)
        atomic_write_bytes(engine, plan)
        write_sidecar(sidecar, key, cache_key(key), engine_file=engine, build_seconds=time.perf_counter() - t0,
                      notes=notes)
        return engine, read_sidecar(sidecar) or {}, True


def calibration_source_id(source: str | Path | None) -> str:
    """What identifies a calibration source: its resolved path, and for a folder or file the
    names, sizes and mtimes of what it holds (a re-recorded drive under the same name differs)."""
    if source is None:
        return ""
    p = Path(source).expanduser().resolve()
    h = hashlib.sha256(str(p).encode())
    if p.is_file():
        st = p.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    elif p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file())[:10000]:
            st = f.stat()
            h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def calibration_cache_path(cache_dir: str | Path, onnx_path: str | Path, *, onnx_sha256: str, trt_version: str,
                           source: str | Path | None, frames: int, algorithm: str) -> Path:
    """The INT8 calibration cache for one ONNX, TensorRT version, calibration source, frame count
    and algorithm (entropy | minmax)."""
    ident = json.dumps({"onnx": onnx_sha256, "trt": trt_version, "source": calibration_source_id(source),
                        "frames": int(frames), "algorithm": algorithm}, sort_keys=True)
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{Path(onnx_path).stem}.{key}.{algorithm}.calib"


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
