"""Engine-only timing, trtexec-like: warm-up, then timed iterations of ``engine.infer`` on one
preprocessed batch; p50/p90/p99/max/mean in ms and inferences per second. Shared by
``segfuse engines bench`` and benchmarks/bench_engines.py."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def time_calls(fn: Callable[[], Any], warmup: int, iters: int, *, progress: Any = None) -> list[float]:
    """Seconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed calls (perf_counter).
    ``progress``: a callable called once per call (a tqdm ``update``)."""
    for _ in range(warmup):
        fn()
        if progress:
            progress()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
        if progress:
            progress()
    return out


def latency_stats(times_s: list[float]) -> dict[str, float]:
    ms = np.asarray(times_s, np.float64) * 1000.0
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max()), "mean": float(ms.mean()),
            "std": float(ms.std()), "throughput_per_s": float(1000.0 / ms.mean()), "iterations": float(ms.size)}


def bench_engine(engine: Any, *, warmup: int = 5, iters: int = 50, batch: dict[str, np.ndarray] | None = None,
                 progress: Any = None) -> dict[str, Any]:
    """Time one engine on a batch (default: one procedural frame, preprocessed for the engine)."""
    if batch is None:
        from engines.frames import procedural_frames
        from pipeline.preprocess import preprocess_frames

        batch = preprocess_frames(procedural_frames(1, (375, 1242), seed=21), engine.input_hw).feed()
    d = engine.describe()
    stats = latency_stats(time_calls(lambda: engine.infer(batch), warmup, iters, progress=progress))
    return {"kind": engine.kind, "backend": d.get("backend"), "precision": d.get("precision"),
            "device": d.get("device"), "input_hw": list(engine.input_hw), "warmup": warmup, "latency_ms": stats}
