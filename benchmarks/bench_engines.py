"""ONNX Runtime (CPU) latency per model and precision at the default input size, against
PyTorch eager on the same inputs.

For each model: export (random weights: latency does not depend on them), warm-up, then
timed iterations; p50 and p99 in ms. Ours: ONNX Runtime CPU on the exported graph (FP32,
and INT8 Q/DQ from Model Optimizer PTQ calibrated on procedural frames). Baseline: the
same graph module in PyTorch eager (FP32, torch.no_grad). Ratio: baseline p50 / ours p50
(> 1: ONNX Runtime is faster).

Environment: SEGFUSE_BENCH_MODELS (comma list, default all below), SEGFUSE_BENCH_ITERS
(timed iterations for the MobileNet models, default 10; ResNet models use a third, min 3).
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from engines.models import DEFAULT_INPUT_HW

MODELS = [
    ("deeplabv3_mobilenet_v3_large", ("fp32", "int8")),
    ("maskrcnn_mobilenet_v3_large_fpn", ("fp32", "int8")),
    ("deeplabv3_resnet50", ("fp32",)),
    ("maskrcnn_resnet50_fpn", ("fp32",)),
]
CALIBRATION_FRAMES = 32


def _percentiles(times_s: list[float]) -> tuple[float, float]:
    ms = np.array(times_s) * 1000.0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _time(fn, warmup: int, iters: int) -> list[float]:
    from engines.bench import time_calls

    return time_calls(fn, warmup, iters)


def main() -> None:
    import torch

    from engines.export import build_graph, export_onnx
    from engines.frames import procedural_frames
    from engines.models import default_spec, random_model
    from engines.onnxruntime_backend import OnnxRuntimeEngine
    from engines.quantize import quantize_int8
    from pipeline.preprocess import preprocess_frames

    logging.getLogger("modelopt").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    wanted = os.environ.get("SEGFUSE_BENCH_MODELS")
    models = [m for m in MODELS if not wanted or m[0] in wanted.split(",")]
    base_iters = int(os.environ.get("SEGFUSE_BENCH_ITERS", "10"))
    h, w = DEFAULT_INPUT_HW
    print(f"ONNX Runtime CPU vs PyTorch eager, input {h}x{w}, {os.cpu_count()} CPU threads, "
          f"torch {torch.__version__}, batch 1")
    print(f"{'model':34s} {'prec':5s} {'ours p50':>9s} {'ours p99':>9s} {'eager p50':>10s} {'eager p99':>10s} "
          f"{'ratio':>6s}  iters")
    frames = procedural_frames(2, (375, 1242), seed=21)
    with tempfile.TemporaryDirectory() as tmp:
        for arch, precisions in models:
            iters = base_iters if "mobilenet" in arch else max(3, base_iters // 3)
            spec = default_spec(arch, input_hw=(h, w))
            model = random_model(spec, seed=0)
            fp32 = Path(tmp) / f"{arch}.onnx"
            export_onnx(spec, fp32, model=model, verify_frames=[], compare_stock=False)
            graph = build_graph(spec, model)
            feed = preprocess_frames(frames[:1], (h, w)).feed()
            x = torch.from_numpy(feed["images"])

            def eager():
                with torch.no_grad():
                    graph(x)

            e50, e99 = _percentiles(_time(eager, 1, iters))
            for precision in precisions:
                path = fp32
                if precision == "int8":
                    path = Path(tmp) / f"{arch}.int8.onnx"
                    quantize_int8(fp32, path, procedural_frames(CALIBRATION_FRAMES, (375, 1242), seed=5),
                                  min_frames=CALIBRATION_FRAMES)
                engine = OnnxRuntimeEngine(path)
                o50, o99 = _percentiles(_time(lambda: engine.infer(feed), 2, iters))
                engine.close()
                print(f"{arch:34s} {precision:5s} {o50:8.1f}ms {o99:8.1f}ms {e50:9.1f}ms {e99:9.1f}ms "
                      f"{e50 / o50:5.2f}x  {iters}", flush=True)
            del model, graph
    print("ratio = PyTorch eager FP32 p50 / ONNX Runtime p50 (same graph, same input); INT8 calibrated on "
          f"{CALIBRATION_FRAMES} procedural frames (latency only, not accuracy)")


if __name__ == "__main__":
    main()
