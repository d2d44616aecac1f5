"""Numbers of a profile: per-stage and end-to-end percentiles, jitter, drops, system load.

``compute_stats(profile)`` is THE function: the printed summary, ``report.html`` and
``segfuse profile compare`` all show its output, and ``profile.json`` stores it under
``stats`` (a test recomputes it from the raw frames and checks the HTML against it).

Definitions (all from the frames' FrameTraces, monotonic clock):
- stage time: end - start of that stage for the frame (``sync`` is waiting, not work);
- end-to-end latency: from the frame's arrival at the sync (the source handing it over: under
  paced replay its sensor stamp mapped to the wall clock) to the end of its last stage (the
  recorder / overlay / publisher done with it);
- output interval: time between the ends of consecutive finished frames; jitter = its std,
  and latency p99 - p50.
"""
from __future__ import annotations

from typing import Any

import numpy as np

PCTS = ("p50", "p90", "p99", "max", "mean", "std")


def pct(values: Any) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    if a.size == 0:
        return {}
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean()),
            "std": float(a.std())}


def frame_times(frame: dict[str, Any]) -> tuple[int, int]:
    """(arrival_ns, done_ns) of a frame record: sync start (or the earliest start) and the latest end."""
    stages = frame["stages"]
    start = stages["sync"][0] if "sync" in stages else min(a for a, _ in stages.values())
    return int(start), int(max(b for _, b in stages.values()))


def stage_order(frames: list[dict[str, Any]]) -> list[str]:
    """Stage names in pipeline order (by mean start time relative to the frame's arrival)."""
    starts: dict[str, list[int]] = {}
    for f in frames:
        t0, _ = frame_times(f)
        for name, (a, _b) in f["stages"].items():
            starts.setdefault(name, []).append(a - t0)
    return sorted(starts, key=lambda n: float(np.mean(starts[n])))


def compute_stats(profile: dict[str, Any]) -> dict[str, Any]:
    frames = profile["frames"]
    counts = profile["counts"]
    out: dict[str, Any] = {"frames_done": len(frames), "frames_in": counts["in"], "dropped": counts["dropped"],
                           "failed": counts["failed"]}
    offered = counts["in"]
    out["drop_pct"] = 100.0 * (counts["dropped"] + counts["failed"]) / offered if offered else 0.0
    if not frames:
        return out
    times = np.array([frame_times(f) for f in frames], np.int64)
    out["e2e_ms"] = pct((times[:, 1] - times[:, 0]) / 1e6)
    names = stage_order(frames)
    out["stages_ms"] = {n: pct([(f["stages"][n][1] - f["stages"][n][0]) / 1e6 for f in frames if n in f["stages"]])
                        for n in names}
    done = np.sort(times[:, 1])
    intervals = np.diff(done) / 1e6
    out["interval_ms"] = pct(intervals)
    span_s = (done[-1] - done[0]) / 1e9
    out["throughput_fps"] = float((len(done) - 1) / span_s) if len(done) > 1 and span_s > 0 else 0.0
    out["jitter_ms"] = {"interval_std": float(intervals.std()) if intervals.size else 0.0,
                        "latency_p99_minus_p50": out["e2e_ms"]["p99"] - out["e2e_ms"]["p50"]}
    out["system"] = system_stats(profile.get("samples", []), int(times[:, 0].min()), int(times[:, 1].max()))
    return out


def system_stats(samples: list[dict[str, Any]], t_from: int, t_to: int) -> dict[str, float]:
    """System load over the samples taken while frames were in flight."""
    inside = [s for s in samples if t_from <= s["t_ns"] <= t_to] or samples
    out: dict[str, float] = {"samples": float(len(inside))}
    cpu = [s["cpu_percent"] for s in inside if s.get("cpu_percent")]
    if cpu:
        a = np.asarray(cpu, np.float64)
        out["cpu_mean_pct"] = float(a.mean())
        out["cpu_busiest_core_mean_pct"] = float(a.mean(axis=0).max())
    rss = [s["rss_mb"] for s in inside if "rss_mb" in s]
    if rss:
        out["rss_max_mb"] = float(max(rss))
    gpu = [g["util_pct"] for s in inside for g in s.get("gpu", [])]
    if gpu:
        out["gpu_util_mean_pct"] = float(np.mean(gpu))
    teg = [s["tegrastats"] for s in inside if "tegrastats" in s]
    if teg:
        out["gr3d_mean_pct"] = float(np.mean([t["gr3d_pct"] for t in teg if t.get("gr3d_pct") is not None] or [0]))
        vin = [t["power_mw"]["VDD_IN"]["now"] for t in teg if "VDD_IN" in t.get("power_mw", {})]
        if vin:
            out["vdd_in_mean_mw"] = float(np.mean(vin))
    return out


def lookup(stats: dict[str, Any], key: str) -> Any:
    """``lookup(stats, "stages_ms.fuse.p99")``: a dotted path into the stats (stage names have no dots
    except Parallel branches, ``infer.deeplab``: the longest matching key wins)."""
    node: Any = stats
    parts = key.split(".")
    i = 0
    while i < len(parts):
        for j in range(len(parts), i, -1):
            k = ".".join(parts[i:j])
            if isinstance(node, dict) and k in node:
                node = node[k]
                i = j
                break
        else:
            raise KeyError(key)
    return node
