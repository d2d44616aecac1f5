"""`segfuse engines selftest` (`make gpu-check`): the GPU path checked end to end in one command.

On a machine with an NVIDIA GPU, for each committed model (models/*.onnx) and each precision
the GPU supports (fp32; fp16 where TensorRT reports fast FP16; int8 where it reports fast INT8,
from a Q/DQ file quantized here on the CPU from the same kind of frames), it:

1. builds the TensorRT engine (or finds it in the cache) and loads it, without and with a CUDA
   graph (the graph must be captured: a silent fallback is a failure);
2. compares it with the ONNX Runtime CPU run of the FP32 ONNX on real drive frames, with the
   task metrics and the tolerance of its precision (engines/check.py, engines/agreement.py:
   pixel agreement and mIoU for DeepLab; matched detections, mask IoU, score and box
   differences for Mask R-CNN);
3. times engine-only inference (engines/bench.py) p50/p99, with and without the CUDA graph;

and, where ``onnxruntime-gpu`` is installed, the same check of ONNX Runtime's CUDA provider at
FP32 (the provider it really runs on is asserted). It prints one table and the TensorRT, CUDA,
driver and GPU versions, and exits 1 if anything failed.

Frames: ``source`` (a recorded drive or an image folder); ``segfuse engines selftest`` without
``--source`` simulates one now from validation seed ``SIM_SEED`` (the committed models were
trained on simulated drives; 5001-5004 are never used here). Without a usable GPU it says why,
checks nothing and exits 0.
"""
from __future__ import annotations

import json
import logging
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.config import data_path
from pipeline.errors import EngineError, SegfuseError

log = logging.getLogger(__name__)

# the committed models, from the checkout or the installed package's data (pipeline.config.data_path)
COMMITTED_MODELS = (data_path("models/deeplabv3plus_mobilenet_v3_small.onnx"),
                    data_path("models/maskrcnn_mobilenet_v3_small_fpn.onnx"))
SIM_SEED = 3302                     # a validation seed: not in training (1001-1040) nor the test drives (5001-5004)
DEFAULT_FRAMES = 8
INT8_CALIBRATION_FRAMES = 32        # a self-check calibration, not a deployment one (that uses >= 500)


@dataclass
class Row:
    model: str
    backend: str
    precision: str
    status: str = "FAIL"            # PASS | FAIL | SKIP
    agreement: str = ""
    p50_ms: float | None = None
    p99_ms: float | None = None
    p50_graph_ms: float | None = None
    p99_graph_ms: float | None = None
    graph: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class SelftestReport:
    gpu_available: bool
    reason: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.status != "FAIL" for r in self.rows)

    def exit_code(self) -> int:
        return 0 if not self.gpu_available or self.passed else 1

    def lines(self) -> list[str]:
        if not self.gpu_available:
            return [f"segfuse GPU self-check: no usable NVIDIA GPU here ({self.reason}); nothing was checked.",
                    "Run `make gpu-check` on a machine with an NVIDIA GPU, TensorRT and cuda-python."]
        out = ["segfuse GPU self-check"]
        out += [f"  {k}: {v}" for k, v in self.versions.items()]

        def ms(v: float | None) -> str:
            return f"{v:8.2f}" if v is not None else f"{'-':>8s}"
        out.append(f"{'model':40s} {'backend':12s} {'prec':5s} {'result':6s} {'p50 ms':>8s} {'p99 ms':>8s} "
                   f"{'p50 grf':>8s} {'p99 grf':>8s}  agreement / notes")
        for r in self.rows:
            out.append(f"{r.model[-40:]:40s} {r.backend:12s} {r.precision:5s} {r.status:6s} {ms(r.p50_ms)} "
                       f"{ms(r.p99_ms)} {ms(r.p50_graph_ms)} {ms(r.p99_graph_ms)}  {r.agreement}"
                       + (f"  [{'; '.join(r.notes)}]" if r.notes else ""))
        fails = sum(r.status == "FAIL" for r in self.rows)
        out.append(f"{'PASSED' if not fails else f'FAILED ({fails} of {len(self.rows)})'} in {self.seconds:.0f} s "
                   "(grf = with a CUDA graph; timings engine-only, batch 1)")
        return out


def gpu_unavailable() -> str | None:
    """Why no NVIDIA GPU can be used here, or None."""
    from engines.cuda_runtime import gpu_unavailable_reason

    return gpu_unavailable_reason(0)


def _driver_version() -> str:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return "unknown (no nvidia-smi)"
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def collect_versions() -> dict[str, str]:
    import onnxruntime as ort

    from engines.cuda_runtime import get_runtime

    v: dict[str, str] = {"host": f"{platform.machine()} {platform.system()} {platform.release()}, "
                                 f"Python {platform.python_version()}"}
    rt = get_runtime()
    info = rt.device_info(0)
    v["gpu"] = f"{info.name} (sm {info.compute_capability}, {info.total_memory_mb} MiB)"
    v["driver"] = _driver_version()
    v.update({k: str(x) for k, x in rt.versions().items()})
    v["cuda runtime used"] = rt.name
    try:
        import tensorrt as trt

        v["tensorrt"] = trt.__version__
    except ImportError as exc:
        v["tensorrt"] = f"not importable ({exc})"
    v["onnxruntime"] = f"{ort.__version__} (providers: {', '.join(ort.get_available_providers())})"
    return v


def _frames(source: str | Path | None, n: int) -> tuple[list[np.ndarray], str]:
    from engines.frames import load_frames

    if source is None:
        raise EngineError("the self-check needs drive frames: give --source (the CLI simulates a drive when it "
                          "is not given)", field="source")
    return load_frames(source, limit=n), str(source)


def _fmt_agreement(kind: str, m: dict[str, float]) -> str:
    if kind == "deeplab":
        return f"pixel agreement {m['pixel_agreement']:.4f}, mIoU {m['miou']:.4f}"
    return (f"matched {m['matched']:.3f}, mask IoU {m['mask_iou']:.3f}, score diff {m['score_diff']:.4f}, "
            f"box diff {m['box_diff']:.2f} px")


def _check_one(row: Row, ref, make_engine, frames, kind: str, precision: str, iters: int, warmup: int,
               graphs: bool) -> None:
    """Fill ``row``: agreement and timing without a graph, then timing with one."""
    from engines.bench import bench_engine
    from engines.check import compare_engines
    from pipeline.preprocess import preprocess_frames

    batch = preprocess_frames(frames[:1], ref.input_hw).feed()
    fails: list[str] = []
    with make_engine(False) as eng:
        result = compare_engines(ref, eng, frames, precision_b=precision)
        row.agreement = _fmt_agreement(kind, result.metrics)
        fails += result.failures
        lat = bench_engine(eng, warmup=warmup, iters=iters, batch=batch)["latency_ms"]
        row.p50_ms, row.p99_ms = lat["p50"], lat["p99"]
    if graphs:
        with make_engine(True) as eng:
            row.graph = eng.describe().get("cuda_graph_status", "")
            if not eng.describe().get("cuda_graph"):
                fails.append(f"CUDA graph not captured ({row.graph})")
            else:
                same = compare_engines(ref, eng, frames[:2], precision_b=precision)
                fails += [f"with graph: {f}" for f in same.failures]
                lat = bench_engine(eng, warmup=warmup, iters=iters, batch=batch)["latency_ms"]
                row.p50_graph_ms, row.p99_graph_ms = lat["p50"], lat["p99"]
    row.notes += fails
    row.status = "PASS" if not fails else "FAIL"


def run_selftest(*, models: Sequence[str | Path] | None = None, source: str | Path | None = None,
                 frames: int = DEFAULT_FRAMES, iters: int = 50, warmup: int = 10,
                 cache_dir: str | Path | None = None, precisions: Sequence[str] | None = None) -> SelftestReport:
    t0 = time.perf_counter()
    why = gpu_unavailable()
    if why is not None:
        return SelftestReport(False, why)
    report = SelftestReport(True, versions=collect_versions())
    from engines.onnxruntime_backend import OnnxRuntimeEngine

    models = [Path(m) for m in (models or COMMITTED_MODELS)]
    with tempfile.TemporaryDirectory(prefix="segfuse-selftest-") as tmp:
        work = Path(tmp)
        cache_dir = Path(cache_dir) if cache_dir else work / "engines"
        try:
            wanted = frames if precisions and "int8" not in precisions else max(frames, INT8_CALIBRATION_FRAMES)
            pool, where = _frames(source, wanted)          # INT8 calibrates on all of them
        except SegfuseError as exc:
            report.rows.append(Row("frames", "-", "-", notes=[exc.message]))
            return report
        images = pool[:frames]
        report.versions["frames"] = f"{len(images)} compared, from {where}"
        trt_reason = None
        try:
            from engines.tensorrt_backend import import_tensorrt

            trt = import_tensorrt()
        except SegfuseError as exc:
            trt, trt_reason = None, exc.message
        supported = _supported_precisions(trt) if trt else []
        for model in models:
            ref = OnnxRuntimeEngine(model)
            kind = ref.kind
            try:
                if trt is None:
                    report.rows.append(Row(model.name, "tensorrt", "-", notes=[f"TensorRT: {trt_reason}"]))
                for precision in (precisions or supported):
                    row = Row(model.name, "tensorrt", precision)
                    report.rows.append(row)
                    if precision not in supported:
                        row.status, row.notes = "SKIP", ["this GPU reports no fast path for it"]
                        continue
                    try:
                        _check_tensorrt(row, ref, model, kind, precision, images, pool, work, cache_dir,
                                        iters, warmup)
                    except SegfuseError as exc:
                        row.status, row.notes = "FAIL", row.notes + [exc.message]
                    except Exception as exc:          # a crash in one row must not hide the others
                        log.exception("self-check row %s %s", model.name, precision)
                        row.status, row.notes = "FAIL", row.notes + [f"{type(exc).__name__}: {exc}"]
                _check_ort_cuda(report, ref, model, kind, images, iters, warmup)
            finally:
                ref.close()
    report.seconds = time.perf_counter() - t0
    return report


def _supported_precisions(trt) -> list[str]:
    from engines.tensorrt_backend import trt_logger

    builder = trt.Builder(trt_logger())
    out = ["fp32"]
    if getattr(builder, "platform_has_fast_fp16", True):
        out.append("fp16")
    if getattr(builder, "platform_has_fast_int8", True):
        out.append("int8")
    return out


def _check_tensorrt(row: Row, ref, model: Path, kind: str, precision: str, images, pool, work: Path,
                    cache_dir: Path, iters: int, warmup: int) -> None:
    from engines.tensorrt_backend import TensorRTEngine, build_engine

    onnx_path = model
    calib_dir = work / "calibration"
    if not calib_dir.exists():                     # AutoCast and INT8 read frames from a folder
        import cv2

        calib_dir.mkdir()
        for i, img in enumerate(images):
            cv2.imwrite(str(calib_dir / f"{i:05d}.png"), img)
    if precision == "int8":
        onnx_path = _int8_onnx(model, pool, work)
        row.notes.append(f"Q/DQ calibrated on {len(pool)} self-check frames")
    engine_file, sidecar = build_engine(onnx_path, precision=precision, cache_dir=cache_dir,
                                        calibration=calib_dir, calibration_frames=len(images), kind=kind)
    row.notes.append(f"{sidecar.get('inputs', {}).get('build_path', '?')} path")

    def make(graph: bool):
        return TensorRTEngine(engine_file, kind=kind, cuda_graph=graph, precision=precision, metadata=ref.metadata)

    _check_one(row, ref, make, images, kind, precision, iters, warmup, graphs=True)


def _int8_onnx(model: Path, pool, work: Path) -> Path:
    from engines.quantize import quantize_int8

    out = work / f"{model.stem}.int8.onnx"
    if not out.is_file():
        quantize_int8(model, out, pool, min_frames=min(len(pool), INT8_CALIBRATION_FRAMES),
                      source=f"self-check frames ({len(pool)})")
    return out


def _check_ort_cuda(report: SelftestReport, ref, model: Path, kind: str, images, iters: int, warmup: int) -> None:
    import onnxruntime as ort

    from engines.onnxruntime_backend import OnnxRuntimeEngine

    row = Row(model.name, "ort-cuda", "fp32")
    report.rows.append(row)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        row.status, row.notes = "SKIP", ["onnxruntime-gpu not installed (pip install 'segfuse[gpu]')"]
        return
    try:
        _check_one(row, ref, lambda graph: OnnxRuntimeEngine(model, device="cuda"), images, kind, "fp32",
                   iters, warmup, graphs=False)
    except SegfuseError as exc:
        row.status, row.notes = "FAIL", row.notes + [exc.message]


def report_json(report: SelftestReport) -> dict[str, Any]:
    d = asdict(report)
    d["passed"] = report.passed
    return d


def write_json(report: SelftestReport, path: Path) -> None:
    from engines.engine_cache import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(report_json(report), indent=2, default=str).encode())
