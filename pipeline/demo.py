"""`segfuse demo`: the main job on the bundled default drive, through the streaming runtime.

Generates the demo drive if it is absent (`segfuse sim`, rosbag2/MCAP), then runs
``configs/demo.yaml`` on it exactly as ``segfuse run`` does (source -> sync -> masks -> fuse ->
recorder + overlay on worker threads, replay policy), scores the recording against the drive's
ground truth (``segfuse eval``), and writes to the output folder: the fused recording
(rosbag2/MCAP, opens in Foxglove), the overlay video, ``summary.json``, ``eval.json`` and a
short ``latency.txt``.

Masks: the committed default models (``models/``, trained by ``segfuse train`` on synthetic
drives whose seeds do not include the demo's) on ONNX Runtime, CPU. ``masks: ground_truth``
in a config swaps in the drive's ground-truth masks (an oracle, labelled so everywhere).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pipeline.config import data_path

log = logging.getLogger(__name__)

DEMO_CONFIG = data_path("configs/demo.yaml")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate (if absent) and replay the bundled demo drive through the pipeline",
                       description="The main job on the bundled default drive: generate it if absent, replay it "
                                   "through the pipeline (configs/demo.yaml), score it, write the recording, an "
                                   "overlay video and summaries.")
    p.add_argument("--drive", default="data/demo_drive", help="demo drive directory (generated if absent)")
    p.add_argument("--frames", type=int, default=30, help="frames to generate when the drive is absent")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated drive")
    p.add_argument("--out", default="out/demo", help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary, metrics = run_demo(Path(args.drive), Path(args.out), frames=args.frames, seed=args.seed)
    print(render_demo(summary, metrics))
    if summary.get("fault"):
        from pipeline.outputs import EXIT_FAULT
        return EXIT_FAULT
    return 130 if summary["stopped_by"] == "signal" else 0


def run_demo(drive_path: Path, out: Path, *, frames: int = 30, seed: int = 7,
             progress: bool = True) -> tuple[dict, dict | None]:
    from pipeline.evaluation import evaluate_recording
    from pipeline.run_config import load_run_config
    from pipeline.runner import run_pipeline
    from pipeline.sim.simulate import simulate

    if not drive_path.exists():
        log.info("demo drive %s absent: generating %d frames (seed %d)", drive_path, frames, seed)
        print(simulate(drive_path, frames=frames, seed=seed, fmt="rosbag2").render())
    cfg = _with_shipped_models(load_run_config(DEMO_CONFIG).with_overrides(input=str(drive_path), out=str(out)))
    # the demo replaces its own previous outputs by design (make demo, again and again); each
    # removed entry is named in a warning (pipeline.outputs.claim_out_dir)
    summary = run_pipeline(cfg, progress=progress, overwrite=True)
    metrics = None
    if summary["recording"] and summary["frames"]["fused_clouds"]:
        metrics = evaluate_recording(summary["recording"], drive_path)
        (out / "eval.json").write_text(json.dumps(metrics, indent=1))
    (out / "latency.txt").write_text(latency_text(summary) + "\n")
    return summary, metrics


def _with_shipped_models(cfg):
    """The demo config names the committed models from the repository root (``models/...``);
    resolve them to the shipped files, so ``segfuse demo`` works from any folder, checkout or not."""
    from dataclasses import replace

    for kind in ("deeplab", "maskrcnn"):
        engine = getattr(cfg.engines, kind)
        if engine is not None and not Path(engine.model).is_absolute():
            cfg.engines = replace(cfg.engines, **{kind: replace(engine, model=data_path(engine.model))})
    return cfg


def latency_text(s: dict) -> str:
    lines = [f"segfuse demo latency ({s['frames']['done']} frames, {s['policy']} policy, "
             f"{s['throughput_fps']:.2f} frames/s)",
             f"{'stage':<22}{'p50 ms':>9}{'p99 ms':>9}"]
    for name, v in s["stages_ms"].items():
        lines.append(f"{name:<22}{v['p50']:9.1f}{v['p99']:9.1f}")
    if s["latency_ms"]:
        lat = s["latency_ms"]
        lines.append(f"{'end to end':<22}{lat['p50']:9.1f}{lat['p99']:9.1f}   (read -> recorded; replay at full "
                     "speed queues frames behind the slowest stage)")
    return "\n".join(lines)


def render_demo(summary: dict, metrics: dict | None) -> str:
    from pipeline.evaluation import render_table
    from pipeline.runner import render_summary

    text = render_summary(summary)
    if metrics is not None:
        text += "\n" + render_table(metrics)
    out = Path(summary["out"])
    text += (f"\n\nlook at: {out / 'overlay.mp4'} (the video), {summary['recording']} (open the .mcap in Foxglove), "
             f"{out / 'latency.txt'}, {out / 'summary.json'}, {out / 'eval.json'}")
    return text
