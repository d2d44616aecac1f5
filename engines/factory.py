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
      calibration: null                # legacy INT8 builds: a drive or image folder
      # postprocess
      score_threshold: 0.5
      mask_threshold: 0.5
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engines.base import Engine
from pipeline.config import check_unknown_keys, get_key, load_yaml
from pipeline.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass
class EngineConfig:
    model: Path
    kind: str | None = None
    backend: str = "onnxruntime"
    precision: str = "fp32"
    device: str = "cpu"
    threads: int = 0
    inter_op_threads: int = 0
    cache_dir: Path | None = None
    workspace_mb: int = 2048
    dla_core: int | None = None
    cuda_graph: bool = False
    device_id: int = 0
    max_batch: int = 1
    calibration: Path | None = None
    calibration_frames: int = 500
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str | Path | None = None) -> "EngineConfig":
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}", path=path,
                              field="backend")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
                              path=path, field="precision")
        if self.kind is not None and self.kind not in ("deeplab", "maskrcnn"):
            raise ConfigError(f"kind must be deeplab or maskrcnn, got {self.kind!r}", path=path, field="kind")
        if self.backend == "onnxruntime" and Path(self.model).suffix in ENGINE_SUFFIXES:
            raise ConfigError("a TensorRT engine file needs backend: tensorrt", path=path, field="model")
        if self.dla_core is not None and self.backend != "tensorrt":
            raise ConfigError("dla_core needs backend: tensorrt", path=path, field="dla_core")
        for name in ("score_threshold", "mask_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError("must be within 0..1", path=path, field=name)
        if self.threads < 0 or self.max_batch < 1 or self.workspace_mb < 1:
            raise ConfigError("threads >= 0, max_batch >= 1 and workspace_mb >= 1", path=path, field="threads")
        return self


_TYPES: dict[str, Any] = {"model": str, "kind": str, "backend": str, "precision": str, "device": str, "threads": int,
                          "inter_op_threads": int, "cache_dir": str, "workspace_mb": int, "dla_core": int,
                          "cuda_graph": bool, "device_id": int, "max_batch": int, "calibration": str,
                          "calibration_frames": int, "score_threshold": float, "mask_threshold": float}


def engine_config_from_dict(data: dict[str, Any], *, path: str | Path | None = None,
                            base_dir: Path | None = None) -> EngineConfig:
    where = path if path is not None else "<engine config>"
    check_unknown_keys(data, set(_TYPES), path=where)
    values: dict[str, Any] = {}
    for key, kind in _TYPES.items():
        if key in data and data[key] is not None:
            values[key] = get_key(data, key, kind, path=where)
    if "model" not in values:
        raise ConfigError("required key is missing", path=where, field="model")
    for key in ("model", "cache_dir", "calibration"):
        if key in values:
            p = Path(values[key]).expanduser()
            if not p.is_absolute() and base_dir is not None:
                p = (base_dir / p).resolve()
            values[key] = p
    return EngineConfig(**values).validate(where)


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
                                   inter_op_threads=config.inter_op_threads, device_id=config.device_id)
        if config.precision != engine.precision:
            raise EngineError(f"precision {config.precision} asked for, but this ONNX is {engine.precision} "
                              "(ONNX Runtime runs the file as it is: quantize or AutoCast it first)",
                              path=model, field="precision")
        return engine
    from engines import tensorrt_backend as trt_backend   # lazy: imports nothing heavy at module level

    return trt_backend.engine_from_config(config)


def config_fields() -> list[str]:
    return [f.name for f in fields(EngineConfig)]
