"""ONNX Runtime backend: CPU by default (threads configurable), CUDA provider where installed.

``device: cuda`` needs the ``onnxruntime-gpu`` package (``pip install segfuse[gpu]``, after
removing the CPU ``onnxruntime``: both install the same ``onnxruntime`` module and the CPU one
wins). ONNX Runtime silently falls back to the CPU when the CUDA provider cannot start (no
driver, wrong CUDA/cuDNN), so after creating the session the providers it actually runs on
(``session.get_providers()``) are checked: asking for CUDA and getting the CPU is an error
naming the config and the model, never a silent slow run.

Precision is a property of the ONNX file here: an FP32 export, a Q/DQ INT8 model from
``segfuse engines quantize`` (ONNX Runtime runs it with its integer kernels on the CPU),
or an AutoCast FP16 model.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine
from engines.contracts import META_PRECISION, guess_kind, read_onnx_io
from pipeline.errors import EngineError

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")


def onnx_precision(path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """fp32, fp16 or int8: from segfuse metadata, else from the graph (Q/DQ nodes, FP16 casts)."""
    if metadata and metadata.get(META_PRECISION) in ("fp32", "fp16", "int8"):
        return metadata[META_PRECISION]
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


def check_session_providers(session_providers: list[str], device: str, *, model: str | Path,
                            config_path: str | Path | None = None) -> None:
    """Raise EngineError if a session asked to run on ``device`` runs elsewhere (ONNX Runtime
    drops an unusable CUDA provider with a log line and carries on with the CPU)."""
    import onnxruntime as ort

    if device != "cuda" or "CUDAExecutionProvider" in session_providers:
        return
    available = ort.get_available_providers()
    why = ("this onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu (pip install 'segfuse[gpu]', "
           "after pip uninstall onnxruntime)" if "CUDAExecutionProvider" not in available else
           "the CUDA provider is installed but did not start (driver, CUDA or cuDNN version; see ONNX Runtime's log)")
    where = f"engine config {config_path}, model {model}" if config_path else f"model {model}"
    raise EngineError(f"device: cuda asked for ({where}), but the session runs on {', '.join(session_providers)}; "
                      f"{why}; or set device: cpu (available providers: {', '.join(available)})",
                      path=config_path or model, field="device")


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, *, kind: str | None = None, device: str = "cpu", threads: int = 0,
                 inter_op_threads: int = 0, device_id: int = 0, optimization: str = "all",
                 config_path: str | Path | None = None):
        import onnxruntime as ort

        path = Path(path)
        io = read_onnx_io(path)
        kind = kind or guess_kind(io.outputs, io.metadata)
        if kind is None:
            raise EngineError("cannot tell the model kind (no segfuse.kind metadata and outputs match no contract); "
                              "set kind: deeplab or maskrcnn", path=path, field="kind")
        if device not in DEVICES:
            raise EngineError(f"device must be one of {', '.join(DEVICES)}, got {device!r}", path=path, field="device")
        if device == "cuda":
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": int(device_id)}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        if inter_op_threads:
            opts.inter_op_num_threads = int(inter_op_threads)
        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        opts.graph_optimization_level = levels.get(optimization, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        opts.log_severity_level = 3
        t0 = time.perf_counter()
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:
            raise EngineError(f"onnxruntime cannot load the model: {exc}", path=path) from exc
        check_session_providers(self.session.get_providers(), device, model=path, config_path=config_path)
        self.load_seconds = time.perf_counter() - t0
        self.device = device
        self.threads = threads
        super().__init__(path, kind, io.inputs, io.outputs, io.metadata, onnx_precision(path, io.metadata))
        log.debug("loaded %s on %s in %.2f s", path, self.session.get_providers(), self.load_seconds)

    def infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = self.check_batch(batch)
        try:
            values = self.session.run(self.output_names, feed)
        except Exception as exc:
            raise EngineError(f"onnxruntime failed to run: {exc}", path=self.path) from exc
        return dict(zip(self.output_names, values))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(device=self.device, providers=self.session.get_providers() if self.session else [],
                 threads=self.threads or "auto")
        return d

    def close(self) -> None:
        self.session = None
