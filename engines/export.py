"""`segfuse engines export`: torchvision model -> ONNX that honours the I/O contract.

opset 17, the legacy TorchScript exporter (``dynamo=False``), constants folded with
onnx-graphsurgeon, segfuse metadata written into ``metadata_props``. Every export is
checked: the ONNX is run with ONNX Runtime on sample frames and compared with the same
graph in PyTorch (max difference per output and task-level agreement); for Mask R-CNN the
static-shape graph is also compared with stock torchvision inference on the same frames.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engines import contracts as C
from engines.models import ModelSpec, build_model, file_sha256
from pipeline.config import Taxonomy, load_taxonomy
from pipeline.errors import EngineError

log = logging.getLogger(__name__)

OPSET = 17


@dataclass
class ExportReport:
    path: str
    kind: str
    arch: str
    input_hw: tuple[int, int]
    opset: int
    nodes: int
    seconds: float
    frames: int = 0
    max_abs_diff: dict[str, float] = field(default_factory=dict)     # ORT vs PyTorch, per output
    agreement: dict[str, float] = field(default_factory=dict)        # task level, ORT vs PyTorch
    stock: dict[str, float] = field(default_factory=dict)            # static graph vs stock torchvision
    nms_converged: float | None = None                               # fraction of frames (Mask R-CNN)

    def lines(self) -> list[str]:
        out = [f"exported {self.kind} {self.arch} {self.input_hw[0]}x{self.input_hw[1]} -> {self.path}",
               f"  opset {self.opset}, {self.nodes} nodes after constant folding, {self.seconds:.1f} s"]
        if self.frames:
            diffs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs_diff.items())
            pairs = " (matched detections)" if self.kind == "maskrcnn" else ""
            out.append(f"  ONNX Runtime vs PyTorch on {self.frames} frames: max |diff|{pairs} {diffs}")
            out.append("  agreement: " + ", ".join(f"{k} {v:.4f}" for k, v in self.agreement.items()))
        if self.stock:
            out.append("  static graph vs stock torchvision: "
                       + ", ".join(f"{k} {v:.4f}" for k, v in self.stock.items()))
        if self.nms_converged is not None:
            out.append(f"  static NMS equal to greedy NMS on {self.nms_converged:.0%} of frames")
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def label_lut(spec: ModelSpec, taxonomy: Taxonomy) -> list[int]:
    """lut[model label] = taxonomy id. DeepLab: unmapped -> ignore id. Mask R-CNN: -1 (dropped), 0 -> 0."""
    missing = taxonomy.ignore_id if spec.kind == "deeplab" else -1
    lut = [missing] * spec.num_classes
    for label, name in spec.class_map.items():
        lut[label] = taxonomy.id(name)
    if spec.kind == "maskrcnn":
        lut[0] = -1
    return lut


def build_graph(spec: ModelSpec, model=None, *, taxonomy: Taxonomy | None = None, with_scores: bool = True):
    """The torch module that is exported (contract I/O), from ``model`` or built from ``spec``."""
    from engines.graphs import DeepLabGraph, StaticMaskRCNN

    taxonomy = taxonomy or load_taxonomy()
    model = model if model is not None else build_model(spec)
    model.eval()
    lut = label_lut(spec, taxonomy)
    if spec.kind == "deeplab":
        return DeepLabGraph(model, lut, with_scores=with_scores).eval()
    return StaticMaskRCNN(model, spec.input_hw, lut, pad_label=taxonomy.ignore_id,
                          num_detections=spec.num_detections, rpn_pre_nms_top_n=spec.rpn_pre_nms_top_n,
                          rpn_post_nms_top_n=spec.rpn_post_nms_top_n, box_candidates=spec.box_candidates,
                          box_score_thresh=spec.box_score_thresh, nms_iterations=spec.nms_iterations).eval()


def fold_constants(model):
    """Constant folding with onnx-graphsurgeon (evaluates constant subgraphs with ONNX Runtime)."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.fold_constants(error_ok=True)
    graph.cleanup().toposort()
    folded = gs.export_onnx(graph)
    folded.ir_version = model.ir_version
    return folded


def set_metadata(model, values: dict[str, str]) -> None:
    keep = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, str(v)


def export_onnx(spec: ModelSpec, out_path: str | Path, *, model=None, taxonomy: Taxonomy | None = None,
                with_scores: bool = True, batch: int = 1, dynamic_batch: bool = False,
                verify_frames: Sequence[np.ndarray] | None = None, compare_stock: bool = True) -> ExportReport:
    """Export ``spec`` (or the given torchvision ``model``) to ``out_path`` and check it.

    ``verify_frames``: BGR uint8 camera frames to check the export on (procedural scenes
    when None; pass [] to skip the check).
    """
    import onnx
    import torch

    from engines.frames import procedural_frames

    taxonomy = taxonomy or load_taxonomy()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch_model = model if model is not None else build_model(spec)
    graph = build_graph(spec, torch_model, taxonomy=taxonomy, with_scores=with_scores)
    h, w = spec.input_hw
    if spec.kind == "maskrcnn":
        batch, dynamic_batch = 1, False
        outputs = list(C.MASKRCNN_OUTPUTS)
    else:
        outputs = ["class_ids", "scores"] if with_scores else ["class_ids"]
    dummy = torch.rand(batch, 3, h, w) * 255.0
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {"images": {0: "batch"}, **{n: {0: "batch"} for n in outputs}}
    log.info("exporting %s (%s) at %dx%d", spec.arch, spec.kind, h, w)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "raw.onnx"
        try:
            with torch.no_grad():
                torch.onnx.export(graph, (dummy,), str(raw), opset_version=OPSET, dynamo=False,
                                  input_names=["images"], output_names=outputs, dynamic_axes=dynamic_axes,
                                  do_constant_folding=True)
        except Exception as exc:
            raise EngineError(f"torch.onnx.export failed: {exc}", path=out_path) from exc
        onnx_model = onnx.load(str(raw))
    onnx_model = fold_constants(onnx_model)
    onnx_model = onnx.shape_inference.infer_shapes(onnx_model)
    source = "random init"
    if spec.checkpoint is not None:
        source = f"{Path(spec.checkpoint).name} sha256:{file_sha256(spec.checkpoint)}"
    meta = {C.META_CONTRACT: str(C.CONTRACT_VERSION), C.META_KIND: spec.kind, C.META_ARCH: spec.arch,
            C.META_INPUT_SIZE: f"{h}x{w}", C.META_TAXONOMY: json.dumps(list(taxonomy.names)),
            C.META_CLASS_MAP: json.dumps({str(k): v for k, v in sorted(spec.class_map.items())}),
            C.META_PRECISION: "fp32", C.META_SOURCE: source}
    if spec.kind == "maskrcnn":
        meta[C.META_NUM_DETECTIONS] = str(spec.num_detections)
    set_metadata(onnx_model, meta)
    onnx_model.producer_name = "segfuse"
    try:
        onnx.checker.check_model(onnx_model)
    except Exception as exc:
        raise EngineError(f"exported graph is not valid ONNX: {exc}", path=out_path) from exc
    onnx.save(onnx_model, str(out_path))
    io = C.read_onnx_io(out_path)
    C.check_contract(spec.kind, io.inputs, io.outputs, path=out_path)
    report = ExportReport(str(out_path), spec.kind, spec.arch, (h, w), OPSET, len(onnx_model.graph.node),
                          time.perf_counter() - t0)
    frames = procedural_frames(2, (375, 1242), seed=7) if verify_frames is None else list(verify_frames)
    if frames:
        verify_export(report, graph, torch_model if compare_stock else None, out_path, frames, spec)
    report.seconds = time.perf_counter() - t0
    return report


def _torch_outputs(graph, images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        res = graph(torch.from_numpy(images))
    res = res if isinstance(res, tuple) else (res,)
    return {n: r.numpy() for n, r in zip(names, res)}


def verify_export(report: ExportReport, graph, stock_model, onnx_path: Path, frames: Sequence[np.ndarray],
                  spec: ModelSpec) -> None:
    """Run ONNX Runtime and PyTorch on ``frames``; fill the report's differences and agreement."""
    from tqdm import tqdm

    from engines.agreement import DeepLabAccumulator, MaskRCNNAccumulator, max_abs_diff
    from engines.onnxruntime_backend import OnnxRuntimeEngine
    from pipeline.preprocess import preprocess_frames

    engine = OnnxRuntimeEngine(onnx_path, kind=spec.kind)
    names = engine.output_names
    diffs: dict[str, float] = {}
    acc = DeepLabAccumulator() if spec.kind == "deeplab" else MaskRCNNAccumulator(spec.input_hw, 0.05)
    stock_acc = MaskRCNNAccumulator(spec.input_hw, 0.05) if spec.kind == "maskrcnn" and stock_model else None
    converged = []
    for frame in tqdm(frames, desc="checking export", unit="frame", leave=False, disable=len(frames) < 3):
        images = preprocess_frames([frame], spec.input_hw).images
        ours = engine.infer({"images": images})
        ref = _torch_outputs(graph, images, names)
        for k, v in max_abs_diff(ours, ref, names).items():
            diffs[k] = max(diffs.get(k, 0.0), v)
        if spec.kind == "deeplab":
            acc.add(ours["class_ids"], ref["class_ids"])
        else:
            acc.add(ours, ref)
            if stock_acc is not None:
                stock_acc.add(ref, _stock_maskrcnn(stock_model, graph, images))
            converged.append(_nms_converged(graph, images))
    engine.close()
    report.frames = len(frames)
    res = acc.result()
    if spec.kind == "deeplab":
        report.max_abs_diff = diffs
        report.agreement = {"pixel_agreement": res["pixel_agreement"], "miou": res["miou"]}
    else:
        # rows can change places between runs (near-equal scores): differences of matched pairs
        report.max_abs_diff = {"boxes": res["box_diff"], "scores": res["score_diff"]}
        report.agreement = {"matched": res["matched"], "mask_iou": res["mask_iou"]}
        report.nms_converged = float(np.mean(converged)) if converged else None
    if stock_acc is not None:
        s = stock_acc.result()
        report.stock = {"matched": s["matched"], "mask_iou": s["mask_iou"], "score_diff": s["score_diff"]}


def _stock_maskrcnn(model, graph, images: np.ndarray) -> dict[str, np.ndarray]:
    """Stock torchvision inference on the same input (its transform set to an identity resize,
    its RPN and detection settings to the static graph's), in the contract's label space and
    layout (M x M masks, not pasted), so both are pasted the same way for the agreement."""
    import torch

    h, w = images.shape[-2:]
    tr = model.transform
    saved = (tr.min_size, tr.max_size, model.rpn._pre_nms_top_n, model.rpn._post_nms_top_n,
             model.roi_heads.detections_per_img, model.roi_heads.score_thresh)
    try:
        tr.min_size, tr.max_size = (min(h, w),), max(h, w)
        model.rpn._pre_nms_top_n = dict(training=saved[2]["training"], testing=graph.rpn_pre_nms_top_n)
        model.rpn._post_nms_top_n = dict(training=saved[3]["training"], testing=graph.num_proposals)
        model.roi_heads.detections_per_img = graph.num_detections
        model.roi_heads.score_thresh = graph.box_score_thresh
        tr.postprocess = lambda result, *args: result          # keep its 28x28 masks, unpasted
        with torch.no_grad():
            out = model([torch.from_numpy(images[0]) / 255.0])[0]
    finally:
        del tr.postprocess
        (tr.min_size, tr.max_size, model.rpn._pre_nms_top_n, model.rpn._post_nms_top_n,
         model.roi_heads.detections_per_img, model.roi_heads.score_thresh) = saved
    lut = graph.label_lut.numpy()
    labels = lut[out["labels"].numpy()]
    keep = labels >= 0
    return {"boxes": out["boxes"].numpy()[keep], "scores": out["scores"].numpy()[keep],
            "labels": labels[keep].astype(np.int32), "masks": out["masks"].numpy()[keep][:, 0]}


def _nms_converged(graph, images: np.ndarray) -> bool:
    """Whether the static NMS reached greedy NMS' result on this frame (final detection stage)."""
    import torch

    from engines.graphs import static_nms_converged

    with torch.no_grad():
        feats = graph.backbone((torch.from_numpy(images) - graph.mean) / graph.std)
        boxes, valid, labels, _ = graph.candidates(feats)
        return static_nms_converged(boxes, valid, graph.box_nms_thresh, graph.nms_iterations, labels)


def onnx_summary(path: str | Path) -> dict[str, Any]:
    """What `segfuse engines info` prints for an ONNX file."""
    import onnx

    from engines.onnxruntime_backend import onnx_precision

    io = C.read_onnx_io(path)
    kind = C.guess_kind(io.outputs, io.metadata)
    info: dict[str, Any] = {"path": str(path), "format": "onnx", "opset": io.opset, "kind": kind,
                            "inputs": [s.describe() for s in io.inputs],
                            "outputs": [s.describe() for s in io.outputs],
                            "precision": onnx_precision(path, io.metadata),
                            "metadata": io.metadata}
    try:
        contract = C.check_contract(kind or "deeplab", io.inputs, io.outputs, path=path)
        info["contract"] = f"ok (v{C.CONTRACT_VERSION}, {contract.kind}, input {contract.input_hw[0]}x" \
                           f"{contract.input_hw[1]})"
    except EngineError as exc:
        info["contract"] = f"FAILS: {exc}"
    model = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    info["nodes"] = len(model.graph.node)
    info["control_flow"] = sorted(o for o in ops if o in ("If", "Loop", "Scan", "NonZero", "NonMaxSuppression"))
    info["qdq_nodes"] = ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0)
    return info
