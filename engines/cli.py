"""`segfuse engines ...`: export, quantize, check, build, info. Parses arguments and calls
into the engines modules; imports nothing heavy at module level."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("engines", help="export, quantize, build, inspect and compare inference engines",
                              description="Models, ONNX export, INT8 quantisation, TensorRT builds and "
                                          "backend-vs-backend checks. See docs/engines.md.")
    sub = p.add_subparsers(dest="engines_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    e = sub.add_parser("export", help="export a torchvision model to an ONNX that honours the I/O contract")
    e.add_argument("--config", type=Path, help="model config YAML (configs/engines/*.yaml)")
    e.add_argument("--arch", help="architecture, e.g. deeplabv3_mobilenet_v3_large, maskrcnn_resnet50_fpn")
    e.add_argument("--checkpoint", type=Path, help="torchvision-format checkpoint (default: random init)")
    e.add_argument("--input-size", help="HxW, e.g. 512x1024 (default from the config, else 512x1024)")
    e.add_argument("--num-detections", type=int, help="Mask R-CNN: fixed number K of output detections")
    e.add_argument("--no-scores", action="store_true", help="DeepLab: class_ids output only")
    e.add_argument("--dynamic-batch", action="store_true", help="DeepLab: dynamic batch dimension")
    e.add_argument("--check-frames", default=None,
                   help="drive or image folder to check the export on (default: 2 procedural frames)")
    e.add_argument("--num-check-frames", type=int, default=4)
    e.add_argument("-o", "--out", type=Path, required=True, help="output .onnx")
    e.set_defaults(func=cmd_export)

    q = sub.add_parser("quantize", help="INT8 PTQ to a Q/DQ ONNX (Model Optimizer), or FP16 AutoCast")
    q.add_argument("onnx", type=Path)
    q.add_argument("--precision", choices=["int8", "fp16"], default="int8")
    q.add_argument("--calibration", type=Path, nargs="+",
                   help="recorded drives or image folders to calibrate on (frames taken in order)")
    q.add_argument("--method", choices=["entropy", "max"], default="entropy")
    q.add_argument("--frames", type=int, default=500, help="calibration frames to use (default 500)")
    q.add_argument("--stride", type=int, default=1, help="take every Nth frame of the drive")
    q.add_argument("--min-frames", type=int, default=500,
                   help="refuse fewer calibration frames than this (default 500; lower only for tests)")
    q.add_argument("--quantize-first-conv", action="store_true", help="also quantize the first convolution")
    q.add_argument("--quantize-classifier", action="store_true", help="also quantize the classifier / box predictor")
    q.add_argument("--quantize-mask-head", action="store_true", help="also quantize the mask head")
    q.add_argument("--keep", action="append", default=[], metavar="REGEX",
                   help="also leave the convolutions whose node names match REGEX unquantized (repeatable)")
    q.add_argument("--no-arch-defaults", action="store_true",
                   help="quantize the layers segfuse's own architectures keep in higher precision by default "
                        "(engines/quantize.py ARCH_KEEP)")
    q.add_argument("--high-precision", choices=["fp32", "fp16"], default="fp32",
                   help="type of the unquantized parts (fp32 runs on ONNX Runtime CPU)")
    q.add_argument("-o", "--out", type=Path, help="output .onnx (default: <onnx>.int8.onnx / .fp16.onnx)")
    q.set_defaults(func=cmd_quantize)

    c = sub.add_parser("check", help="run two backends/precisions on the same frames and judge their agreement")
    c.add_argument("a", help="[BACKEND[/PRECISION]:]PATH or engine config YAML (the reference)")
    c.add_argument("b", help="[BACKEND[/PRECISION]:]PATH or engine config YAML")
    c.add_argument("--frames", type=int, default=20, help="number of frames (default 20)")
    c.add_argument("--source", help="drive or image folder (default: procedural frames)")
    c.add_argument("--score-threshold", type=float, default=0.5, help="Mask R-CNN detections compared above this")
    c.add_argument("--threads", type=int, default=0)
    c.add_argument("--json", type=Path, help="also write the metrics as JSON")
    c.set_defaults(func=cmd_check)

    b = sub.add_parser("build", help="build (or find in the cache) a TensorRT engine")
    b.add_argument("--onnx", type=Path, required=True)
    b.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    b.add_argument("--dla", type=int, default=None, metavar="N", help="DLA core (Orin), GPU fallback on")
    b.add_argument("--cache-dir", type=Path)
    b.add_argument("--workspace-mb", type=int, default=2048)
    b.add_argument("--max-batch", type=int, default=1)
    b.add_argument("--calibration", type=Path, help="TensorRT < 10.12 INT8: drive or image folder")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.set_defaults(func=cmd_build)

    t = sub.add_parser("bench", help="engine-only latency: warm-up, then timed iterations (p50/p90/p99)",
                       description="trtexec-like timing of engine.infer on one preprocessed frame, per engine "
                                   "(backend and precision as given). See docs/profiling.md.")
    t.add_argument("engines", nargs="+", help="[BACKEND[/PRECISION]:]PATH or engine config YAML, one or more")
    t.add_argument("--warmup", type=int, default=5, help="untimed iterations first (default 5)")
    t.add_argument("--iterations", type=int, default=50, help="timed iterations (default 50)")
    t.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: default)")
    t.add_argument("--json", type=Path, help="also write the results as JSON")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_bench)

    s = sub.add_parser("selftest", help="GPU self-check: build/load each committed model at each precision, compare "
                                        "with ONNX Runtime CPU on drive frames, time it (make gpu-check)",
                       description="Without a usable NVIDIA GPU it says why and exits 0. See docs/engines.md.")
    s.add_argument("--source", help="drive or image folder (default: a drive simulated now, validation seed)")
    s.add_argument("--frames", type=int, default=8, help="frames compared per engine (default 8)")
    s.add_argument("--iterations", type=int, default=50, help="timed iterations per engine (default 50)")
    s.add_argument("--warmup", type=int, default=10)
    s.add_argument("--model", action="append", default=None, type=Path,
                   help="ONNX to check instead of the committed models (repeatable)")
    s.add_argument("--precision", action="append", choices=["fp32", "fp16", "int8"], default=None,
                   help="only these precisions (repeatable; default: all the GPU supports)")
    s.add_argument("--cache-dir", type=Path, help="engine cache (default: a temporary folder: fresh builds)")
    s.add_argument("--json", type=Path, help="also write the report as JSON")
    s.set_defaults(func=cmd_selftest)

    i = sub.add_parser("info", help="describe an ONNX file or a TensorRT engine")
    i.add_argument("path", type=Path)
    i.add_argument("--dla", type=int, default=None, metavar="N",
                   help="DLA core to load a DLA engine on (default: the sidecar's dla_core)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)


def cmd_export(args: argparse.Namespace) -> int:
    from engines.export import export_onnx
    from engines.frames import load_frames
    from engines.models import default_spec, load_model_spec, model_kind, parse_hw

    if args.config:
        spec = load_model_spec(args.config)
        if args.arch and args.arch != spec.arch:
            raise ConfigError(f"--arch {args.arch} contradicts the config's {spec.arch}", field="arch")
    elif args.arch:
        model_kind(args.arch)
        spec = default_spec(args.arch)
    else:
        raise ConfigError("give --arch or --config", field="arch")
    if args.checkpoint:
        spec.checkpoint = args.checkpoint
    if args.input_size:
        spec.input_hw = parse_hw(args.input_size, field="--input-size")
    if args.num_detections:
        spec.num_detections = args.num_detections
    from engines.models import check_input_hw

    check_input_hw(spec)
    frames = None
    if args.check_frames:
        frames = load_frames(args.check_frames, limit=args.num_check_frames)
    report = export_onnx(spec, args.out, with_scores=not args.no_scores, dynamic_batch=args.dynamic_batch,
                         verify_frames=frames)
    print("\n".join(report.lines()))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from engines.quantize import autocast_fp16, quantize_int8

    if args.precision == "fp16":
        if args.calibration is None:
            raise ConfigError("FP16 AutoCast needs --calibration: a recorded drive or a folder of camera images "
                              "(it judges value ranges on them)", field="--calibration")
        import itertools

        from engines.frames import iter_frames
        from engines.quantize import DEFAULT_AUTOCAST_FRAMES

        out = args.out or args.onnx.with_suffix(".fp16.onnx")
        n = min(args.frames, DEFAULT_AUTOCAST_FRAMES)
        frames = itertools.islice(itertools.chain.from_iterable(
            iter_frames(src, stride=args.stride) for src in args.calibration), n)
        autocast_fp16(args.onnx, out, frames, max_frames=n, source=args.calibration[0])
        print(f"AutoCast FP16 ({n} calibration frames; FP16 only inside backbone and heads) -> {out}")
        return 0
    if args.calibration is None:
        raise ConfigError("INT8 needs --calibration: a recorded drive or a folder of camera images "
                          "(random data is refused)", field="--calibration")
    import itertools

    from engines.frames import iter_frames

    out = args.out or args.onnx.with_suffix(".int8.onnx")
    frames = itertools.chain.from_iterable(iter_frames(src, stride=args.stride) for src in args.calibration)
    frames = itertools.islice(frames, args.frames)
    source = args.calibration[0] if len(args.calibration) == 1 else ", ".join(str(p) for p in args.calibration)
    report = quantize_int8(args.onnx, out, frames,
                           method=args.method, min_frames=args.min_frames, max_frames=args.frames,
                           keep_first_conv=not args.quantize_first_conv, keep_classifier=not args.quantize_classifier,
                           keep_mask_head=not args.quantize_mask_head, keep_patterns=args.keep,
                           arch_defaults=not args.no_arch_defaults,
                           high_precision=args.high_precision,
                           source=source)
    print("\n".join(report.lines()))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from engines.check import compare_engines, format_agreement, open_run, parse_run_spec
    from engines.frames import load_frames, procedural_frames

    spec_a, spec_b = parse_run_spec(args.a), parse_run_spec(args.b)
    if args.source:
        frames = load_frames(args.source, limit=args.frames)
    else:
        log.warning("no --source: comparing on %d procedural frames; use a recorded drive for a real check",
                    args.frames)
        frames = procedural_frames(args.frames, seed=11)
    a = open_run(spec_a, threads=args.threads)
    b = open_run(spec_b, threads=args.threads)
    try:
        result = compare_engines(a, b, frames, score_threshold=args.score_threshold)
    finally:
        a.close()
        b.close()
    names = ["fp32", "fp16", "int8"]
    print("\n".join(format_agreement(result, spec_a.label(), spec_b.label(),
                                     names[int(result.metrics["tolerance_precision"])])))
    if args.json:
        args.json.write_text(json.dumps({"passed": result.passed, "failures": result.failures,
                                         "metrics": result.metrics}, indent=2))
    return 0 if result.passed else 1


def cmd_build(args: argparse.Namespace) -> int:
    from engines.tensorrt_backend import build_engine

    path, sidecar = build_engine(args.onnx, precision=args.precision, cache_dir=args.cache_dir,
                                 workspace_mb=args.workspace_mb, dla_core=args.dla, max_batch=args.max_batch,
                                 calibration=args.calibration, force=args.force)
    inputs = sidecar.get("inputs", {})
    print(f"engine {path}")
    print(f"  TensorRT {inputs.get('trt_version')} ({inputs.get('build_path')}), {inputs.get('gpu_name')} "
          f"sm{inputs.get('compute_capability')}, {inputs.get('precision')}, DLA {inputs.get('dla_core')}")
    if sidecar.get("build_seconds") is not None:
        print(f"  built in {sidecar['build_seconds']:.0f} s")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engines.bench import bench_engine
    from engines.check import open_run, parse_run_spec

    if args.warmup < 0 or args.iterations < 1:
        raise ConfigError("--warmup must be >= 0 and --iterations >= 1", field="--iterations")
    results = []
    for text in args.engines:
        spec = parse_run_spec(text)
        engine = open_run(spec, threads=args.threads)
        try:
            with tqdm(total=args.warmup + args.iterations, desc=f"bench {spec.path.name}", unit="it",
                      disable=args.no_progress) as bar:
                r = bench_engine(engine, warmup=args.warmup, iters=args.iterations, progress=bar.update)
        finally:
            engine.close()
        r["engine"] = spec.label()
        r["name"] = spec.path.name if spec.config is None else spec.label()
        results.append(r)
    print(f"{'engine':40s} {'kind':9s} {'backend':12s} {'prec':5s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} "
          f"{'max ms':>8s} {'inf/s':>7s}")
    for r in results:
        lat = r["latency_ms"]
        print(f"{r['name'][-40:]:40s} {r['kind']:9s} {str(r['backend']):12s} {str(r['precision']):5s} "
              f"{lat['p50']:8.2f} {lat['p90']:8.2f} {lat['p99']:8.2f} {lat['max']:8.2f} {lat['throughput_per_s']:7.2f}")
    print(f"({args.warmup} warm-up + {args.iterations} timed iterations each, batch 1, one procedural frame)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from engines.selftest import run_selftest, write_json

    if args.frames < 1 or args.iterations < 1 or args.warmup < 0:
        raise ConfigError("--frames and --iterations must be >= 1, --warmup >= 0", field="--frames")
    import tempfile

    from engines.selftest import INT8_CALIBRATION_FRAMES, SIM_SEED, gpu_unavailable

    with tempfile.TemporaryDirectory(prefix="segfuse-selftest-drive-") as tmp:
        source = args.source
        if source is None and gpu_unavailable() is None:
            from pipeline.sim.simulate import simulate

            n = max(args.frames, INT8_CALIBRATION_FRAMES if not args.precision or "int8" in args.precision else 0)
            log.info("simulating a %d-frame drive (seed %d) for the self-check", n, SIM_SEED)
            source = Path(tmp) / f"sim_{SIM_SEED}"
            simulate(source, frames=n, seed=SIM_SEED, progress=False)
        report = run_selftest(models=args.model, source=source, frames=args.frames, iters=args.iterations,
                              warmup=args.warmup, cache_dir=args.cache_dir, precisions=args.precision)
    if args.source is None and report.gpu_available:
        report.versions["frames"] += f" (segfuse sim seed {SIM_SEED})"
    print("\n".join(report.lines()))
    if args.json:
        write_json(report, args.json)
    return report.exit_code()


def cmd_info(args: argparse.Namespace) -> int:
    from engines import engine_cache

    path = args.path
    if path.suffix == ".onnx":
        from engines.export import onnx_summary

        info = onnx_summary(path)
    else:
        info = {"path": str(path), "format": "tensorrt engine", "sidecar": engine_cache.read_sidecar(
            path.with_suffix(".json"))}
        try:
            from engines.tensorrt_backend import TensorRTEngine

            side = info["sidecar"] or {}
            dla = args.dla if args.dla is not None else (side.get("inputs") or {}).get("dla_core")
            with TensorRTEngine(path, kind=side.get("notes", {}).get("kind") or None, dla_core=dla) as eng:
                info.update(eng.describe())
        except Exception as exc:  # no TensorRT here: the sidecar still says what the engine is
            info["runtime"] = f"not loaded: {exc}"
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        elif isinstance(value, list):
            print(f"{key}: " + ("; ".join(str(v) for v in value) if value else "none"))
        else:
            print(f"{key}: {value}")
    return 0
