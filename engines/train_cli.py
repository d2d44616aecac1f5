"""`segfuse train deeplab|maskrcnn`: parse arguments, call engines.training."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.preprocess import RESIZE_MODES

log = logging.getLogger(__name__)

# Defaults of the committed models (docs/models.md gives the exact commands and timings).
DEFAULTS = {
    "deeplab": dict(arch="deeplabv3plus_mobilenet_v3_small", batch=8, crop="256x512", lr=2e-3,
                    scale="0.7,1.4", warmup=100, class_balance="sqrt-median"),
    "maskrcnn": dict(arch="maskrcnn_mobilenet_v3_small_fpn", batch=2, crop="352x704", lr=1e-3,
                     scale="0.8,1.25", warmup=200, class_balance="none"),
}
# Static-shape detection settings of the exported default Mask R-CNN (few objects per frame).
MASKRCNN_EXPORT = dict(num_detections=50, rpn_pre_nms_top_n=500, rpn_post_nms_top_n=300, box_candidates=300)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a default model (DeepLab or Mask R-CNN) on synthetic drives",
                       description="Train on drives with ground truth (segfuse sim output), checkpointing as it "
                                   "goes (--resume continues), then export the ONNX (I/O contract v1). "
                                   "See docs/models.md.")
    p.add_argument("kind", choices=["deeplab", "maskrcnn"])
    p.add_argument("--drives", nargs="+", required=True,
                   help="drive folders, or folders holding drives (each sub-folder with metadata is one)")
    p.add_argument("--out", required=True, help="output folder (checkpoint, loss log, ONNX, report)")
    p.add_argument("--arch", help="architecture (default: the committed model's)")
    p.add_argument("--steps", type=int, default=100000, help="maximum optimiser steps")
    p.add_argument("--minutes", type=float, help="time budget; the learning-rate schedule ends with it")
    p.add_argument("--batch", type=int, help="crops per step")
    p.add_argument("--crop", help="training crop HxW")
    p.add_argument("--scale", help="random scale range, e.g. 0.7,1.4")
    p.add_argument("--lr", type=float, help="peak learning rate (AdamW)")
    p.add_argument("--class-balance", choices=["none", "sqrt-median"],
                   help="DeepLab loss weights per class (default sqrt-median: rare thin classes count more)")
    p.add_argument("--bias-drives", nargs="+", default=[],
                   help="DeepLab: held-out drives (or folders of drives) to tune per-class logit offsets on "
                        "for the best mIoU, after training and before export (docs/models.md)")
    p.add_argument("--bias-resize", choices=RESIZE_MODES, default="letterbox",
                   help="how the pipeline will resize frames for the model (its engines.resize), for --bias-drives")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frame-stride", type=int, default=1, help="use every n-th frame of each drive")
    p.add_argument("--export-size", default="384x1248", help="ONNX input HxW (default 384x1248)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--init", help="fine-tune: start from these weights (state dict or last.pt) with a fresh "
                                  "optimiser and schedule; layers they lack keep their initialisation")
    p.add_argument("--no-export", action="store_true", help="do not export the ONNX at the end")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def find_drives(paths: list[str]) -> list[Path]:
    """Drive folders: each path is a drive, or a folder whose sub-folders are drives."""
    from pipeline.drive.io import detect_format

    def is_drive(path: Path) -> bool:
        try:
            detect_format(path)
            return True
        except Exception:
            return False

    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigError("drive not found", path=path, field="drives")
        if is_drive(path):
            out.append(path)
            continue
        found = [p for p in sorted(path.iterdir()) if p.is_dir() and ".partial" not in p.name and is_drive(p)]
        if not found:
            raise ConfigError("neither a drive nor a folder of drives", path=path, field="drives")
        out.extend(found)
    return out


def _floats(text: str, field: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"expected two numbers like 0.7,1.4, got {text!r}", field=field) from None
    return a, b


def run(args: argparse.Namespace) -> int:
    from engines.models import parse_hw
    from engines.training import TrainConfig, export_trained, load_samples, train

    d = DEFAULTS[args.kind]
    drives = find_drives(args.drives)
    cfg = TrainConfig(kind=args.kind, arch=args.arch or d["arch"], drives=[str(p) for p in drives], out_dir=args.out,
                      steps=args.steps, minutes=args.minutes, batch=args.batch or d["batch"],
                      crop_hw=parse_hw(args.crop or d["crop"], field="crop"),
                      scale_range=_floats(args.scale or d["scale"], "scale"), lr=args.lr or d["lr"],
                      warmup_steps=d["warmup"], threads=args.threads, seed=args.seed,
                      checkpoint_every=args.checkpoint_every, export_hw=parse_hw(args.export_size, field="export-size"),
                      frame_stride=args.frame_stride, class_balance=args.class_balance or d["class_balance"],
                      init_weights=args.init, bias_drives=[str(p) for p in find_drives(args.bias_drives)]
                      if args.bias_drives else [], bias_resize=args.bias_resize)
    log.info("training %s on %d drives -> %s", cfg.arch, len(drives), args.out)
    samples = load_samples(cfg.drives, stride=cfg.frame_stride, progress=not args.no_progress)
    report = train(cfg, resume=args.resume, progress=not args.no_progress, samples=samples)
    print(f"trained {cfg.arch}: {report['steps']} steps in {report['train_seconds'] / 60:.1f} min on "
          f"{report['frames']} frames; weights {report['weights']}")
    if not args.no_export:
        onnx_path = Path(args.out) / f"{cfg.arch}.onnx"
        overrides = MASKRCNN_EXPORT if args.kind == "maskrcnn" else {}
        verify = [s.image for s in samples[:2]]
        rep = export_trained(cfg.arch, report["weights"], onnx_path, input_hw=cfg.export_hw, verify_frames=verify,
                             **overrides)
        for line in rep.lines():
            print(line)
        report["onnx"] = str(onnx_path)
        (Path(args.out) / "train_report.json").write_text(json.dumps(report, indent=1))
    return 0
