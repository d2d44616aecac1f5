"""`segfuse engines check A B --frames N`: two backends or precisions on the same frames,
judged at the task level with the tolerance of the lower precision (engines/agreement.py),
like ``polygraphy run --trt --onnxrt`` but on segmentation and instance metrics.

A and B are ``[BACKEND[/PRECISION]:]PATH``: ``model.onnx`` (ONNX Runtime, precision of the
file), ``onnxruntime:model.int8.onnx``, ``tensorrt/fp16:model.onnx``, ``tensorrt:model.engine``,
or an engine config YAML.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from engines.agreement import (Agreement, DeepLabAccumulator, MaskRCNNAccumulator, Tolerance, judge,
                               max_abs_diff, tolerance_for)
from engines.base import Engine
from engines.factory import BACKENDS, PRECISIONS, EngineConfig, create_engine
from pipeline.errors import ConfigError, EngineError

log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    backend: str
    precision: str | None
    path: Path
    config: Path | None = None

    def label(self) -> str:
        if self.config:
            return str(self.config)
        return f"{self.backend}{'/' + self.precision if self.precision else ''}:{self.path}"


def parse_run_spec(text: str) -> RunSpec:
    """'[backend[/precision]:]path' or a YAML engine config."""
    if text.endswith((".yaml", ".yml")):
        return RunSpec("config", None, Path(text), Path(text))
    head, sep, rest = text.partition(":")
    if sep and head.split("/")[0] in BACKENDS:
        backend, _, precision = head.partition("/")
        if precision and precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", field=text)
        return RunSpec(backend, precision or None, Path(rest))
    path = Path(text)
    backend = "tensorrt" if path.suffix in (".engine", ".plan", ".trt") else "onnxruntime"
    return RunSpec(backend, None, path)


def open_run(spec: RunSpec, *, threads: int = 0, cache_dir: Path | None = None) -> Engine:
    if spec.config is not None:
        return create_engine(spec.config)
    if spec.backend == "onnxruntime":
        from engines.onnxruntime_backend import OnnxRuntimeEngine

        engine = OnnxRuntimeEngine(spec.path, threads=threads)
        if spec.precision and spec.precision != engine.precision:
            raise EngineError(f"{spec.precision} asked for, but this ONNX is {engine.precision}", path=spec.path,
                              field="precision")
        return engine
    return create_engine(EngineConfig(model=spec.path, backend="tensorrt", precision=spec.precision or "fp32",
                                      cache_dir=cache_dir))


def compare_engines(a: Engine, b: Engine, frames: Sequence[np.ndarray], *, tolerance: Tolerance | None = None,
                    precision_a: str | None = None, precision_b: str | None = None,
                    score_threshold: float = 0.5) -> Agreement:
    """Run both engines on ``frames`` (BGR uint8) and judge their agreement."""
    from tqdm import tqdm

    from pipeline.preprocess import preprocess_frames

    if a.kind != b.kind:
        raise EngineError(f"cannot compare a {a.kind} model with a {b.kind} model", path=b.path, field="kind")
    if a.input_hw != b.input_hw:
        raise EngineError(f"input sizes differ: {a.input_hw} vs {b.input_hw}", path=b.path, field="inputs.images")
    worst, tol = tolerance_for(precision_a or a.precision, precision_b or b.precision)
    tol = tolerance or tol
    acc = DeepLabAccumulator() if a.kind == "deeplab" else MaskRCNNAccumulator(a.input_hw, score_threshold)
    diffs: dict[str, float] = {}
    for frame in tqdm(frames, desc="comparing", unit="frame", leave=False):
        feed = preprocess_frames([frame], a.input_hw).feed()
        out_a, out_b = a.infer(feed), b.infer(feed)
        if a.kind == "deeplab":
            acc.add(out_a["class_ids"], out_b["class_ids"])
            for k, v in max_abs_diff(out_a, out_b, ["scores"]).items():
                diffs[k] = max(diffs.get(k, 0.0), v)
        else:
            acc.add(out_a, out_b)
    metrics = acc.result()
    metrics.update({f"max_diff_{k}": v for k, v in diffs.items()})
    result = Agreement(a.kind, len(frames), metrics, judge(a.kind, metrics, tol))
    result.metrics["tolerance_precision"] = float(["fp32", "fp16", "int8"].index(worst))
    return result


def format_agreement(result: Agreement, label_a: str, label_b: str, tolerance_name: str) -> list[str]:
    m = result.metrics
    lines = [f"A: {label_a}", f"B: {label_b}", f"{result.frames} frames, {result.kind}, {tolerance_name} tolerances"]
    if result.kind == "deeplab":
        lines.append(f"  pixel agreement {m['pixel_agreement']:.5f}   mIoU(B vs A) {m['miou']:.4f}"
                     + (f"   max |score diff| {m['max_diff_scores']:.2e}" if "max_diff_scores" in m else ""))
    else:
        lines.append(f"  detections A {int(m['detections_a'])}  B {int(m['detections_b'])}   matched "
                     f"{m['matched']:.3f}   mean mask IoU {m['mask_iou']:.4f}   max |score diff| "
                     f"{m['score_diff']:.2e}   max |box diff| {m['box_diff']:.2f} px")
    lines.append("PASSED" if result.passed else "FAILED: " + "; ".join(result.failures))
    return lines
