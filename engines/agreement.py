"""Task-level agreement between two runs of a model (two backends, two precisions, or an
export against PyTorch), and the tolerances each precision is judged by.

DeepLab: pixel agreement of the class ids and the mIoU of one against the other.
Mask R-CNN: detections above a score threshold are matched one to one (same label, box
IoU >= 0.5, greedy in score order); reported are the matched fraction, the mean mask IoU
of matched pairs (masks pasted at the engine's input size) and the largest score and box
differences between matched pairs.

Tolerances depend on the lower precision of the two runs, so FP16 and INT8 are not
judged with FP32 tolerances (and FP32 is not let off with INT8 ones).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

PRECISION_RANK = {"fp32": 0, "fp16": 1, "int8": 2}


@dataclass(frozen=True)
class Tolerance:
    """Least acceptable agreement for a precision (both kinds in one table)."""

    pixel_agreement: float      # DeepLab: fraction of pixels with the same class
    miou: float                 # DeepLab: mIoU of B against A
    matched: float              # Mask R-CNN: fraction of detections matched both ways
    mask_iou: float             # Mask R-CNN: mean mask IoU of matched pairs
    score_diff: float           # Mask R-CNN: largest |score A - score B| of a matched pair


TOLERANCES = {
    "fp32": Tolerance(pixel_agreement=0.999, miou=0.99, matched=0.98, mask_iou=0.98, score_diff=1e-3),
    "fp16": Tolerance(pixel_agreement=0.99, miou=0.95, matched=0.9, mask_iou=0.9, score_diff=0.02),
    "int8": Tolerance(pixel_agreement=0.95, miou=0.8, matched=0.75, mask_iou=0.75, score_diff=0.1),
}


def tolerance_for(precision_a: str, precision_b: str) -> tuple[str, Tolerance]:
    worst = max((precision_a, precision_b), key=lambda p: PRECISION_RANK.get(p, 0))
    return worst, TOLERANCES.get(worst, TOLERANCES["fp32"])


@dataclass
class Agreement:
    kind: str
    frames: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


class DeepLabAccumulator:
    """Accumulates pixel agreement and a confusion matrix over frames."""

    def __init__(self, ignore_id: int = 255):
        self.ignore_id = ignore_id
        self.equal = 0
        self.total = 0
        self.confusion = np.zeros((256, 256), np.int64)
        self.frames = 0

    def add(self, ids_a: np.ndarray, ids_b: np.ndarray) -> None:
        a = np.asarray(ids_a).astype(np.int64).reshape(-1)
        b = np.asarray(ids_b).astype(np.int64).reshape(-1)
        if a.shape != b.shape:
            raise ValueError(f"class id maps differ in size: {a.shape} vs {b.shape}")
        a, b = np.clip(a, 0, 255), np.clip(b, 0, 255)
        self.equal += int((a == b).sum())
        self.total += a.size
        self.confusion += np.bincount(a * 256 + b, minlength=256 * 256).reshape(256, 256)
        self.frames += 1

    def result(self) -> dict[str, float]:
        conf = self.confusion.copy()
        conf[self.ignore_id, :] = 0
        conf[:, self.ignore_id] = 0
        inter = np.diag(conf).astype(np.float64)
        union = conf.sum(0) + conf.sum(1) - np.diag(conf)
        present = union > 0
        miou = float((inter[present] / union[present]).mean()) if present.any() else 1.0
        return {"pixel_agreement": self.equal / max(self.total, 1), "miou": miou,
                "classes": float(present.sum())}


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_detections(boxes_a: np.ndarray, labels_a: np.ndarray, boxes_b: np.ndarray, labels_b: np.ndarray,
                     iou_threshold: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one matching (inputs sorted by descending score): same label, box IoU >= threshold."""
    iou = _box_iou(boxes_a, boxes_b)
    iou[np.asarray(labels_a)[:, None] != np.asarray(labels_b)[None, :]] = 0.0
    pairs, used = [], set()
    for i in range(iou.shape[0]):
        order = np.argsort(-iou[i], kind="stable")
        for j in order:
            if iou[i, j] < iou_threshold:
                break
            if j not in used:
                used.add(int(j))
                pairs.append((i, int(j)))
                break
    return pairs


class MaskRCNNAccumulator:
    def __init__(self, image_hw: tuple[int, int], score_threshold: float = 0.5):
        self.image_hw = image_hw
        self.score_threshold = score_threshold
        self.n_a = self.n_b = self.n_matched = 0
        self.mask_ious: list[float] = []
        self.max_score_diff = 0.0
        self.max_box_diff = 0.0
        self.frames = 0

    def _select(self, out: Mapping[str, np.ndarray]):
        scores = np.asarray(out["scores"], np.float32).reshape(-1)
        idx = np.nonzero(scores > self.score_threshold)[0]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        masks = out["pasted_masks"] if "pasted_masks" in out else np.asarray(out["masks"], np.float32)
        return (np.asarray(out["boxes"], np.float32).reshape(-1, 4)[idx], np.asarray(out["labels"]).reshape(-1)[idx],
                scores[idx], masks[idx])

    def add(self, out_a: Mapping[str, np.ndarray], out_b: Mapping[str, np.ndarray]) -> None:
        """One frame of each run; ``pasted_masks`` (N, H, W bool at the input size), when
        present, replaces pasting ``masks`` into ``boxes``."""
        from pipeline.postprocess import paste_masks

        ba, la, sa, ma = self._select(out_a)
        bb, lb, sb, mb = self._select(out_b)
        self.n_a += len(ba)
        self.n_b += len(bb)
        self.frames += 1
        pairs = match_detections(ba, la, bb, lb)
        if not pairs:
            return
        ia = np.array([p[0] for p in pairs])
        ib = np.array([p[1] for p in pairs])
        self.n_matched += len(pairs)
        pa = ma[ia] if ma.dtype == bool else paste_masks(ma[ia], ba[ia], self.image_hw)
        pb = mb[ib] if mb.dtype == bool else paste_masks(mb[ib], bb[ib], self.image_hw)
        inter = (pa & pb).reshape(len(pairs), -1).sum(1)
        union = (pa | pb).reshape(len(pairs), -1).sum(1)
        self.mask_ious.extend(np.where(union > 0, inter / np.maximum(union, 1), 1.0).tolist())
        self.max_score_diff = max(self.max_score_diff, float(np.abs(sa[ia] - sb[ib]).max()))
        self.max_box_diff = max(self.max_box_diff, float(np.abs(ba[ia] - bb[ib]).max()))

    def result(self) -> dict[str, float]:
        denom = max(self.n_a, self.n_b)
        return {"detections_a": float(self.n_a), "detections_b": float(self.n_b),
                "matched": self.n_matched / denom if denom else 1.0,
                "mask_iou": float(np.mean(self.mask_ious)) if self.mask_ious else (1.0 if not denom else 0.0),
                "score_diff": self.max_score_diff, "box_diff": self.max_box_diff}


def judge(kind: str, metrics: Mapping[str, float], tol: Tolerance) -> list[str]:
    """Failure lines for metrics outside the tolerance (empty: passed)."""
    fails = []
    if kind == "deeplab":
        if metrics["pixel_agreement"] < tol.pixel_agreement:
            fails.append(f"pixel agreement {metrics['pixel_agreement']:.4f} < {tol.pixel_agreement}")
        if metrics["miou"] < tol.miou:
            fails.append(f"mIoU {metrics['miou']:.4f} < {tol.miou}")
    else:
        if metrics["matched"] < tol.matched:
            fails.append(f"matched detections {metrics['matched']:.3f} < {tol.matched}")
        if metrics["mask_iou"] < tol.mask_iou:
            fails.append(f"mean mask IoU {metrics['mask_iou']:.3f} < {tol.mask_iou}")
        if metrics["score_diff"] > tol.score_diff:
            fails.append(f"score difference {metrics['score_diff']:.4f} > {tol.score_diff}")
    return fails


def max_abs_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, float]:
    """Largest element-wise difference per output (float outputs only)."""
    out = {}
    for n in names:
        if n in a and n in b and np.issubdtype(np.asarray(a[n]).dtype, np.floating):
            x, y = np.asarray(a[n], np.float64), np.asarray(b[n], np.float64)
            out[n] = float(np.abs(x - y).max()) if x.size and x.shape == y.shape else float("nan")
    return out
