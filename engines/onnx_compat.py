"""ONNX graphs the older TensorRT ONNX parsers read correctly.

Model Optimizer's PTQ raises the graph to opset 19. From opset 18 the Reduce* operators take
their ``axes`` as a second *input* instead of an attribute. The onnx-tensorrt parsers of
TensorRT 8.5 and 8.6 (JetPack 5) read the attribute only: they ignore the input and reduce
over every dimension, so DeepLab's ``scores`` (a ReduceMax over the class axis) becomes a
scalar and the engine fails its I/O contract.

``lower_opset`` rewrites such a graph to opset 17 (what those parsers were written for and
what every later TensorRT reads too): each Reduce* with a constant ``axes`` input gets the
attribute form, and the few opset-18/19 features with an older spelling are rewritten
(Split's ``num_outputs``); anything that has no opset-17 form (float8, FP16 Q/DQ scales,
a non-constant ``axes``) is refused with the node named. The result is checked by the ONNX
checker; tests run it beside the original on ONNX Runtime.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import EngineError

TARGET_OPSET = 17
REDUCE_OPS = ("ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
              "ReduceLogSumExp", "ReduceSumSquare")        # ReduceSum took axes as an input from 13 already
_NEW_ATTRS = {"Cast": {"saturate": 1}, "QuantizeLinear": {"saturate": 1},
              "Resize": {"antialias": 0, "keep_aspect_ratio_policy": "stretch"},
              "Col2Im": {}, "Pad": {}}


def default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def reduce_nodes_with_axes_input(model) -> list[str]:
    """Names of the Reduce* nodes that pass ``axes`` as an input (opset >= 18): the ones the
    8.5/8.6 parsers misread."""
    if default_opset(model) < 18:
        return []
    return [n.name or n.output[0] for n in model.graph.node
            if n.domain in ("", "ai.onnx") and n.op_type in REDUCE_OPS and len(n.input) > 1 and n.input[1]]


def _constants(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute:
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def lower_opset(model, target: int = TARGET_OPSET, *, where: str | Path | None = None):
    """Return a copy of ``model`` at opset ``target`` (17) with Reduce* axes as attributes.
    A model already at or below ``target`` is returned unchanged (copied)."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    current = default_opset(model)
    if current <= target:
        return model
    consts = _constants(model)
    used_inputs: set[str] = set()
    float8 = {getattr(onnx.TensorProto, t) for t in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ")
              if hasattr(onnx.TensorProto, t)}
    for init in model.graph.initializer:
        if init.data_type in float8:
            raise EngineError(f"initializer {init.name} is float8: no opset-{target} form", path=where,
                              field="opset")
    for node in model.graph.node:
        name = node.name or node.output[0]
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 1:
            scale = consts.get(node.input[1])
            if scale is not None and scale.dtype != np.float32:
                raise EngineError(f"node {name}: {scale.dtype} Q/DQ scales need opset 19 (quantize with "
                                  "--high-precision fp32 for TensorRT < 10)", path=where, field="opset")
        if node.op_type in REDUCE_OPS and len(node.input) > 1:
            axes_name = node.input[1]
            if axes_name:
                if axes_name not in consts:
                    raise EngineError(f"node {name}: {node.op_type} axes are computed in the graph, not constant; "
                                      f"no opset-{target} form", path=where, field="opset")
                axes = [int(a) for a in np.asarray(consts[axes_name]).reshape(-1)]
                node.attribute.append(helper.make_attribute("axes", axes))
            del node.input[1:]
            noop = [a for a in node.attribute if a.name == "noop_with_empty_axes"]
            if noop and noop[0].i and not axes_name:
                raise EngineError(f"node {name}: noop_with_empty_axes has no opset-{target} form", path=where,
                                  field="opset")
            for a in noop:
                node.attribute.remove(a)
        elif node.op_type == "Split":
            num = [a for a in node.attribute if a.name == "num_outputs"]
            if num:
                raise EngineError(f"node {name}: Split with num_outputs (opset 18) is not rewritten",
                                  path=where, field="opset")
        for attr, default in _NEW_ATTRS.get(node.op_type, {}).items():
            for a in [a for a in node.attribute if a.name == attr]:
                value = helper.get_attribute_value(a)
                value = value.decode() if isinstance(value, bytes) else value
                if value != default:
                    raise EngineError(f"node {name}: {attr}={value} has no opset-{target} form", path=where,
                                      field="opset")
                node.attribute.remove(a)
        used_inputs.update(node.input)
    # axes constants that nothing reads any more
    outputs = {o.name for o in model.graph.output}
    dead = [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used_inputs
            and n.output[0] not in outputs]
    for n in dead:
        model.graph.node.remove(n)
    keep = [i for i in model.graph.initializer if i.name in used_inputs or
            any(o.name == i.name for o in model.graph.output)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = target
    if model.ir_version > 8:
        model.ir_version = 8          # IR 8 is what opset 17 shipped with (onnx 1.12)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise EngineError(f"the opset-{target} rewrite is not a valid ONNX: {exc}", path=where,
                          field="opset") from exc
    return model


def lower_opset_file(src: str | Path, dst: str | Path, target: int = TARGET_OPSET) -> Path:
    """``lower_opset`` from file to file, written atomically."""
    import onnx

    from engines.engine_cache import atomic_write_bytes

    model = onnx.load(str(src))
    lowered = lower_opset(model, target, where=src)
    atomic_write_bytes(dst, lowered.SerializeToString())
    return Path(dst)
