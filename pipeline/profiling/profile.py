"""``segfuse profile``: run the pipeline through the runner with a system sampler alongside,
keep every finished frame's FrameTrace, write ``profile.json`` (+ the report, pipeline.profiling.report).

``profile.json`` (schema ``segfuse.profile/1``): ``machine``, ``run`` (config, policy, rate,
masks), ``counts`` (in, done, dropped, failed), ``frames`` (every finished frame: index,
sensor stamp, each stage's [start_ns, end_ns] on the monotonic clock), ``dropped_indices``
(frames the sync emitted that did not finish: live drops and failures), ``samples`` (system
samples on the same clock), ``sampler`` (what was sampled, why not the rest, its CPU time),
``tracing`` (the measured cost of tracing per frame), ``nvtx``, ``summary`` (the runner's
summary) and ``stats`` (pipeline.profiling.stats.compute_stats of all the above).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = "segfuse.profile/1"


# --- Tracing cost and NVTX ------------------------------------------------------------------

class _Envelope:
    """Stands in for the graph's envelope in the cost loop: the same attribute lookup the graph does."""

    def __init__(self, trace: Any) -> None:
        self.trace = trace


def measure_trace_cost(records_per_frame: int, *, nvtx: Any = None, iterations: int = 20000) -> dict[str, float]:
    """Measured cost, per frame, of what the graph does to trace a stage (two monotonic_ns reads,
    the trace lookup, one dict store; plus an NVTX push/pop when on): a timed loop of exactly
    those operations minus the same loop without them."""
    from pipeline.types import FrameTrace

    env = _Envelope(FrameTrace(0, 0))
    names = [f"stage{i}" for i in range(max(records_per_frame, 1))]

    def traced() -> int:
        t = time.perf_counter_ns()
        for _ in range(iterations):
            for name in names:
                if nvtx is not None:
                    nvtx.push_range(name)
                t0 = time.monotonic_ns()
                t1 = time.monotonic_ns()
                env.trace.stages[name] = (t0, t1)
                if nvtx is not None:
                    nvtx.pop_range()
        return time.perf_counter_ns() - t

    def bare() -> int:
        t = time.perf_counter_ns()
        for _ in range(iterations):
            for name in names:
                pass
        return time.perf_counter_ns() - t

    best_traced = min(traced() for _ in range(3))
    best_bare = min(bare() for _ in range(3))
    per_frame_ns = max(best_traced - best_bare, 0) / iterations
    return {"records_per_frame": float(len(names)), "per_record_ns": per_frame_ns / len(names),
            "per_frame_us": per_frame_ns / 1e3}


def load_nvtx() -> tuple[Any, str]:
    """The ``nvtx`` module (NVIDIA's Python NVTX annotations) or None, with a status line."""
    try:
        import nvtx  # type: ignore[import-not-found]
    except ImportError:
        return None, "off (the nvtx package is not importable: pip install nvtx to see stage ranges in Nsight Systems)"
    return nvtx, "on (one range per stage, domain segfuse)"


def wrap_stages_nvtx(graph: Any, nvtx: Any) -> int:
    """Wrap every stage callable of a built (not started) graph in an NVTX range named after the stage."""

    def wrap(stage: Any) -> None:
        fn, name = stage.fn, stage.name

        def ranged(*values: Any, _fn=fn, _name=name) -> Any:
            nvtx.push_range(_name, domain="segfuse")
            try:
                return _fn(*values)
            finally:
                nvtx.pop_range(domain="segfuse")
        stage.fn = ranged

    stages = graph.all_stages()
    for st in stages:
        wrap(st)
    return len(stages)


# --- One profiled run -----------------------------------------------------------------------

@dataclass
class ProfileRun:
    profile: dict[str, Any]
    path: Path


def frames_from_traces(traces: list[Any]) -> list[dict[str, Any]]:
    return [{"index": int(t.frame_index), "sensor_stamp_ns": int(t.sensor_stamp_ns),
             "stages": {k: [int(a), int(b)] for k, (a, b) in t.stages.items()}} for t in traces]


# what a profile writes into its folder (removed by --overwrite; pipeline.outputs.claim_out_dir)
PROFILE_OUTPUTS = ("run", "profile.json", "report.html", "plots", "compare.png", "peak.json")


def run_profile(cfg: Any, out: str | Path, *, interval_s: float = 0.2, progress: bool | None = None,
                rate_hz: float | None = None, trace_cost: bool = True, overwrite: bool = False) -> ProfileRun:
    """Run ``cfg`` (a RunConfig) with the sampler on; write OUT/profile.json. The pipeline's own
    outputs (recording, overlay, summary.json) go to OUT/run. ``rate_hz``: pace the replay at this
    camera rate (overrides ``cfg.rate``, needs the source's nominal rate)."""
    from pipeline.errors import ConfigError
    from pipeline.profiling.stats import compute_stats
    from pipeline.profiling.system import SystemSampler, machine_info
    from pipeline.runner import run_pipeline

    from pipeline.outputs import claim_out_dir

    out = claim_out_dir(out, overwrite=overwrite, outputs=PROFILE_OUTPUTS)
    cfg = cfg.with_overrides(out=str(out / "run"))
    nvtx, nvtx_status = load_nvtx()
    held: dict[str, Any] = {}

    def on_built(run: Any) -> None:
        held["run"] = run
        if rate_hz is not None:
            src_hz = run.opened.sources[0].info.rate_hz
            if not src_hz:
                for sink in run.sinks:                         # nothing ran yet:
                    sink.abort()
                run.close_engines()                            # close what build_run opened
                run.opened.close()
                raise ConfigError("the input has no nominal camera rate: give --rate (a multiple of the "
                                  "recorded speed) instead of a rate in Hz", path=cfg.path, field="--hz")
            run.graph.policy.rate = rate_hz / src_hz
            held["source_hz"] = src_hz
        if nvtx is not None:
            wrap_stages_nvtx(run.graph, nvtx)

    sampler = SystemSampler(interval_s)
    t_start = datetime.now(timezone.utc)
    with sampler:
        summary = run_pipeline(cfg, progress=progress, on_built=on_built, overwrite=overwrite)
    run = held["run"]
    g = run.graph
    frames = frames_from_traces(g.stage_traces)
    done_idx = {f["index"] for f in frames}
    counts = {"in": g.stats.frames_in, "done": g.stats.done, "dropped": g.stats.dropped,
              "failed": g.stats.failed_total}
    profile: dict[str, Any] = {
        "schema": SCHEMA, "created_utc": t_start.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "run": {"config": cfg.path, "input": summary["input"], "policy": cfg.run.policy,
                "rate": g.policy.rate, "rate_hz": rate_hz, "source_hz": held.get("source_hz") or
                run.opened.sources[0].info.rate_hz, "masks": cfg.masks, "masks_label": summary["masks_label"],
                "queue_depth": cfg.run.queue_depth, "capacity": g.capacity, "frames_limit": cfg.run.frames},
        "clock": "time.monotonic_ns", "t0_ns": int(g.stats.started_ns),
        "counts": counts,
        "frames": frames,
        "dropped_indices": sorted(set(range(g.stats.frames_in)) - done_idx),
        "samples": sampler.samples,
        "sampler": {"interval_s": interval_s, "sources": sampler.sources, "cpu_s": sampler.cpu_s},
        "nvtx": nvtx_status,
        "summary": summary,
    }
    stats = compute_stats(profile)
    if trace_cost:
        records = max((len(f["stages"]) for f in frames), default=1)
        cost = measure_trace_cost(records, nvtx=nvtx)
        frame_ms = stats.get("interval_ms", {}).get("mean") or 0.0
        cost["frame_time_ms"] = frame_ms
        cost["share_of_frame_pct"] = 100.0 * cost["per_frame_us"] / 1e3 / frame_ms if frame_ms else 0.0
        wall_s = (frames[-1]["stages"][max(frames[-1]["stages"], key=lambda k: frames[-1]["stages"][k][1])][1]
                  - g.stats.started_ns) / 1e9 if frames else 0.0
        cost["sampler_cpu_pct_of_wall"] = 100.0 * sampler.cpu_s / wall_s if wall_s > 0 else 0.0
        profile["tracing"] = cost
    profile["stats"] = stats
    path = out / "profile.json"
    path.write_text(json.dumps(profile, indent=1))
    return ProfileRun(profile, path)


def load_profile(path: str | Path) -> dict[str, Any]:
    from pipeline.errors import InputDataError

    p = Path(path)
    if p.is_dir():
        p = p / "profile.json"
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputDataError("no such profile (segfuse profile writes OUT/profile.json)", path=p) from None
    except json.JSONDecodeError as exc:
        raise InputDataError(f"not JSON: {exc}", path=p) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise InputDataError(f"not a segfuse profile (expected schema {SCHEMA})", path=p, field="schema")
    data["_path"] = str(p)
    return data


# --- Peak rate ------------------------------------------------------------------------------

def find_peak(cfg: Any, out: str | Path, *, lo_hz: float, hi_hz: float, iterations: int = 4,
              max_drop_pct: float = 1.0, max_latency_ms: float | None = None, interval_s: float = 0.2,
              progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """ros2_benchmark's peak search: binary search on the replay rate (live policy: the newest frame
    wins, so a pipeline that cannot keep up drops) for the highest rate with at most
    ``max_drop_pct`` % of the frames dropped or failed and bounded latency: end-to-end p99 at most
    ``max_latency_ms`` (default: twice the p99 of the run at ``lo_hz``). Each trial is a full
    profile under OUT/peak_<hz>hz/."""
    from tqdm import tqdm

    out = Path(out)
    cfg = cfg.with_overrides(policy="live")
    trials: list[dict[str, Any]] = []
    bound = max_latency_ms

    def trial(hz: float) -> bool:
        nonlocal bound
        r = run_profile(cfg, out / f"peak_{hz:.2f}hz", interval_s=interval_s, progress=False, rate_hz=hz,
                        trace_cost=False, overwrite=overwrite)
        st = r.profile["stats"]
        p99 = st.get("e2e_ms", {}).get("p99", float("inf"))
        if bound is None:
            bound = 2.0 * p99
        ok = st["drop_pct"] <= max_drop_pct and p99 <= bound
        trials.append({"hz": hz, "ok": ok, "drop_pct": st["drop_pct"], "e2e_p99_ms": p99,
                       "throughput_fps": st.get("throughput_fps", 0.0), "profile": str(r.path)})
        bar.update(1)
        bar.set_postfix(hz=f"{hz:.1f}", ok=ok, refresh=False)
        log.info("%.2f Hz: %s (drops %.1f%%, p99 %.0f ms)", hz, "ok" if ok else "too fast", st["drop_pct"], p99)
        return ok

    with tqdm(total=iterations + 2, desc="segfuse profile --find-peak", unit="run", disable=not progress) as bar:
        peak = None
        if trial(lo_hz):
            lo, hi = lo_hz, hi_hz
            if trial(hi_hz):
                peak = hi_hz
            else:
                peak = lo_hz
                for _ in range(iterations):
                    mid = (lo + hi) / 2
                    if trial(mid):
                        lo = peak = mid
                    else:
                        hi = mid
    result = {"peak_hz": peak, "lo_hz": lo_hz, "hi_hz": hi_hz, "max_drop_pct": max_drop_pct,
              "max_latency_ms": bound, "trials": trials}
    (out / "peak.json").write_text(json.dumps(result, indent=1))
    return result
