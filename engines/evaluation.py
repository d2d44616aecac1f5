"""Model metrics on drives with ground truth (`segfuse eval --drive DIR`).

Each model runs through an Engine (any backend, any precision) with the pipeline's own
preprocess and postprocess, and is scored at camera resolution against the drive's
ground-truth masks:

- DeepLab: per-class IoU over all frames (one confusion matrix; ignore-id pixels skipped)
  and mIoU over the classes present in the ground truth or the predictions.
- Mask R-CNN: COCO mask AP (0.50:0.95) and AP50 with pycocotools, per class and overall.
  Ground-truth instances are the visible parts of thing-class instances in the instance
  mask. As in the KITTI benchmark, instances less than 25 px tall are not required: they
  are marked ``iscrowd`` (COCO's ignore regions), so a detection on one is neither a hit
  nor a false positive. Detections are kept from score 0.05 (the PR curve needs the low ones).
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.config import Taxonomy, load_taxonomy
from pipeline.errors import InputDataError

log = logging.getLogger(__name__)

MIN_GT_HEIGHT_PX = 25          # KITTI's minimum box height (moderate/hard); smaller ones are ignore regions
AP_SCORE_THRESHOLD = 0.05


class SemanticScorer:
    """Confusion matrix of predicted vs true class ids over many frames."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.tax = taxonomy
        self.n = taxonomy.num_classes
        self.conf = np.zeros((self.n, self.n + 1), np.int64)  # [true, pred]; last column: predicted ignore id
        self.frames = 0

    def add(self, pred: np.ndarray, true: np.ndarray) -> None:
        if pred.shape != true.shape:
            raise InputDataError(f"prediction {pred.shape} and ground truth {true.shape} differ in size",
                                 field="semantic")
        t = true.reshape(-1).astype(np.int64)
        p = pred.reshape(-1).astype(np.int64)
        ok = t < self.n
        p = np.where(p < self.n, p, self.n)                    # ignore-id predictions count as misses
        conf = np.bincount(t[ok] * (self.n + 1) + p[ok], minlength=self.n * (self.n + 1))
        self.conf += conf.reshape(self.n, self.n + 1)
        self.frames += 1

    def result(self) -> dict[str, Any]:
        tp = np.diag(self.conf[:, :self.n]).astype(np.float64)
        gt = self.conf.sum(1).astype(np.float64)            # every labelled pixel, the unlabelled misses too
        pred = self.conf[:, :self.n].sum(0).astype(np.float64)
        union = gt + pred - tp
        iou = {self.tax.names[c]: float(tp[c] / union[c]) for c in range(self.n) if union[c] > 0}
        total = self.conf.sum()
        return {"frames": self.frames, "iou": iou, "miou": float(np.mean(list(iou.values()))) if iou else 0.0,
                "pixel_accuracy": float(tp.sum() / total) if total else 0.0}


def gt_instances(semantic: np.ndarray, instance: np.ndarray, taxonomy: Taxonomy) -> list[tuple[int, np.ndarray]]:
    """(taxonomy class id, visible mask) of each thing-class instance in the frame."""
    out = []
    ids = np.unique(instance)
    for iid in ids[ids > 0]:
        m = instance == iid
        cls = int(np.bincount(semantic[m], minlength=256).argmax())
        if cls < taxonomy.num_classes and taxonomy.things[cls]:
            out.append((cls, m))
    return out


def _rle(mask: np.ndarray) -> dict:
    """COCO run-length encoding of a boolean mask, JSON-ready."""
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


class MaskAPScorer:
    """COCO-style mask AP with pycocotools over many frames."""

    def __init__(self, taxonomy: Taxonomy, min_gt_height_px: int = MIN_GT_HEIGHT_PX) -> None:
        self.tax = taxonomy
        self.min_h = int(min_gt_height_px)
        self.images: list[dict] = []
        self.gts: list[dict] = []
        self.dets: list[dict] = []

    def add(self, semantic: np.ndarray, instance: np.ndarray, det_classes: np.ndarray, det_scores: np.ndarray,
            det_masks: np.ndarray) -> None:
        h, w = instance.shape
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "height": h, "width": w})
        for cls, m in gt_instances(semantic, instance, self.tax):
            ys, xs = np.nonzero(m)
            x1, y1 = int(xs.min()), int(ys.min())
            bw, bh = int(xs.max()) + 1 - x1, int(ys.max()) + 1 - y1
            self.gts.append({"id": len(self.gts) + 1, "image_id": image_id, "category_id": int(cls),
                             "segmentation": _rle(m), "area": float(m.sum()), "bbox": [x1, y1, bw, bh],
                             "iscrowd": int(bh < self.min_h)})
        for cls, score, m in zip(det_classes, det_scores, det_masks):
            if not m.any():
                continue
            self.dets.append({"image_id": image_id, "category_id": int(cls), "segmentation": _rle(m),
                              "score": float(score)})

    def result(self) -> dict[str, Any]:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        cats = [{"id": c, "name": self.tax.names[c]} for c in self.tax.thing_ids]
        required = sum(1 for g in self.gts if not g["iscrowd"])
        base = {"frames": len(self.images), "gt_instances": required,
                "gt_ignored_small": len(self.gts) - required, "detections": len(self.dets),
                "min_gt_height_px": self.min_h}
        if not self.dets or not required:
            return {**base, "ap": 0.0, "ap50": 0.0, "ap75": 0.0, "per_class": {}}
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = {"images": self.images, "annotations": self.gts, "categories": cats}
            gt.createIndex()
            dt = gt.loadRes(self.dets)
            ev = COCOeval(gt, dt, iouType="segm")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        precision = ev.eval["precision"]          # [T, R, K, A, M]: iou thr, recall, class, area, maxdets
        per_class = {}
        present = {g["category_id"] for g in self.gts if not g["iscrowd"]}
        for k, cid in enumerate(ev.params.catIds):
            if cid not in present:
                continue
            p_all = precision[:, :, k, 0, -1]
            p50 = precision[0, :, k, 0, -1]
            per_class[self.tax.names[cid]] = {
                "ap": float(np.mean(p_all[p_all > -1])) if (p_all > -1).any() else 0.0,
                "ap50": float(np.mean(p50[p50 > -1])) if (p50 > -1).any() else 0.0,
                "gt_instances": sum(1 for g in self.gts if g["category_id"] == cid and not g["iscrowd"])}
        return {**base, "ap": float(ev.stats[0]), "ap50": float(ev.stats[1]), "ap75": float(ev.stats[2]),
                "per_class": per_class}


def evaluate_models(drives: str | Path | Sequence[str | Path], *, deeplab: Any = None, maskrcnn: Any = None, frames: int | None = None,
                    resize: str = "letterbox", mask_threshold: float = 0.5, progress: bool = True,
                    taxonomy: Taxonomy | None = None, engines: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the given engines (engines.factory.EngineConfig or dict) on drives with ground truth;
    metrics are pooled over all their frames (``frames``: at most this many per drive).
    ``engines``: already-open engines by kind (``segfuse fleet`` keeps them open across drives),
    used instead of ``deeplab``/``maskrcnn`` and left open (the caller closes them)."""
    from tqdm import tqdm

    from engines.factory import create_engine
    from pipeline.drive.io import open_drive
    from pipeline.postprocess import instances_from_output, semantic_from_output
    from pipeline.preprocess import preprocess_frames

    tax = taxonomy or load_taxonomy()
    given = engines
    engines = dict(given) if given else {}
    try:
        if deeplab is not None and not given:
            engines["deeplab"] = create_engine(deeplab)
        if maskrcnn is not None and not given:
            engines["maskrcnn"] = create_engine(maskrcnn)
        if not engines:
            raise InputDataError("no model to evaluate (give a DeepLab and/or a Mask R-CNN)", field="models")
        sem = SemanticScorer(tax)
        ap = MaskAPScorer(tax)
        drive_list = [drives] if isinstance(drives, (str, Path)) else list(drives)
        skipped = 0
        for drive_path in drive_list:
            with open_drive(drive_path) as drive:
                total = len(drive) if frames is None else min(frames, len(drive))
                for f in tqdm(drive.frames(on_error="skip", stop=total), total=total, desc=f"eval {Path(drive_path).name}",
                              unit="frame", disable=not progress):
                    if f.semantic is None or f.instance is None:
                        raise InputDataError(f"frame {f.index} has no ground-truth masks", path=Path(drive_path),
                                             field="semantic")
                    batches = {}                   # one preprocess per input size, shared by the models
                    for e in engines.values():
                        if e.input_hw not in batches:
                            batches[e.input_hw] = preprocess_frames([f.camera], e.input_hw, mode=resize)
                    if "deeplab" in engines:
                        e = engines["deeplab"]
                        batch = batches[e.input_hw]
                        out = e.infer(batch.feed())
                        mask = semantic_from_output(out["class_ids"][0], batch.transforms[0], f.camera.camera_id)
                        sem.add(mask.class_ids, f.semantic)
                    if "maskrcnn" in engines:
                        e = engines["maskrcnn"]
                        batch = batches[e.input_hw]
                        out = e.infer(batch.feed())
                        inst = instances_from_output(out, batch.transforms[0], f.camera.camera_id,
                                                     score_threshold=AP_SCORE_THRESHOLD,
                                                     mask_threshold=mask_threshold, ignore_id=tax.ignore_id)
                        ap.add(f.semantic, f.instance, inst.class_ids, inst.scores, inst.masks)
                skipped += drive.num_skipped
    finally:
        for e in engines.values() if not given else ():
            e.close()
    result: dict[str, Any] = {"drives": [str(d) for d in drive_list], "frames_skipped": skipped}
    for kind, e in engines.items():
        result.setdefault("models", {})[kind] = {"model": str(e.path), "backend": e.backend,
                                                "precision": e.precision}
    if "deeplab" in engines:
        result["deeplab"] = sem.result()
    if "maskrcnn" in engines:
        result["maskrcnn"] = ap.result()
    return result


def render_model_table(m: dict[str, Any]) -> str:
    lines = []
    for kind, info in m.get("models", {}).items():
        lines.append(f"{kind:<9} {info['model']}  ({info['backend']}, {info['precision']})")
    if "deeplab" in m:
        d = m["deeplab"]
        lines.append(f"\nDeepLab on {d['frames']} frames: mIoU {d['miou']:.4f}, pixel accuracy {d['pixel_accuracy']:.4f}")
        for name, v in d["iou"].items():
            lines.append(f"  {name:<14} IoU {v:.4f}")
    if "maskrcnn" in m:
        r = m["maskrcnn"]
        lines.append(f"\nMask R-CNN on {r['frames']} frames: mask AP {r['ap']:.4f}, AP50 {r['ap50']:.4f}, "
                     f"AP75 {r['ap75']:.4f}  ({r['gt_instances']} instances >= {r['min_gt_height_px']} px tall, "
                     f"{r['gt_ignored_small']} smaller ones ignored)")
        for name, v in r["per_class"].items():
            lines.append(f"  {name:<14} AP {v['ap']:.4f}  AP50 {v['ap50']:.4f}  ({v['gt_instances']} instances)")
    return "\n".join(lines)
