"""``segfuse run`` and ``segfuse eval``: parse arguments, call pipeline.runner / pipeline.evaluation."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the pipeline on a drive, bag, video or camera (YAML config)",
                       description="Source -> sync -> masks -> fuse -> recorder + overlay, on worker threads. "
                                   "Ctrl-C (or SIGTERM) stops the source, drains the frames in flight and closes "
                                   "the recording.")
    p.add_argument("config", help="run config (YAML), e.g. configs/demo.yaml")
    p.add_argument("--input", help="source URI or path (overrides input.uri): a drive folder, bag, video, image "
                                   "folder, v4l2:///dev/video0, csi://0, rtsp://...")
    p.add_argument("--frames", type=int, help="stop after N camera frames")
    p.add_argument("--rate", type=float, help="replay pacing: 1 = recorded speed, 0 = as fast as possible")
    p.add_argument("--policy", choices=["replay", "live"], help="replay (lossless) or live (newest frame wins)")
    p.add_argument("--out", help="output folder (overrides out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

    e = sub.add_parser("eval", help="score a recording against a drive's ground truth",
                       description="Fusion metrics of a segfuse run recording against the ground truth of the "
                                   "drive it came from: per-point class accuracy, per-point instance precision "
                                   "and recall, object centroid error against the ground-truth boxes.")
    e.add_argument("--drive", required=True, help="the recording (OUT/recording of segfuse run)")
    e.add_argument("--truth", required=True, help="the drive with ground truth it was made from")
    e.add_argument("--json", help="also write the metrics to this JSON file")
    e.set_defaults(func=evaluate)


def run(args: argparse.Namespace) -> int:
    from pipeline.run_config import load_run_config
    from pipeline.runner import render_summary, run_pipeline

    cfg = load_run_config(args.config).with_overrides(input=args.input, frames=args.frames, rate=args.rate,
                                                      out=args.out, policy=args.policy)
    summary = run_pipeline(cfg, progress=False if args.no_progress else None)
    print(render_summary(summary))
    return 130 if summary["stopped_by"] == "signal" else 0


def evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from pipeline.evaluation import evaluate_recording, render_table

    metrics = evaluate_recording(args.drive, args.truth)
    text = json.dumps(metrics, indent=1)
    print(text)
    print(render_table(metrics))
    if args.json:
        Path(args.json).write_text(text)
    return 0
