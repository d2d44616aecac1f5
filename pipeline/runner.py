"""``segfuse run``: build the stages from a run config, run them through the graph, summarise.

Stages (pipeline/stages.py; typed values, the graph runs each on a thread):

- masks, ``masks: engines``: ``Preprocess`` (SyncedFrame -> Batches) -> ``Infer`` (a Parallel
  stage: DeepLab and Mask R-CNN on two threads, two sessions -> ModelOutputs) ->
  ``Postprocess`` (-> Masks);
- masks, ``masks: ground_truth``: ``GroundTruthMasks`` (SyncedFrame -> Masks) takes the drive's
  ground-truth masks instead (an ORACLE for testing fusion and the runtime, labelled so in
  every summary and recording);
- ``Fuse`` (SyncedFrame, Masks -> FusionResult): ego motion, labels, objects, lanes;
- ``TrackingStage`` (SyncedFrame, FusionResult -> FusionResult with tracks; pipeline/tracking.py,
  ``tracking.enabled``): the stateful tracker, frames in order;
- sinks (each takes the frozen FrameResult): the recorder, the overlay video, the publisher.

Refused at start, with one clear line: a missing model file, bad calibration, an input that
cannot be opened, ground-truth masks asked of an input that has none.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import setting
from pipeline.errors import ConfigError, EngineError
from pipeline.graph import POLICIES, Policy

if TYPE_CHECKING:
    from pipeline.run_config import RunConfig

log = logging.getLogger(__name__)

ORACLE_LABEL = "ground truth (ORACLE: the drive's ground-truth masks stand in for the models)"
ORACLE_PROVIDERS = ("ground_truth", "label_boxes")
__all__ = ["POLICIES", "RunOptions", "build_run", "run_pipeline"]


@dataclass
class RunOptions(Policy):
    """``run:`` of a run config: the graph's policy and the runner's own keys."""

    progress: bool = setting(True, doc="a progress bar on the terminal")


# --- Building a run -------------------------------------------------------------------------

def open_engine(engine_cfg: Any, kind: str, *, config_path: str) -> Any:
    """An Engine from one ``engines.<kind>`` section through engines.factory.create_engine; a
    missing model file, or a model of the other kind, is refused naming the config key."""
    from engines.factory import create_engine

    field = f"engines.{kind}.model"
    if engine_cfg is None:
        raise ConfigError("no engine config", path=config_path, field=f"engines.{kind}")
    model = Path(engine_cfg.model)
    if not model.is_file():
        raise EngineError(f"model file {model} not found (the committed defaults are in models/; export your own "
                          "checkpoint with 'segfuse engines export', or use masks: ground_truth on a drive with "
                          "ground truth)", path=config_path, field=field)
    engine = create_engine(engine_cfg)
    if engine.kind != kind:
        engine.close()
        raise EngineError(f"{model} is a {engine.kind} model, expected {kind}", path=config_path, field=field)
    return engine


@dataclass
class Run:
    cfg: RunConfig
    opened: Any                       # pipeline.sources.OpenedSources
    graph: Any                        # pipeline.graph.Graph
    sync: Any                         # pipeline.sync.Synchronizer
    sinks: list[Any] = field(default_factory=list)    # each with write(FrameResult), close(), abort()
    recorder: Any = None              # pipeline.sinks.recorder.Recorder (also in sinks)
    overlay: Any = None               # pipeline.sinks.overlay.OverlayVideo
    publisher: Any = None             # pipeline.sinks.publisher.ZenohPublisher
    liveview: Any = None              # pipeline.sinks.liveview.LiveView
    engines: dict[str, Any] = field(default_factory=dict)
    masks_label: str = ""
    out: Path = Path(".")
    warm: list[Any] = field(default_factory=list)     # called once before the first frame
    owns_engines: bool = True                         # False: the caller's open engines (build_run(engines=))
    fuse: Any = None                                  # the Fuse stage (its per-camera counts go in the summary)
    note: str | None = None                           # the synthetic-only models note (pipeline.model_notes)

    def close_engines(self) -> None:
        if self.owns_engines:
            for e in self.engines.values():
                e.close()


def build_stages(cfg: RunConfig, opened: Any, taxonomy: Any, engines: dict[str, Any]) -> tuple[list[Any], list[Any], str]:
    """The processing stages for ``cfg.masks`` (opening the engines into ``engines``), the
    warm-up callables, and the mask provider's label."""
    from pipeline.graph import Parallel, Stage
    from pipeline.preprocess import Batches
    from pipeline.stages import (Fuse, GroundTruthMasks, Infer, Postprocess, Preprocess, masks_label,
                                 model_input_hw)
    from pipeline.types import FusionResult, Masks, ModelOutput, ModelOutputs, SyncedFrame

    stages: list[Any] = []
    given = set(engines)                                 # build_run(engines=...): already open and warm
    if cfg.masks == "engines":
        for kind in ("deeplab", "maskrcnn"):
            if kind not in engines:
                engines[kind] = open_engine(getattr(cfg.engines, kind), kind, config_path=cfg.path)
        m = cfg.engines.maskrcnn
        stages += [Stage("preprocess", Preprocess(model_input_hw(engines), cfg.engines.resize), (SyncedFrame,), Batches),
                   Parallel("infer", [Stage(k, Infer(k, e), (Batches,), ModelOutput) for k, e in engines.items()],
                            ModelOutputs, ModelOutputs.join),
                   Stage("postprocess", Postprocess(taxonomy, m.score_threshold, m.mask_threshold,
                                                    {k: str(e.path) for k, e in engines.items()}),
                         (Batches, ModelOutputs), Masks)]
        label = masks_label(cfg.engines)
    else:
        from pipeline.datasets.boxes import LABEL_BOXES_NOTE

        stages.append(Stage("masks", GroundTruthMasks(), (SyncedFrame,), Masks))
        label = ORACLE_LABEL if cfg.masks == "ground_truth" else LABEL_BOXES_NOTE
    fuse = Fuse(opened.rig, cfg.fusion, taxonomy)
    stages.append(Stage("fuse", fuse, (SyncedFrame, Masks), FusionResult, optional=True))
    if cfg.tracking.enabled:
        from pipeline.tracking import TrackingStage

        stages.append(Stage("track", TrackingStage(cfg.tracking, tuple(taxonomy.names)), (SyncedFrame, FusionResult),
                            FusionResult, optional=True))
    warm = [lambda: fuse.warm_up(opened.camera_id, opened.lidar_id)]
    for kind, e in engines.items():
        if kind not in given:
            warm.append(lambda e=e: _warm_engine(e))
    return stages, warm, label


def build_run(cfg: RunConfig, engines: dict[str, Any] | None = None, *, overwrite: bool = False) -> Run:
    """Open the input, the models and the sinks; wire the stages. Everything that can be refused
    is refused here, before a frame is read (an output folder that is not empty, unless
    ``overwrite``: pipeline.outputs.claim_out_dir). ``engines``: already-open, warmed engines by
    kind (``segfuse fleet`` keeps them open across drives): used for ``masks: engines`` instead of
    opening the config's models, and left open (the caller closes them)."""
    from pipeline.config import load_taxonomy
    from pipeline.graph import Graph, Stage
    from pipeline.sinks.overlay import OverlayVideo
    from pipeline.sinks.recorder import Recorder
    from pipeline.sources import open_sources
    from pipeline.sync import Synchronizer
    from pipeline.types import FrameResult

    taxonomy = load_taxonomy()
    opened = open_sources(cfg.input, config_path=cfg.path, want_truth=cfg.masks == "ground_truth",
                          want_box_masks=cfg.masks == "label_boxes")
    given = dict(engines or {})
    engines = dict(given)
    sinks: list[Any] = []
    recorder = overlay = publisher = liveview = None
    try:
        main = opened.sources[0]
        if cfg.masks == "ground_truth" and not main.info.has_truth:
            hint = " or masks: label_boxes (its labelled boxes as masks)" if main.info.extra.get("label_boxes") else ""
            raise ConfigError(f"masks: ground_truth needs an input with ground-truth masks (/gt/<camera>/semantic); "
                              f"{main.info.name} has none: set masks: engines{hint}", path=cfg.path, field="masks")
        if cfg.masks == "label_boxes" and not main.info.extra.get("label_boxes"):
            raise ConfigError(f"masks: label_boxes needs a dataset folder with labelled 3D boxes (KITTI object "
                              f"label_2/, nuScenes calib.json instances); {main.info.name} has none", path=cfg.path,
                              field="masks")
        live_input = any(s.info.live for s in opened.sources)
        if live_input and cfg.run.policy == "replay":
            log.warning("a live input (%s) with the replay policy: frames queue up behind a slow stage; "
                        "run.policy: live keeps latency bounded", main.info.uri)
        stages, warm, label = build_stages(cfg, opened, taxonomy, engines)
        from pipeline.model_notes import synthetic_only_note

        fuse_stage = next(s.fn for s in stages if getattr(s, "name", None) == "fuse")   # its per-camera counts
        note = synthetic_only_note(cfg, main)           # None, or the one line: these models know only sim

        from pipeline.outputs import claim_out_dir, reserve_space

        out = claim_out_dir(cfg.out, overwrite=overwrite)
        reserve_space(out)                                # room to finish the outputs on a full disk
        sink_stages = []
        sc = cfg.sinks
        run_info = {"masks": cfg.masks, "masks_label": label, "oracle": cfg.masks in ORACLE_PROVIDERS,
                    "input": main.info.name, "policy": cfg.run.policy, "config": Path(cfg.path).name,
                    "taxonomy": list(taxonomy.names), "camera": opened.camera_id, "lidar": opened.lidar_id}
        # every sink carries the same topics (pipeline.sinks.schema): the same flags for all
        schema_flags = {"has_poses": any(s.info.has_poses for s in opened.sources),
                        "replay": cfg.run.policy == "replay", "camera_image": sc.recorder.camera_image}
        if sc.recorder.enabled:
            recorder = Recorder(out, opened.rig, taxonomy, camera_id=opened.camera_id, lidar_id=opened.lidar_id,
                                run_info=run_info, compression=sc.recorder.compression, **schema_flags)
            if len(main.info.extra.get("cameras", ())) > 1:             # a camera set: record every camera
                recorder.add_set_cameras(opened.rig, main.info.extra["cameras"])
            sinks.append(recorder)
            sink_stages.append(Stage("record", recorder.write, (FrameResult,)))
        if sc.overlay.enabled:
            fps = (sc.overlay.fps or main.info.rate_hz or 10.0) / sc.overlay.every_n_frames
            short = {"ground_truth": "ground truth (ORACLE)", "label_boxes": "labelled boxes (ORACLE)"}
            overlay = OverlayVideo(out, opened.rig, taxonomy, camera_id=opened.camera_id, fps=fps,
                                   masks_label=short.get(cfg.masks, "models"), mask_alpha=sc.overlay.mask_alpha,
                                   every_n_frames=sc.overlay.every_n_frames, note=note,
                                   segment_frames=sc.overlay.segment_frames)
            sinks.append(overlay)
            sink_stages.append(Stage("overlay", overlay.write, (FrameResult,)))
        if sc.publisher.enabled:
            from pipeline.sinks.publisher import ZenohPublisher

            publisher = ZenohPublisher(sc.publisher, opened.rig, taxonomy, camera_id=opened.camera_id,
                                       lidar_id=opened.lidar_id, run_info=_run_info_json(recorder, run_info),
                                       **schema_flags)
            sinks.append(publisher)
            sink_stages.append(Stage("publish", publisher.write, (FrameResult,)))
        if sc.liveview.enabled:
            from pipeline.sinks.liveview import LiveView

            liveview = LiveView(sc.liveview, opened.rig, taxonomy, camera_id=opened.camera_id,
                                lidar_id=opened.lidar_id, run_info=_run_info_json(recorder, run_info), **schema_flags)
            sinks.append(liveview)
            sink_stages.append(Stage("liveview", liveview.write, (FrameResult,), lossy=sc.liveview.queue_frames))
        from pipeline.sinks.messages import FrameCache

        cache = FrameCache() if sum(x is not None for x in (recorder, publisher, liveview)) > 1 else None
        for sink in (recorder, publisher, liveview):
            if sink is not None:
                sink.cache = cache               # one frame's messages built once for all the sinks
        sync = Synchronizer(cfg.sync, has_lidar=opened.lidar_id is not None,
                            has_poses=any(s.info.has_poses for s in opened.sources), live=cfg.run.policy == "live")
        graph = Graph(opened.sources, sync, stages, cfg.run, sinks=sink_stages)
    except BaseException:
        for sink in sinks:
            sink.abort()
        for kind, e in engines.items():
            if kind not in given:
                e.close()
        opened.close()
        raise
    return Run(cfg, opened, graph, sync, sinks, recorder, overlay, publisher, liveview, engines, label, out, warm,
               owns_engines=not given, fuse=fuse_stage, note=note)


def _run_info_json(recorder: Any, run_info: dict[str, Any]) -> str:
    """/segfuse/run_info's text: the recorder's (with the recording format) when there is one."""
    return recorder._run_info if recorder is not None else json.dumps(run_info, sort_keys=True)


def _warm_engine(engine: Any) -> None:
    """One inference on zeros: session / engine set-up cost before the first frame."""
    h, w = engine.input_hw
    engine.infer({"images": np.zeros((1, 3, h, w), np.float32)})


# --- Running --------------------------------------------------------------------------------

def run_pipeline(cfg: RunConfig, *, progress: bool | None = None,
                 on_built: Any = None, engines: dict[str, Any] | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Run a config to the end (or to SIGINT/SIGTERM, or to a fault that stops it); returns the
    summary (also in OUT/summary.json). After a fault, ``summary["fault"]`` says what stopped the
    run and every frame completed before it is in the recording and the overlay
    (pipeline.outputs.finish_after_fault). ``on_built(run)``, if given, is called once the run is
    built, before the warm-up (the profiler keeps the Run to read ``run.graph.stage_traces``
    afterwards and may wrap stage callables). ``engines``: already-open engines, see
    :func:`build_run`."""
    from tqdm import tqdm

    from pipeline import outputs

    t_warm = time.monotonic()
    with outputs.sigterm_interrupts():             # until the graph's own handler: SIGTERM cleans up too
        run = build_run(cfg, engines, overwrite=overwrite)
        try:
            if on_built is not None:
                on_built(run)
            for stage in run.warm:
                stage()
        except BaseException:
            outputs.abort_run(run)                 # no half-made recording is left behind
            raise
    graph = run.graph
    log.debug("build and warm-up %.2f s", time.monotonic() - t_warm)
    show = cfg.run.progress if progress is None else progress
    info = run.opened.sources[0].info
    total = cfg.run.frames if cfg.run.frames else info.num_frames
    t0 = time.monotonic()
    error: BaseException | None = None
    with graph.stop_on_signals(), tqdm(total=total, desc="segfuse run", unit="frame", disable=not show,
                                       dynamic_ncols=True) as bar:
        graph.start()
        try:
            while not graph.wait(0.25):
                _progress(bar, graph, t0)
        except KeyboardInterrupt:                      # no handler installed (not the main thread)
            graph.stop("signal")
            graph.wait()
        _progress(bar, graph, t0)
        error = graph.error
    recording = video = fault = None
    try:
        if error is not None:
            fault, recording, video = outputs.finish_after_fault(run, error)
        else:
            recording = run.recorder.close() if run.recorder is not None else None
            video = run.overlay.close() if run.overlay is not None else None
    finally:
        run.close_engines()
        if run.publisher is not None:
            run.publisher.close()
        if run.liveview is not None:
            run.liveview.dropped_frames = run.graph.stats.sink_dropped.get("liveview", 0)
            run.liveview.close()
        outputs.release_space(run.out)
    summary = make_summary(run, time.monotonic() - t0, recording, video)
    summary.update(outputs.summary_fields(run, fault))
    outputs.write_summary(run.out, summary)
    return summary


def _progress(bar: Any, graph: Any, t0: float) -> None:
    s = graph.stats
    bar.update(s.done + s.failed_total - bar.n)
    elapsed = max(time.monotonic() - t0, 1e-9)
    bar.set_postfix(fps=f"{s.done / elapsed:.1f}", drops=s.dropped, failed=s.failed_total, refresh=False)


# --- Summary --------------------------------------------------------------------------------

def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, np.float64)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean()),
            "max": float(a.max())}


def stage_times_ms(traces: list[Any]) -> dict[str, dict[str, float]]:
    out: dict[str, list[float]] = {}
    for tr in traces:
        for name, (a, b) in tr.stages.items():
            out.setdefault(name, []).append((b - a) / 1e6)
    return {k: _pct(v) for k, v in out.items()}


def make_summary(run: Run, seconds: float, recording: Path | None, video: Path | None) -> dict[str, Any]:
    g = run.graph.stats
    sy = run.sync.stats
    skipped = [s for src in run.opened.sources for s in src.skipped]
    by_kind: dict[str, int] = {}
    for s in skipped:
        by_kind[s.what] = by_kind.get(s.what, 0) + 1
    busy = (g.last_done_ns - g.started_ns) / 1e9
    fps = g.done / busy if g.done and busy > 0 else 0.0
    cfg = run.cfg
    return {
        "input": run.opened.sources[0].info.name, "uri": run.opened.sources[0].info.uri,
        "policy": cfg.run.policy, "rate": cfg.run.rate, "masks": cfg.masks, "masks_label": run.masks_label,
        "oracle": cfg.masks in ORACLE_PROVIDERS,
        "note": run.note,
        "points_by_camera": dict(run.fuse.points_by_camera) if run.fuse is not None else {},
        "frames": {"in": g.frames_in, "accepted": g.accepted, "done": g.done, "dropped": g.dropped,
                   "failed": dict(g.failed), "recorded": run.recorder.frames if run.recorder else None,
                   "fused_clouds": run.recorder.clouds if run.recorder else None},
        "failures": g.failures, "stopped_by": g.stopped_by, "input_errors": g.source_errors,
        "skipped_inputs": {"total": len(skipped), "by_kind": by_kind,
                           "first": [f"{s.what} {s.where}: {s.reason}" for s in skipped[:10]]},
        "source_dropped": {src.info.name: src.dropped for src in run.opened.sources if src.dropped},
        "sync": sy.as_dict(),
        "seconds": seconds, "throughput_fps": fps,
        "latency_ms": _pct([v / 1e6 for v in g.latency_ns]),
        "stages_ms": stage_times_ms(run.graph.stage_traces),
        "max_in_flight": g.max_in_flight, "capacity": run.graph.capacity,
        "published": ({"frames": run.publisher.frames, "samples": run.publisher.samples,
                       "errors": run.publisher.errors} if run.publisher is not None else None),
        "liveview": run.liveview.stats() if run.liveview is not None else None,
        "out": str(run.out), "recording": str(recording) if recording else None,
        "overlay": str(video) if video else None,
        "overlay_decimation": ({"every_n_frames": run.overlay.every_n_frames, "drawn": run.overlay.frames,
                                "skipped": run.overlay.skipped}
                               if run.overlay is not None and run.overlay.every_n_frames > 1 else None),
    }


def render_summary(s: dict[str, Any]) -> str:
    f, sy, sk = s["frames"], s["sync"], s["skipped_inputs"]
    rate = "as fast as possible" if not s["rate"] else f"{s['rate']:g}x recorded speed"
    lines = ["", f"segfuse run: {s['input']} -> {s['out']}",
             f"  policy       {s['policy']}" + (f" ({rate})" if s["policy"] == "replay" else ""),
             f"  masks        {s['masks_label']}",
             f"  frames       {f['in']} in, {f['done']} out, {f['dropped']} dropped (live), "
             f"{sum(f['failed'].values())} failed" + (f"  [stopped by {s['stopped_by']}]" if s["stopped_by"] else ""),
             f"  inputs       {sk['total']} skipped" + (f" ({', '.join(f'{k} {v}' for k, v in sk['by_kind'].items())})"
                                                        if sk["total"] else "")
             + "".join(f"; {n} dropped by {name} (queue full)" for name, n in s["source_dropped"].items()),
             f"  sync         {sy['paired']} paired, {sy['camera_only']} camera-only (LiDAR missed {sy['lidar_missed']}), "
             f"{sy['sweeps_unused']} sweeps unused, max |dt| {sy['max_pair_dt_ns'] / 1e6:.1f} ms",
             f"  throughput   {s['throughput_fps']:.2f} frames/s ({s['seconds']:.1f} s)"]
    if s["latency_ms"]:
        lat = s["latency_ms"]
        lines.append(f"  latency      p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms (source -> recorded)")
    if s["stages_ms"]:
        lines.append(f"  {'stage':<22}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
        for name, v in s["stages_ms"].items():
            label = "sync (waiting)" if name == "sync" else name
            lines.append(f"  {label:<22}{v['p50']:9.1f}{v['p99']:9.1f}{v['mean']:9.1f}")
    if s.get("fault"):
        ft = s["fault"]
        lines.append(f"  STOPPED BY   {ft['kind']}: {ft['message']}" + (f" (in the {ft['where']})" if ft["where"] else "")
                     + f"; kept the {f['recorded'] if f['recorded'] is not None else f['done']} frames completed before it")
    for line in s["input_errors"]:
        lines.append(f"  INPUT ENDED EARLY: {line}")
    for line in sk["first"][:3]:
        lines.append(f"  skipped: {line}")
    for line in s["failures"][:3]:
        lines.append(f"  failed:  {line}")
    if s.get("overlay_decimation"):
        d = s["overlay_decimation"]
        lines.append(f"  overlay      decimated: 1 frame in {d['every_n_frames']} drawn ({d['drawn']} drawn, "
                     f"{d['skipped']} skipped)")
    look = [p for p in (s["recording"], s["overlay"]) if p] + [str(Path(s["out"]) / "summary.json")]
    lines.append(f"  look at      {', '.join(look)}")
    if s["recording"]:
        lines.append("               (open the recording's .mcap in Foxglove"
                     + (f"; segfuse eval --drive {s['recording']} --truth DRIVE scores it)"
                        if f["fused_clouds"] else ")"))
    if s.get("points_by_camera"):
        lines.append("  by camera    points each camera covers (labelled): " + ", ".join(
            f"{k} {v['points']:,} ({v['labelled']:,})" for k, v in s["points_by_camera"].items()))
    if s["oracle"]:
        what = "the dataset's labelled boxes" if s["masks"] == "label_boxes" else "the drive's ground truth"
        lines.append(f"  NOTE         masks are {what} (an oracle), not model output")
    if s.get("note"):
        lines.append(f"  NOTE         {s['note']}")
    return "\n".join(lines)
