"""The ONNX I/O contracts every engine honours, and the check that enforces them.

One contract per model kind. The pipeline relies on these names, shapes and dtypes;
a user's own ONNX (or a TensorRT engine built from one) must match them, and is
checked when it is loaded, with an error that names the file and the tensor.

DeepLab (``kind: deeplab``), contract version 1
    input   ``images``     float32 [B, 3, H, W]  RGB, 0..255 (normalisation is inside the graph);
                                                 H and W static, B static or dynamic
    output  ``class_ids``  int32   [B, H, W]     taxonomy class ids (argmax and class map in the graph)
    output  ``scores``     float32 [B, H, W]     optional: softmax probability of the chosen class

Mask R-CNN (``kind: maskrcnn``), contract version 1
    input   ``images``     float32 [1, 3, H, W]  RGB, 0..255, every dimension static
    output  ``boxes``      float32 [K, 4]        x1, y1, x2, y2 in input pixels
    output  ``scores``     float32 [K]           detections sorted by score; padding has score 0
    output  ``labels``     int32   [K]           taxonomy class ids (ignore id 255 on padding rows)
    output  ``masks``      float32 [K, M, M]     mask probabilities in the box (torchvision: M = 28),
                                                 not pasted: the postprocess pastes them
    K (the fixed number of detections) and M are static, so TensorRT sees static shapes.

Leaf module: numpy and pipeline.errors only (onnx is imported inside ``read_onnx_io``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline.errors import EngineError

CONTRACT_VERSION = 1
KINDS = ("deeplab", "maskrcnn")
INPUT_NAME = "images"
DEEPLAB_OUTPUTS = ("class_ids", "scores")
MASKRCNN_OUTPUTS = ("boxes", "scores", "labels", "masks")

# ONNX metadata_props keys written by `segfuse engines export` and read back by
# `engines info`, the factory and the pipeline.
META_PREFIX = "segfuse."
META_CONTRACT = "segfuse.contract"          # "1"
META_KIND = "segfuse.kind"                  # deeplab | maskrcnn
META_ARCH = "segfuse.arch"                  # torchvision builder name
META_INPUT_SIZE = "segfuse.input_size"      # "HxW"
META_TAXONOMY = "segfuse.taxonomy"          # JSON list of taxonomy class names (index = id)
META_CLASS_MAP = "segfuse.class_map"        # JSON {model label: taxonomy name}
META_NUM_DETECTIONS = "segfuse.num_detections"
META_PRECISION = "segfuse.precision"        # fp32 | fp16 | int8
META_SOURCE = "segfuse.source"              # checkpoint file name and sha256, or "random init"


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a dynamic dimension) and numpy dtype name of one I/O tensor."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


@dataclass(frozen=True)
class ContractInfo:
    """What the contract check learnt about a model: kind, input size and its outputs."""

    kind: str
    input_hw: tuple[int, int]
    batch: int | None                      # None: dynamic batch (DeepLab only)
    outputs: tuple[str, ...]
    num_detections: int | None = None      # K, Mask R-CNN only
    mask_size: int | None = None           # M, Mask R-CNN only


def _fail(message: str, path: str | Path | None, field_name: str) -> EngineError:
    return EngineError(f"{message} (I/O contract v{CONTRACT_VERSION}, see docs/engines.md)",
                       path=path, field=field_name)


def _by_name(specs: Sequence[TensorSpec]) -> dict[str, TensorSpec]:
    return {s.name: s for s in specs}


def _expect(spec: TensorSpec, *, rank: int, dtype: str, path: Any, where: str) -> None:
    if len(spec.shape) != rank:
        raise _fail(f"expected rank {rank}, got shape {spec.describe()}", path, f"{where}.{spec.name}.shape")
    if spec.dtype != dtype:
        hint = " (cast it in the graph: TensorRT has no int64 I/O before 10)" if dtype == "int32" else ""
        raise _fail(f"expected dtype {dtype}, got {spec.dtype}{hint}", path, f"{where}.{spec.name}.dtype")


def _static(dim: int | None, path: Any, field_name: str, what: str) -> int:
    if dim is None or dim <= 0:
        raise _fail(f"{what} must be static, got a dynamic dimension", path, field_name)
    return int(dim)


def check_contract(kind: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *,
                   path: str | Path | None = None) -> ContractInfo:
    """Check a model's I/O against the contract of ``kind``; raise EngineError naming the tensor."""
    if kind not in KINDS:
        raise EngineError(f"unknown model kind '{kind}' (known: {', '.join(KINDS)})", path=path, field="kind")
    ins = _by_name(inputs)
    if list(ins) != [INPUT_NAME]:
        raise _fail(f"expected exactly one input named '{INPUT_NAME}', got "
                    f"{', '.join(s.describe() for s in inputs) or 'none'}", path, "inputs")
    img = ins[INPUT_NAME]
    _expect(img, rank=4, dtype="float32", path=path, where="inputs")
    if img.shape[1] != 3:
        raise _fail(f"expected 3 channels (RGB) in dimension 1, got {img.describe()}", path, "inputs.images.shape")
    h = _static(img.shape[2], path, "inputs.images.shape", "input height")
    w = _static(img.shape[3], path, "inputs.images.shape", "input width")
    batch = img.shape[0] if img.shape[0] and img.shape[0] > 0 else None
    outs = _by_name(outputs)

    if kind == "deeplab":
        unknown = [n for n in outs if n not in DEEPLAB_OUTPUTS]
        if unknown:
            raise _fail(f"unexpected output '{unknown[0]}' (DeepLab outputs: class_ids and optionally scores)",
                        path, f"outputs.{unknown[0]}")
        if "class_ids" not in outs:
            raise _fail("missing output 'class_ids' (int32 [B,H,W], argmax inside the graph); got "
                        f"{', '.join(s.describe() for s in outputs) or 'none'}", path, "outputs.class_ids")
        for name, dtype in (("class_ids", "int32"), ("scores", "float32")):
            if name not in outs:
                continue
            spec = outs[name]
            _expect(spec, rank=3, dtype=dtype, path=path, where="outputs")
            if tuple(spec.shape[1:]) != (h, w):
                raise _fail(f"expected [B,{h},{w}] (the input's H and W), got {spec.describe()}",
                            path, f"outputs.{name}.shape")
            if batch is not None and spec.shape[0] not in (batch, None):
                raise _fail(f"batch dimension {spec.shape[0]} differs from the input's {batch}",
                            path, f"outputs.{name}.shape")
        return ContractInfo("deeplab", (h, w), batch, tuple(n for n in DEEPLAB_OUTPUTS if n in outs))

    # Mask R-CNN
    if batch != 1:
        raise _fail(f"Mask R-CNN takes one static image: expected [1,3,H,W], got {img.describe()}",
                    path, "inputs.images.shape")
    for name in MASKRCNN_OUTPUTS:
        if name not in outs:
            raise _fail(f"missing output '{name}'; got {', '.join(s.describe() for s in outputs) or 'none'}",
                        path, f"outputs.{name}")
    unknown = [n for n in outs if n not in MASKRCNN_OUTPUTS]
    if unknown:
        raise _fail(f"unexpected output '{unknown[0]}' (Mask R-CNN outputs: {', '.join(MASKRCNN_OUTPUTS)})",
                    path, f"outputs.{unknown[0]}")
    _expect(outs["boxes"], rank=2, dtype="float32", path=path, where="outputs")
    _expect(outs["scores"], rank=1, dtype="float32", path=path, where="outputs")
    _expect(outs["labels"], rank=1, dtype="int32", path=path, where="outputs")
    _expect(outs["masks"], rank=3, dtype="float32", path=path, where="outputs")
    k = _static(outs["boxes"].shape[0], path, "outputs.boxes.shape",
                "the number of detections K (pad to a fixed K, as TensorRT needs static shapes)")
    if outs["boxes"].shape[1] != 4:
        raise _fail(f"expected [K,4], got {outs['boxes'].describe()}", path, "outputs.boxes.shape")
    for name in ("scores", "labels", "masks"):
        if outs[name].shape[0] != k:
            raise _fail(f"expected K={k} rows like 'boxes', got {outs[name].describe()}", path, f"outputs.{name}.shape")
    m = _static(outs["masks"].shape[1], path, "outputs.masks.shape", "the mask size M")
    if outs["masks"].shape[2] != m:
        raise _fail(f"masks must be square [K,M,M], got {outs['masks'].describe()}", path, "outputs.masks.shape")
    return ContractInfo("maskrcnn", (h, w), 1, MASKRCNN_OUTPUTS, num_detections=k, mask_size=m)


def guess_kind(outputs: Sequence[TensorSpec], metadata: dict[str, str] | None = None) -> str | None:
    """The model kind from metadata, else from the output names; None when neither says."""
    if metadata and metadata.get(META_KIND) in KINDS:
        return metadata[META_KIND]
    names = {s.name for s in outputs}
    if "class_ids" in names:
        return "deeplab"
    if {"boxes", "masks"} <= names:
        return "maskrcnn"
    return None


@dataclass
class OnnxIO:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict[str, str] = field(default_factory=dict)
    opset: int | None = None


def read_onnx_io(path: str | Path) -> OnnxIO:
    """I/O tensors, metadata_props and opset of an ONNX file (weights are not loaded)."""
    import onnx
    from onnx import helper

    path = Path(path)
    if not path.is_file():
        raise EngineError("ONNX file not found", path=path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise EngineError(f"not a readable ONNX model: {exc}", path=path) from exc
    initializers = {i.name for i in model.graph.initializer}

    def spec(value_info) -> TensorSpec:
        tt = value_info.type.tensor_type
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in tt.shape.dim)
        try:
            dtype = str(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except Exception:
            dtype = f"onnx-type-{tt.elem_type}"
        return TensorSpec(value_info.name, dims, dtype)

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return OnnxIO([spec(v) for v in model.graph.input if v.name not in initializers],
                  [spec(v) for v in model.graph.output],
                  {p.key: p.value for p in model.metadata_props}, opset)


def decode_class_map(metadata: dict[str, str]) -> dict[int, str]:
    raw = metadata.get(META_CLASS_MAP)
    if not raw:
        return {}
    return {int(k): str(v) for k, v in json.loads(raw).items()}
