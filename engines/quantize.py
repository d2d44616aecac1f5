"""`segfuse engines quantize`: INT8 post-training quantization to a Q/DQ ONNX, and FP16 AutoCast.

INT8 uses NVIDIA Model Optimizer's ONNX PTQ (``modelopt.onnx.quantization.quantize``)
with ONNX Runtime's CPU execution provider for calibration, so it runs on a machine
without a GPU. Calibration frames come from recorded drives (or image folders) and are
checked first (``engines.frames.check_calibration_frames``): at least 500 by default, and
noise, blank or repeated frames are refused (Model Optimizer falls back to *random* data
when given none; we never let it). Entropy or max calibration; the first convolution, the
classifier and the mask head can be kept in higher precision.

The result is an explicitly quantized ONNX: ONNX Runtime runs it on the CPU (integer
kernels), and TensorRT builds it into an INT8 engine (strongly typed from 10.12, with the
INT8 flag and no calibrator below).

FP16 uses Model Optimizer's AutoCast (``modelopt.onnx.autocast``), which keeps nodes whose
values would overflow FP16 in FP32: this is how the strongly typed TensorRT path gets an
FP16 network, and it also lets ONNX Runtime compare FP16 against FP32 on the CPU.
"""
from __future__ import annotations

import contextlib
from io import StringIO
import logging
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from engines import contracts as C
from engines.frames import DEFAULT_MIN_CALIBRATION_FRAMES, check_calibration_frames
from pipeline.errors import EngineError

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("entropy", "max")
# Layers of segfuse's own architectures (metadata segfuse.arch) that stay in higher precision by
# default, found by measuring on held-out drives (docs/models.md): quantizing the lite DeepLab's
# stride-4 block, whose output is the decoder's finest skip, cost 2.2 points of mIoU (poles -7,
# pedestrians -5); keeping it (three small convolutions at stride 4) costs 0.1. The stage-3
# model leans on its stride-2 refinement (lane paint): quantizing it cost 1.0 point on the
# validation drives (lane_marking -3.3), keeping it (three convolutions) 0.2.
ARCH_KEEP: dict[str, dict[str, list[str]]] = {
    "deeplabv3plus_mobilenet_v3_small": {"stride-4 block (fine skip)": [r"/model/backbone\.1/"],
                                         "stride-2 refinement": [r"/model/squeeze4/", r"/model/refine2/"]},
}
QUANTIZED_OPS = ["Conv", "ConvTranspose", "Gemm"]        # not MatMul: the static NMS counts overlaps with it


@dataclass
class QuantizeReport:
    path: str
    precision: str
    method: str
    frames: int
    kept_high_precision: list[str] = field(default_factory=list)
    qdq_nodes: int = 0
    quantized_ops: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return [f"quantized to {self.precision} -> {self.path}",
                f"  Model Optimizer ONNX PTQ, {self.method} calibration on {self.frames} frames, {self.seconds:.1f} s",
                f"  {self.quantized_ops} ops quantized ({self.qdq_nodes} Q/DQ nodes); kept in higher precision: "
                f"{', '.join(self.kept_high_precision) or 'none'}"]


def _import_modelopt_quantize():
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as exc:
        raise EngineError(f"NVIDIA Model Optimizer is not usable here ({exc}); install it with "
                          "pip install nvidia-modelopt onnxslim onnxscript lief onnx-graphsurgeon",
                          field="quantize") from exc
    return quantize


def higher_precision_nodes(model, kind: str | None, *, keep_first_conv: bool = True, keep_classifier: bool = True,
                           keep_mask_head: bool = True, keep_patterns: Sequence[str] = (),
                           arch_defaults: bool = True) -> dict[str, list[str]]:
    """Names of the nodes to leave unquantized, per reason. ``keep_patterns``: regular
    expressions searched in the node names (e.g. ``/model/(fuse4|refine2)``); one that
    matches no convolution is an error, so a typo does not silently quantize everything.
    ``arch_defaults``: also keep what ARCH_KEEP lists for the model's segfuse.arch."""
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")]
    out: dict[str, list[str]] = {}
    if not convs:
        return out
    if arch_defaults:
        arch = {p.key: p.value for p in model.metadata_props}.get(C.META_ARCH)
        for reason, patterns in ARCH_KEEP.get(arch, {}).items():
            names = [n.name for n in convs if any(re.search(pat, n.name) for pat in patterns)]
            if names:
                out[reason] = names
    for pattern in keep_patterns:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise EngineError(f"--keep {pattern!r} is not a regular expression: {exc}", field="keep") from None
        names = [n.name for n in convs if rx.search(n.name)]
        if not names:
            raise EngineError(f"--keep {pattern!r} matches no convolution of the model", field="keep")
        out[f"--keep {pattern}"] = names
    if keep_first_conv:
        out["first conv"] = [convs[0].name]
    if keep_classifier:
        if kind == "maskrcnn":
            names = [n.name for n in convs if re.search(r"box_predictor|rpn_head.*(cls_logits|bbox_pred)", n.name)]
        else:
            # torchvision's DeepLab head ends in classifier.4; segfuse's lite one in classifier and
            # refine2_logits (its stride-2 residual); otherwise the last convolution
            head = re.compile(r"/classifier\.4/|/(classifier|refine2_logits)/Conv$")
            names = [n.name for n in convs if head.search(n.name)] or [convs[-1].name]
        out["classifier"] = names
    if keep_mask_head and kind == "maskrcnn":
        out["mask head"] = [n.name for n in convs if re.search(r"mask_head|mask_predictor|mask", n.name)]
    return {k: v for k, v in out.items() if v}


class FrameReader:
    """An onnxruntime CalibrationDataReader over resized frames: one [1,3,H,W] batch at a time.
    ``on_read``: called once per batch handed out (a progress bar's ``update``)."""

    def __init__(self, frames_hwc: Sequence[np.ndarray], on_read=None):
        self.frames = frames_hwc
        self.i = 0
        self.on_read = on_read

    @staticmethod
    def _feed(image: np.ndarray) -> dict[str, np.ndarray]:
        return {"images": np.ascontiguousarray(image.transpose(2, 0, 1)[None, ::-1], dtype=np.float32)}

    def get_next(self):
        if self.i >= len(self.frames):
            return None
        self.i += 1
        if self.on_read is not None:
            self.on_read()
        return self._feed(self.frames[self.i - 1])

    def get_first(self):            # Model Optimizer's test run, without advancing
        return self._feed(self.frames[0])

    def rewind(self) -> None:
        self.i = 0

    def set_range(self, start_index: int, end_index: int) -> None:   # ORT's reader protocol
        self.i = start_index


def _resized(frames: Iterable[np.ndarray], input_hw: tuple[int, int],
             limit: int | None) -> tuple[list[np.ndarray], list[str | None]]:
    """Frames resized to the input size, and each original frame's noise verdict (judged before
    resizing: downscaling averages noise into something smoother)."""
    from tqdm import tqdm

    from engines.frames import frame_stats
    from pipeline.preprocess import check_image, resize_to_input

    out, verdicts = [], []
    for i, image in enumerate(tqdm(frames, desc="calibration frames", unit="frame", total=limit, leave=False)):
        check_image(image, where=f"calibration frame {i}")
        verdicts.append(frame_stats(image).verdict)
        out.append(resize_to_input(image, input_hw)[0])
        if limit is not None and len(out) >= limit:
            break
    return out, verdicts


def quantize_int8(onnx_path: str | Path, out_path: str | Path, frames: Iterable[np.ndarray], *,
                  method: str = "entropy", min_frames: int = DEFAULT_MIN_CALIBRATION_FRAMES,
                  max_frames: int | None = None, keep_first_conv: bool = True, keep_classifier: bool = True,
                  keep_mask_head: bool = True, keep_patterns: Sequence[str] = (), arch_defaults: bool = True,
                  high_precision: str = "fp32", source: str | Path | None = None,
                  calibration_eps: Sequence[str] = ("cpu",)) -> QuantizeReport:
    """Calibrate on ``frames`` (BGR uint8 camera images) and write a Q/DQ INT8 ONNX to ``out_path``."""
    import onnx
    from tqdm import tqdm

    if method not in CALIBRATION_METHODS:
        raise EngineError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}",
                          field="method")
    if high_precision not in ("fp32", "fp16"):
        raise EngineError("high precision must be fp32 (runs on ONNX Runtime CPU) or fp16", field="high_precision")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    io = C.read_onnx_io(onnx_path)
    kind = C.guess_kind(io.outputs, io.metadata)
    info = C.check_contract(kind or "deeplab", io.inputs, io.outputs, path=onnx_path)
    if info.batch not in (1, None):
        raise EngineError("quantize a batch-1 (or dynamic batch) export", path=onnx_path, field="inputs.images")
    t0 = time.perf_counter()
    resized, verdicts = _resized(frames, info.input_hw, max_frames)
    check_calibration_frames(resized, min_frames=min_frames, source=source, verdicts=verdicts)
    model = onnx.load(str(onnx_path))
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise EngineError("this ONNX is already quantized (it has Q/DQ nodes)", path=onnx_path)
    keep = higher_precision_nodes(model, info.kind, keep_first_conv=keep_first_conv,
                                  keep_classifier=keep_classifier, keep_mask_head=keep_mask_head,
                                  keep_patterns=keep_patterns, arch_defaults=arch_defaults)
    exclude = [f"^{re.escape(n)}$" for names in keep.values() for n in names]
    quantize = _import_modelopt_quantize()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("calibrating %s on %d frames (%s)", onnx_path.name, len(resized), method)
    with tempfile.TemporaryDirectory() as tmp:
        # Model Optimizer writes intermediate files beside its input: work on a private copy
        src = Path(tmp) / onnx_path.name
        src.write_bytes(onnx_path.read_bytes())
        # onnxruntime's calibrator print()s progress lines and Model Optimizer draws a tqdm bar per
        # calibration frame (and per tensor): both go to a buffer (logged at debug level); the one
        # bar shown is ours, over the frames the calibrator reads
        chatter = StringIO()
        terminal = sys.stderr
        try:
            with tqdm(total=len(resized), desc=f"calibrating ({method})", unit="frame", file=terminal,
                      leave=False) as bar, \
                    contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                quantize(str(src), quantize_mode="int8", calibration_data_reader=FrameReader(resized, bar.update),
                         calibration_method=method, calibration_eps=list(calibration_eps),
                         op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=exclude or None,
                         high_precision_dtype=high_precision, output_path=str(out_path), log_level="WARNING")
            log.debug("%s", chatter.getvalue())
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"Model Optimizer quantization failed: {exc}", path=onnx_path) from exc
    qmodel = onnx.load(str(out_path))
    meta = {p.key: p.value for p in model.metadata_props}
    meta[C.META_PRECISION] = "int8"
    meta["segfuse.calibration"] = f"{method}, {len(resized)} frames" + (f" from {source}" if source else "")
    from engines.export import set_metadata

    set_metadata(qmodel, meta)
    if high_precision == "fp32":
        # Model Optimizer raises the graph to opset 19 (Reduce* axes as inputs), which the TensorRT
        # 8.5/8.6 parsers misread (DeepLab's scores reduced to a scalar): write opset 17.
        from engines.onnx_compat import lower_opset

        qmodel = lower_opset(qmodel, where=out_path)
    else:
        log.warning("%s: FP16 Q/DQ scales need opset 19: TensorRT < 10 cannot build this file", out_path)
    from engines.engine_cache import atomic_write_bytes

    atomic_write_bytes(out_path, qmodel.SerializeToString())
    qio = C.read_onnx_io(out_path)
    C.check_contract(info.kind, qio.inputs, qio.outputs, path=out_path)
    ops = [n for n in qmodel.graph.node]
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in ops)
    dq_inputs = {n.output[0] for n in ops if n.op_type == "DequantizeLinear"}
    quantized = sum(1 for n in ops if n.op_type in QUANTIZED_OPS and any(i in dq_inputs for i in n.input))
    if qdq == 0:
        raise EngineError("quantization produced no Q/DQ nodes", path=out_path)
    return QuantizeReport(str(out_path), "int8", method, len(resized),
                          [f"{k} ({len(v)})" for k, v in keep.items()], qdq, quantized, time.perf_counter() - t0)


# FP16 is allowed only inside the networks proper: the backbone and the heads. Everything else
# (input normalisation, anchor/box decoding with Exp/Log/Div, the IoU MatMuls of the static NMS,
# RoiAlign and the FPN level assignment, top-k, the DeepLab softmax/argmax/class map) stays FP32.
# Measured on the committed Mask R-CNN on ONNX Runtime CPU, sim drive seed 3302, 6 frames: AutoCast
# on random data with no exclusion: max score diff 0.030, boxes 2.7 px (fails the 0.02 limit);
# calibrated on drive frames with this exclusion: 0.0019 and 0.05 px.
FP16_SCOPES: dict[str, tuple[str, ...]] = {
    "maskrcnn": ("backbone", "rpn_head", "box_head", "box_predictor", "mask_head", "mask_predictor"),
    "deeplab": ("model",),
}
DEFAULT_AUTOCAST_FRAMES = 8        # AutoCast's reference run keeps every activation of every frame in memory
MIN_AUTOCAST_FRAMES = 2


def fp32_only_patterns(kind: str | None) -> list[str]:
    """Regular expressions (``re.match`` on node / TensorRT layer names) of what must stay FP32."""
    scopes = FP16_SCOPES.get(kind or "", ())
    if not scopes:
        raise EngineError(f"no FP16 scopes known for model kind {kind!r}", field="kind")
    return [rf"^(?!/({'|'.join(re.escape(s) for s in scopes)})/)"]


def fp32_only_nodes(model, kind: str | None) -> list[str]:
    """Names of the nodes of ``model`` that ``fp32_only_patterns`` keeps in FP32."""
    pats = [re.compile(p) for p in fp32_only_patterns(kind)]
    return [n.name for n in model.graph.node if any(p.match(n.name) for p in pats)]


def float16_nodes(model) -> list[str]:
    """Names of the non-Cast nodes that compute in FP16 (an FP16 input or output), by ONNX type
    inference: what a strongly typed TensorRT network runs in FP16."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    f16 = onnx.TensorProto.FLOAT16
    return [n.name for n in inferred.graph.node if n.op_type != "Cast"
            and any(types.get(t) == f16 for t in list(n.input) + list(n.output) if t)]


def autocast_fp16(onnx_path: str | Path, out_path: str | Path, frames: Iterable[np.ndarray] | None, *,
                  keep_io_types: bool = True, nodes_to_exclude: Sequence[str] | None = None,
                  max_frames: int = DEFAULT_AUTOCAST_FRAMES, min_frames: int = MIN_AUTOCAST_FRAMES,
                  source: str | Path | None = None, restrict_to_network: bool = True) -> Path:
    """FP32 ONNX -> mixed FP16/FP32 ONNX with Model Optimizer AutoCast (I/O types kept).

    ``frames``: real camera frames (BGR uint8, as the pipeline gets them), resized and fed as
    0..255 RGB like every engine input: AutoCast keeps in FP32 the nodes whose values on them
    leave the FP16-safe range. Without frames AutoCast would judge on random inputs in (-1, 1),
    far from real activations, so None is refused. ``restrict_to_network``: FP16 only inside
    the backbone and heads (``FP16_SCOPES``)."""
    import onnx

    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as exc:
        raise EngineError(f"NVIDIA Model Optimizer AutoCast is not usable here ({exc})", field="precision") from exc
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    io = C.read_onnx_io(onnx_path)
    kind = C.guess_kind(io.outputs, io.metadata)
    info = C.check_contract(kind or "deeplab", io.inputs, io.outputs, path=onnx_path)
    if frames is None:
        raise EngineError("FP16 AutoCast needs real calibration frames (a drive or image folder): on random "
                          "inputs it puts box decoding and other range-sensitive nodes in FP16", path=onnx_path,
                          field="calibration")
    resized, verdicts = _resized(frames, info.input_hw, max_frames)
    check_calibration_frames(resized, min_frames=min_frames, source=source, verdicts=verdicts)
    exclude = list(nodes_to_exclude or [])
    if restrict_to_network:
        exclude += fp32_only_patterns(info.kind)
        model = onnx.load(str(onnx_path), load_external_data=False)
        if len(fp32_only_nodes(model, info.kind)) == len(model.graph.node):
            raise EngineError(f"no node is inside the {info.kind} backbone/heads scopes "
                              f"({', '.join(FP16_SCOPES[info.kind])}): nothing would run in FP16 (an ONNX not "
                              "exported by segfuse?); pass restrict_to_network=False to let AutoCast decide alone",
                              path=onnx_path, field="precision")
    batch = 1 if info.batch in (1, None) else int(info.batch)
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calibration"
        calib.mkdir()
        for i in range(0, len(resized) - batch + 1, batch):
            images = np.concatenate([FrameReader._feed(f)["images"] for f in resized[i:i + batch]])
            np.savez(calib / f"batch{i:05d}.npz", images=images)
        chatter = StringIO()
        try:
            with contextlib.redirect_stdout(chatter):
                converted = convert_to_mixed_precision(onnx_path=str(onnx_path), low_precision_type="fp16",
                                                       keep_io_types=keep_io_types,
                                                       nodes_to_exclude=exclude or None,
                                                       calibration_data=str(calib))
        except Exception as exc:
            raise EngineError(f"AutoCast to FP16 failed: {exc}", path=onnx_path) from exc
    meta = dict(io.metadata)
    meta[C.META_PRECISION] = "fp16"
    meta["segfuse.calibration"] = f"AutoCast on {len(resized)} frames" + (f" from {source}" if source else "")
    from engines.engine_cache import atomic_write_bytes
    from engines.export import set_metadata

    set_metadata(converted, meta)
    atomic_write_bytes(out_path, converted.SerializeToString())
    return out_path
