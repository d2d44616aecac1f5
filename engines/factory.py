"""Engine configs and the one factory that turns them into engines.

YAML (configs/engines/*.yaml, section ``engine`` or the whole file)::

    engine:
      model: models/deeplab.onnx       # ONNX (either backend) or a TensorRT .engine/.plan
      kind: deeplab                    # optional when the ONNX carries segfuse metadata
      backend: onnxruntime             # onnxruntime | tensorrt
      precision: fp32                  # fp32 | fp16 | int8 (TensorRT builds; for ONNX Runtime it
                                       #   must match the file: int8 = a Q/DQ model)
      device: cpu                      # onnxruntime: cpu | cuda
      threads: 0                       # onnxruntime intra-op threads, 0 = all cores
      # tensorrt only
      cache_dir: ~/.cache/segfuse/engines
      workspace_mb: 2048
      dla_core: null                   # Orin: 0 or 1, with GPU fallback
      cuda_graph: false
      device_id: 0
      max_batch: 1                     # DeepLab with a dynamic batch: profile max
      calibration: null                # a drive or image folder: legacy INT8 calibration, and the
                                       #   frames FP16 AutoCast judges ranges on (>= 10.12 FP16 builds)
      fallback: none                   # none | onnxruntime: without TensorRT (or CUDA for it), run the
                                       #   ONNX on ONNX Runtime's CUDA provider instead, with a warning
      # postprocess
      score_threshold: 0.5
      mask_threshold: 0.5
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.base import Engine
from pipeline.config import get_key, load_yaml, setting
from pipeline.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
KINDS = ("deeplab", "maskrcnn")
DEVICES = ("cpu", "cuda")
FALLBACKS = ("none", "onnxruntime")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass
class EngineConfig:
    """An engine: ``engines.<kind>`` of a run config, or a YAML file of its own (configs/engines/)."""

    model: Path = setting(doc="the model: an ONNX file (either backend) or a TensorRT .engine/.plan")
    kind: str | None = setting(None, choices=KINDS, doc="deeplab or maskrcnn; null: read from the ONNX's "
                               "segfuse metadata (the run config sets it from the section's name)")
    backend: str = setting("onnxruntime", choices=BACKENDS, doc="the inference runtime")
    precision: str = setting("fp32", choices=PRECISIONS, doc="TensorRT: the precision to build; ONNX Runtime: must "
                             "match the file (int8 = a Q/DQ model)")
    device: str = setting("cpu", choices=DEVICES, doc="ONNX Runtime: the execution provider (cuda is checked to be "
                          "the one the session really uses)")
    threads: int = setting(0, min=0, doc="ONNX Runtime intra-op threads (0: all cores)")
    inter_op_threads: int = setting(0, min=0, doc="ONNX Runtime inter-op threads (0: its default)")
    cache_dir: Path | None = setting(None, doc="TensorRT: where built engines are cached (null: "
                                     "~/.cache/segfuse/engines)")
    workspace_mb: int = setting(2048, unit="MiB", min=1, doc="TensorRT: builder workspace limit")
    dla_core: int | None = setting(None, min=0, doc="TensorRT on Jetson: the DLA core (GPU fallback); needs "
                                   "backend: tensorrt")
    cuda_graph: bool = setting(False, doc="TensorRT: capture inference in a CUDA graph and replay it")
    device_id: int = setting(0, min=0, doc="CUDA device index (either backend on a GPU)")
    max_batch: int = setting(1, min=1, doc="TensorRT, DeepLab with a dynamic batch: the profile's largest batch")
    calibration: Path | None = setting(None, doc="TensorRT: a drive or image folder of real frames: implicit INT8 "
                                       "builds (< 10.12) calibrate on it, FP16 builds on >= 10.12 run AutoCast on "
                                       "it (required there)")
    calibration_frames: int = setting(500, min=1, doc="TensorRT: frames read for implicit INT8 calibration (AutoCast "
                                      "uses at most 8 of them)")
    fallback: str = setting("none", choices=FALLBACKS, doc="TensorRT: onnxruntime = where TensorRT or a CUDA device "
                            "is not usable, run the ONNX as it is on ONNX Runtime's CUDA provider, with a warning "
                            "(never the CPU)")
    score_threshold: float = setting(0.5, min=0, max=1, doc="Mask R-CNN only: detections below this score are "
                                     "dropped")
    mask_threshold: float = setting(0.5, min=0, max=1, doc="Mask R-CNN only: mask probability above which a pixel "
                                    "belongs to the instance")
    source: Path | None = field(default=None, compare=False)   # the YAML it came from (error messages), not a key

    def check(self, *, path: str | Path | None = None, prefix: str = "") -> None:
        if self.backend == "onnxruntime" and Path(self.model).suffix in ENGINE_SUFFIXES:
            raise ConfigError("a TensorRT engine file needs backend: tensorrt", path=path, field=prefix + "model")
        if self.dla_core is not None and self.backend != "tensorrt":
            raise ConfigError("dla_core needs backend: tensorrt", path=path, field=prefix + "dla_core")
        if self.fallback != "none" and self.backend != "tensorrt":
            raise ConfigError("fallback applies to backend: tensorrt only", path=path, field=prefix + "fallback")
        if self.device_id and self.backend == "onnxruntime" and self.device == "cpu":
            raise ConfigError("device_id picks a GPU: it needs device: cuda or backend: tensorrt", path=path,
                              field=prefix + "device_id")

    def validate(self, path: str | Path | None = None) -> "EngineConfig":
        """Re-check values set in code (the YAML path checks them while parsing)."""
        from pipeline.config import _check_bounds, schema_fields

        for f in schema_fields(EngineConfig):
            v = getattr(self, f.name)
            if v is not None:
                _check_bounds(v, dict(f.metadata), path=path, name=f.name, error=ConfigError)
        self.check(path=path)
        return self


MASKRCNN_ONLY = ("score_threshold", "mask_threshold")


def engine_config_from_dict(data: dict[str, Any], *, path: str | Path | None = None,
                            base_dir: Path | None = None, prefix: str = "") -> EngineConfig:
    from pipeline.config import parse_section

    where = path if path is not None else "<engine config>"
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {type(data).__name__}", path=where, field=prefix.rstrip(".") or None)
    if "model" not in data:
        raise ConfigError("required key is missing", path=where, field=prefix + "model")
    if data.get("kind") == "deeplab":
        for key in MASKRCNN_ONLY:
            if key in data:
                raise ConfigError("only Mask R-CNN engines have this key (DeepLab gives class ids, no scores)",
                                  path=where, field=prefix + key)
    cfg = parse_section(EngineConfig, data, path=where, prefix=prefix)
    cfg.source = Path(path) if path is not None else None
    for key in ("model", "cache_dir", "calibration"):
        p = getattr(cfg, key)
        if p is not None and not p.is_absolute() and base_dir is not None:
            setattr(cfg, key, (base_dir / p).resolve())
    return cfg


def load_engine_config(path: str | Path) -> EngineConfig:
    data = load_yaml(path)
    if "engine" in data:
        data = get_key(data, "engine", dict, path=path)
    return engine_config_from_dict(data, path=path, base_dir=Path(path).parent)


def default_cache_dir() -> Path:
    return Path("~/.cache/segfuse/engines").expanduser()


def create_engine(config: EngineConfig | dict[str, Any] | str | Path) -> Engine:
    """The factory: an EngineConfig (or a dict of its fields, or a YAML path) -> a ready Engine."""
    if isinstance(config, (str, Path)):
        config = load_engine_config(config)
    elif isinstance(config, dict):
        config = engine_config_from_dict(config)
    config.validate()
    model = Path(config.model)
    if not model.is_file():
        raise EngineError("model file not found", path=model, field="model")
    if config.backend == "onnxruntime":
        from engines.onnxruntime_backend import OnnxRuntimeEngine

        engine = OnnxRuntimeEngine(model, kind=config.kind, device=config.device, threads=config.threads,
                                   inter_op_threads=config.inter_op_threads, device_id=config.device_id,
                                   config_path=config.source)
        if config.precision != engine.precision:
            raise EngineError(f"precision {config.precision} asked for, but this ONNX is {engine.precision} "
                              "(ONNX Runtime runs the file as it is: quantize or AutoCast it first)",
                              path=model, field="precision")
        return engine
    from engines import tensorrt_backend as trt_backend   # lazy: imports nothing heavy at module level

    if config.fallback == "onnxruntime":
        why = trt_backend.unavailable_reason(config.device_id)
        if why is not None:
            if model.suffix != ".onnx":
                raise EngineError(f"TensorRT is not usable here ({why}) and a TensorRT engine file cannot run on "
                                  "ONNX Runtime", path=config.source or model, field="fallback")
            from engines.onnxruntime_backend import OnnxRuntimeEngine

            log.warning("%s: TensorRT is not usable here (%s): falling back to ONNX Runtime CUDA with the ONNX as "
                        "it is (%s), as fallback: onnxruntime asks", config.source or model, why, model.name)
            return OnnxRuntimeEngine(model, kind=config.kind, device="cuda", threads=config.threads,
                                     inter_op_threads=config.inter_op_threads, device_id=config.device_id,
                                     config_path=config.source)
    return trt_backend.engine_from_config(config)


def config_fields() -> list[str]:
    from pipeline.config import schema_fields

    return [f.name for f in schema_fields(EngineConfig)]
