"""``segfuse run`` and ``segfuse eval``: parse arguments, call pipeline.runner / pipeline.evaluation."""
from __future__ import annotations

import argparse

DEFAULT_CONFIG = "configs/demo.yaml"


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
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier run in --out (refused otherwise)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

    e = sub.add_parser("eval", help="score models, or a recording, against drives' ground truth",
                       description="Without --truth: run the models (any backend, any precision) on drives with "
                                   "ground truth and score them: DeepLab per-class IoU and mIoU, Mask R-CNN mask "
                                   "AP and AP50 (pycocotools); with --fusion also the fused LiDAR points. "
                                   "With --truth: score a segfuse run recording (--drive) against the drive it "
                                   "came from: per-point class accuracy, per-point instance precision and "
                                   "recall, object centroid error.")
    e.add_argument("--drive", required=True, nargs="+",
                   help="drives with ground truth (or, with --truth, the recording OUT/recording of segfuse run)")
    e.add_argument("--truth", help="recording mode: the drive with ground truth the recording was made from")
    e.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"run config whose engines section names the models (default {DEFAULT_CONFIG})")
    e.add_argument("--deeplab", help="DeepLab model (ONNX or engine); default: the config's")
    e.add_argument("--maskrcnn", help="Mask R-CNN model (ONNX or engine); default: the config's")
    e.add_argument("--only", choices=["deeplab", "maskrcnn"], help="evaluate one model only")
    e.add_argument("--backend", choices=["onnxruntime", "tensorrt"], help="override the config's backend")
    e.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="override the config's precision")
    e.add_argument("--device", help="cpu or cuda (ONNX Runtime)")
    e.add_argument("--threads", type=int, help="inference threads (0: the backend's default)")
    e.add_argument("--frames", type=int, help="at most this many frames per drive")
    e.add_argument("--fusion", action="store_true",
                   help="also run the pipeline with these models and score the fused points and objects")
    e.add_argument("--out", default="out/eval", help="with --fusion: where the pipeline recordings go")
    e.add_argument("--json", help="also write the metrics to this JSON file")
    e.add_argument("--overwrite", action="store_true", help="with --fusion: replace earlier recordings in --out")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=evaluate)


def run(args: argparse.Namespace) -> int:
    from pipeline.run_config import load_run_config
    from pipeline.runner import render_summary, run_pipeline

    cfg = load_run_config(args.config).with_overrides(input=args.input, frames=args.frames, rate=args.rate,
                                                      out=args.out, policy=args.policy)
    from pipeline.outputs import EXIT_FAULT

    summary = run_pipeline(cfg, progress=False if args.no_progress else None, overwrite=args.overwrite)
    print(render_summary(summary))
    code = EXIT_FAULT if summary.get("fault") else 130 if summary["stopped_by"] == "signal" else 0
    if cfg.sinks.publisher.enabled:
        from pipeline.sinks.publisher import exit_if_close_stuck

        exit_if_close_stuck(code)             # the outputs are written: a stuck Zenoh close does not hold the exit
    return code


def evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    if args.truth:
        from pipeline.evaluation import evaluate_recording, render_table

        if len(args.drive) != 1:
            from pipeline.errors import ConfigError
            raise ConfigError("recording mode scores one recording: give one --drive", field="--drive")
        metrics = evaluate_recording(args.drive[0], args.truth)
        table = render_table(metrics)
    else:
        metrics, table = evaluate_models_cli(args)
    text = json.dumps(metrics, indent=1)
    print(text)
    print(table)
    if args.json:
        Path(args.json).write_text(text)
    return 0


def model_engine_configs(args: argparse.Namespace) -> tuple[object, dict]:
    """The run config and {kind: EngineConfig} the command line asks for (config, then overrides)."""
    from dataclasses import replace
    from pathlib import Path

    from pipeline.errors import ConfigError
    from pipeline.run_config import load_run_config

    cfg = load_run_config(args.config)
    engines = {}
    for kind in ("deeplab", "maskrcnn"):
        if args.only and args.only != kind:
            continue
        ec = getattr(cfg.engines, kind)
        path = getattr(args, kind)
        if ec is None and path is None:
            raise ConfigError(f"no {kind} model: the config's engines.{kind} is empty and --{kind} not given",
                              path=args.config, field=f"engines.{kind}")
        if ec is None:
            from engines.factory import EngineConfig
            ec = EngineConfig(model=Path(path), kind=kind)
        elif path is not None:
            ec = replace(ec, model=Path(path))
        for name in ("backend", "precision", "device", "threads"):
            value = getattr(args, name)
            if value is not None:
                ec = replace(ec, **{name: value})
        engines[kind] = ec.validate(args.config)
    return cfg, engines


def evaluate_models_cli(args: argparse.Namespace, engines_open: dict | None = None) -> tuple[dict, str]:
    """``engines_open``: already-open engines for the models ``args`` names (segfuse fleet keeps
    them open across drives); left open."""
    from dataclasses import replace
    from pathlib import Path

    from engines.evaluation import evaluate_models, render_model_table
    from pipeline.evaluation import evaluate_recording, render_table
    from pipeline.runner import run_pipeline

    cfg, engines = model_engine_configs(args)
    metrics = evaluate_models(args.drive, deeplab=engines.get("deeplab"), maskrcnn=engines.get("maskrcnn"),
                              frames=args.frames, resize=cfg.engines.resize,
                              mask_threshold=engines["maskrcnn"].mask_threshold if "maskrcnn" in engines else 0.5,
                              progress=not args.no_progress, engines=engines_open)
    table = render_model_table(metrics)
    if args.fusion:
        if len(engines) != 2:
            from pipeline.errors import ConfigError
            raise ConfigError("--fusion needs both models", field="--only")
        fused = {}
        for drive in args.drive:
            out = Path(args.out) / Path(drive).name
            run_cfg = replace(cfg.with_overrides(input=str(drive), out=str(out), frames=args.frames),
                              masks="engines", engines=replace(cfg.engines, **engines))
            run_cfg.sinks = replace(run_cfg.sinks, overlay=replace(run_cfg.sinks.overlay, enabled=False))
            summary = run_pipeline(run_cfg, progress=False if args.no_progress else None, engines=engines_open,
                                   overwrite=args.overwrite)
            fused[str(drive)] = evaluate_recording(summary["recording"], drive)
            table += f"\n\nafter fusion, {drive}:\n" + render_table(fused[str(drive)])
        metrics["fusion"] = fused
    return metrics, table
