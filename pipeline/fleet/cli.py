"""``segfuse fleet run|eval|compare``: parse arguments, call pipeline.fleet.execute / report.
Nothing heavy (and no Ray) is imported until a command runs."""
from __future__ import annotations

import argparse

EVAL_FORWARDED = (("deeplab", str), ("maskrcnn", str), ("only", str), ("backend", str), ("precision", str),
                  ("device", str), ("threads", int), ("frames", int))


def _fleet_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--drives", required=True, nargs="+",
                   help="drives: a drive, a folder of drives, a glob pattern, or a list file (@FILE or FILE.txt, "
                        "one path a line)")
    p.add_argument("--out", required=True, help="fleet output folder (drives/, units/, fleet_report.json/.html)")
    p.add_argument("--address", help="join a running Ray cluster: auto, HOST:PORT or ray://HOST:PORT "
                                     "(default: embedded Ray on this machine)")
    p.add_argument("--workers", type=int, help="worker processes (default: CPU cores / --cpus-per-worker, "
                                               "or the cluster's)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs Ray reserves per worker (default 1)")
    p.add_argument("--gpus-per-worker", type=float,
                   help="GPUs per worker (default 1 when a backend is tensorrt or the device cuda, else 0)")
    p.add_argument("--retry-failed", action="store_true", help="rerun the drives that failed before")
    p.add_argument("--overwrite", action="store_true",
                   help="replace complete results made with another config, other models or other drive contents")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="run or evaluate many drives on Ray workers; compare fleet reports",
                       description="Each drive is one unit of work on a Ray actor that keeps its models open. "
                                   "A rerun skips drives already complete (content hash of config, models, drive); "
                                   "failed drives are reported and rerun with --retry-failed. See docs/fleet.md.")
    fs = p.add_subparsers(dest="fleet_command", metavar="{run,eval,compare}")
    r = fs.add_parser("run", help="segfuse run on every drive",
                      description="segfuse run CONFIG --input DRIVE --out OUT/drives/NAME on every drive.")
    r.add_argument("config", help="run config (YAML)")
    r.add_argument("--frames", type=int, help="stop each drive after N camera frames")
    _fleet_options(r)
    r.set_defaults(func=run)

    e = fs.add_parser("eval", help="segfuse eval on every drive (model metrics per drive)",
                      description="segfuse eval --drive DRIVE --json OUT/drives/NAME/eval.json on every drive; the "
                                  "model options are segfuse eval's.")
    e.add_argument("--config", default="configs/demo.yaml", help="run config naming the models (default "
                                                                  "configs/demo.yaml)")
    e.add_argument("--deeplab")
    e.add_argument("--maskrcnn")
    e.add_argument("--only", choices=["deeplab", "maskrcnn"])
    e.add_argument("--backend", choices=["onnxruntime", "tensorrt"])
    e.add_argument("--precision", choices=["fp32", "fp16", "int8"])
    e.add_argument("--device")
    e.add_argument("--threads", type=int)
    e.add_argument("--frames", type=int, help="at most this many frames per drive")
    e.add_argument("--fusion", action="store_true", help="also run the pipeline and score the fused points")
    _fleet_options(e)
    e.set_defaults(func=evaluate)

    c = fs.add_parser("compare", help="per-metric differences between two fleet reports",
                      description="B - A for every metric over the drives complete in both, and the drives that "
                                  "changed most (e.g. A = the shipped model, B = the candidate).")
    c.add_argument("a", help="fleet report A (fleet_report.json or its folder)")
    c.add_argument("b", help="fleet report B")
    c.add_argument("--top", type=int, default=10, help="drives listed as changed most (default 10)")
    c.add_argument("--json", help="also write the comparison to this JSON file")
    c.set_defaults(func=compare)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _options(args: argparse.Namespace, mode: str, config: str, eval_argv: list[str], frames: int | None) -> object:
    from pipeline.errors import ConfigError
    from pipeline.fleet.execute import FleetOptions

    if args.workers is not None and args.workers < 1:
        raise ConfigError("must be at least 1", field="--workers")
    if not args.cpus_per_worker > 0:
        raise ConfigError("must be > 0", field="--cpus-per-worker")
    if args.gpus_per_worker is not None and not args.gpus_per_worker >= 0:
        raise ConfigError("must be >= 0", field="--gpus-per-worker")

    return FleetOptions(mode=mode, drives=args.drives, out=args.out, config=config, eval_argv=eval_argv,
                        frames=frames, address=args.address, workers=args.workers,
                        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                        retry_failed=args.retry_failed, overwrite=args.overwrite, progress=not args.no_progress)


def _finish(report: dict) -> int:
    from pipeline.fleet.report import render_text

    print(render_text(report))
    if report["fleet"].get("stopped_by") == "signal":
        return 130
    return 1 if report["counts"]["failed"] or report["counts"]["interrupted"] else 0


def run(args: argparse.Namespace) -> int:
    from pipeline.errors import ConfigError
    from pipeline.fleet.execute import run_fleet

    if args.frames is not None and args.frames < 1:
        raise ConfigError("must be at least 1", field="--frames")
    return _finish(run_fleet(_options(args, "run", args.config, [], args.frames)))


def evaluate(args: argparse.Namespace) -> int:
    from pipeline.fleet.execute import run_fleet

    argv = ["--config", args.config]
    for name, _ in EVAL_FORWARDED:
        value = getattr(args, name)
        if value is not None:
            argv += [f"--{name}", str(value)]
    if args.fusion:
        argv.append("--fusion")
    return _finish(run_fleet(_options(args, "eval", args.config, argv, None)))


def compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from pipeline.fleet.report import compare as compare_reports, load_report, render_compare

    c = compare_reports(load_report(args.a), load_report(args.b), top=args.top)
    print(render_compare(c))
    if args.json:
        Path(args.json).write_text(json.dumps(c, indent=1))
    return 0
