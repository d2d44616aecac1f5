"""Engine outputs -> typed results at camera resolution (plain functions over typed data).

DeepLab: ``class_ids`` [B, H, W] (taxonomy ids) -> the letterbox padding cropped away and
resized back to the camera image with nearest neighbour -> ``SemanticMask``.

Mask R-CNN: ``boxes`` [K, 4], ``scores`` [K], ``labels`` [K], ``masks`` [K, M, M] -> padded
and low-score rows dropped, boxes mapped to camera pixels, each M x M mask pasted into
its box only (bilinear, sampled at pixel centres, vectorised over the detections) ->
``Instances`` with K x H x W boolean masks.

``label_lut`` (optional, 256 entries) maps the engine's ids to taxonomy ids for a user's
ONNX whose outputs are not taxonomy ids already (ours are: the class map is in the graph).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from pipeline.errors import EngineError
from pipeline.preprocess import FrameTransform, resize_labels
from pipeline.types import Instances, SemanticMask

IGNORE_ID = 255


def _apply_lut(ids: np.ndarray, label_lut: np.ndarray | None, ignore_id: int) -> np.ndarray:
    if label_lut is None:
        out = ids.astype(np.int64)
        out[(out < 0) | (out > 255)] = ignore_id
        return out.astype(np.uint8)
    lut = np.asarray(label_lut, np.uint8)
    safe = np.clip(ids, 0, lut.shape[0] - 1)
    out = lut[safe]
    out[(ids < 0) | (ids >= lut.shape[0])] = ignore_id
    return out


def semantic_from_output(class_ids: np.ndarray, transform: FrameTransform, camera_id: str, *,
                         label_lut: np.ndarray | None = None, ignore_id: int = IGNORE_ID) -> SemanticMask:
    """One image's ``class_ids`` ([H, W] or [1, H, W]) -> SemanticMask at camera resolution."""
    ids = np.asarray(class_ids)
    if ids.ndim == 3 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 2 or tuple(ids.shape) != tuple(transform.dst_hw):
        raise EngineError(f"class_ids must be {list(transform.dst_hw)} for this transform, got {list(ids.shape)}",
                          field="outputs.class_ids")
    ch, cw = transform.content_hw
    crop = ids[transform.pad_y:transform.pad_y + ch, transform.pad_x:transform.pad_x + cw]
    mask = _apply_lut(crop, label_lut, ignore_id)
    sh, sw = transform.src_hw
    if (ch, cw) != (sh, sw):
        mask = resize_labels(mask, (sh, sw))
    return SemanticMask(camera_id=camera_id, class_ids=np.ascontiguousarray(mask))


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_hw: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """Paste (K, M, M) mask probabilities into their (K, 4) boxes of an image -> (K, H, W) bool.

    Only the pixels inside each box are computed: each mask is resampled into its box region
    by OpenCV (bilinear, pixel centres, zero outside the mask: torchvision's paste /
    grid_sample with align_corners=False) and thresholded there.
    """
    import cv2

    masks = np.asarray(masks, np.float32)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    h, w = int(image_hw[0]), int(image_hw[1])
    k = masks.shape[0]
    out = np.zeros((k, h, w), bool)
    if k == 0:
        return out
    m = masks.shape[-1]
    x0 = np.clip(np.floor(boxes[:, 0]), 0, w).astype(np.int64)
    y0 = np.clip(np.floor(boxes[:, 1]), 0, h).astype(np.int64)
    x1 = np.clip(np.ceil(boxes[:, 2]), 0, w).astype(np.int64)
    y1 = np.clip(np.ceil(boxes[:, 3]), 0, h).astype(np.int64)
    for i in range(k):
        bw, bh = int(x1[i] - x0[i]), int(y1[i] - y0[i])
        if bw <= 0 or bh <= 0:
            continue
        # destination pixel (col j, row r) of the region samples mask coordinate a*j + b (and c*r + d)
        a = m / max(float(boxes[i, 2] - boxes[i, 0]), 1e-6)
        c = m / max(float(boxes[i, 3] - boxes[i, 1]), 1e-6)
        b = (x0[i] + 0.5 - boxes[i, 0]) * a - 0.5
        d = (y0[i] + 0.5 - boxes[i, 1]) * c - 0.5
        M = np.array([[a, 0.0, b], [0.0, c, d]], np.float64)
        region = cv2.warpAffine(masks[i], M, (bw, bh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        out[i, y0[i]:y1[i], x0[i]:x1[i]] = region >= threshold
    return out


def instances_from_output(outputs: Mapping[str, np.ndarray], transform: FrameTransform, camera_id: str, *,
                          score_threshold: float = 0.5, mask_threshold: float = 0.5,
                          label_lut: np.ndarray | None = None, ignore_id: int = IGNORE_ID) -> Instances:
    """One image's Mask R-CNN outputs -> Instances at camera resolution."""
    for name in ("boxes", "scores", "labels", "masks"):
        if name not in outputs:
            raise EngineError(f"missing output '{name}'", field=f"outputs.{name}")
    scores = np.asarray(outputs["scores"], np.float32).reshape(-1)
    labels = _apply_lut(np.asarray(outputs["labels"]).reshape(-1), label_lut, ignore_id).astype(np.int32)
    keep = (scores > score_threshold) & (labels != ignore_id)
    idx = np.nonzero(keep)[0]
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    boxes = transform.boxes_to_camera(np.asarray(outputs["boxes"], np.float32)[idx])
    masks = np.asarray(outputs["masks"], np.float32)[idx]
    pasted = paste_masks(masks, boxes, transform.src_hw, mask_threshold)
    return Instances(camera_id=camera_id, boxes=boxes, class_ids=labels[idx], scores=scores[idx], masks=pasted)


def postprocess_batch(kind: str, outputs: Mapping[str, np.ndarray], transforms: Sequence[FrameTransform],
                      camera_ids: Sequence[str], **kwargs) -> list[SemanticMask] | list[Instances]:
    """An engine's batched outputs -> one result per frame (Mask R-CNN engines take one frame)."""
    if kind == "deeplab":
        ids = np.asarray(outputs["class_ids"])
        allowed = {k: v for k, v in kwargs.items() if k in ("label_lut", "ignore_id")}
        return [semantic_from_output(ids[i], t, c, **allowed) for i, (t, c) in enumerate(zip(transforms, camera_ids))]
    if kind == "maskrcnn":
        if len(transforms) != 1:
            raise EngineError(f"Mask R-CNN engines take one frame, got {len(transforms)}", field="inputs.images")
        return [instances_from_output(outputs, transforms[0], camera_ids[0], **kwargs)]
    raise EngineError(f"unknown model kind '{kind}'", field="kind")
