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


def check_model_outputs(kind: str, outputs: Mapping[str, np.ndarray], *, input_hw: tuple[int, int],
                        num_classes: int, ignore_id: int = IGNORE_ID, model: str = "<model>") -> None:
    """What a contract-valid model returned, checked before it is used: class ids within the
    taxonomy (or the ignore id), boxes finite and inside the input image, scores finite in [0, 1],
    one M x M mask per detection. Raises EngineError naming the model file and the output (the
    frame fails, is counted, and the run goes on)."""
    h, w = int(input_hw[0]), int(input_hw[1])

    def fail(name: str, what: str) -> None:
        raise EngineError(f"{kind} output '{name}' {what}", path=model, field=f"outputs.{name}")

    def check_ids(name: str, ids: np.ndarray) -> None:
        if not np.issubdtype(ids.dtype, np.integer):
            fail(name, f"has dtype {ids.dtype}, expected integer class ids")
        if ids.size:
            bad = (ids < 0) | ((ids >= num_classes) & (ids != ignore_id))
            if bad.any():
                vals = np.unique(ids[bad])[:5]
                fail(name, f"holds class ids outside the taxonomy (0..{num_classes - 1}, {ignore_id} ignore): "
                           f"{', '.join(str(int(v)) for v in vals)} ({int(bad.sum())} values)")

    if kind == "deeplab":
        ids = np.asarray(outputs["class_ids"])
        if ids.ndim != 3 or tuple(ids.shape[1:]) != (h, w):
            fail("class_ids", f"has shape {list(ids.shape)}, expected [B, {h}, {w}]")
        check_ids("class_ids", ids)
        if "scores" in outputs:
            sc = np.asarray(outputs["scores"])
            if sc.shape != ids.shape:
                fail("scores", f"has shape {list(sc.shape)}, expected {list(ids.shape)} (as class_ids)")
        return
    for name in ("boxes", "scores", "labels", "masks"):
        if name not in outputs:
            fail(name, "is missing")
    boxes = np.asarray(outputs["boxes"])
    scores = np.asarray(outputs["scores"]).reshape(-1)
    labels = np.asarray(outputs["labels"]).reshape(-1)
    masks = np.asarray(outputs["masks"])
    k = scores.shape[0]
    if boxes.shape != (k, 4):
        fail("boxes", f"has shape {list(boxes.shape)}, expected [{k}, 4] (one box per score)")
    if labels.shape[0] != k:
        fail("labels", f"has {labels.shape[0]} rows, expected {k} (one per score)")
    if masks.ndim != 3 or masks.shape[0] != k or masks.shape[1] != masks.shape[2]:
        fail("masks", f"has shape {list(masks.shape)}, expected [{k}, M, M]")
    if not np.isfinite(scores).all() or ((scores < 0) | (scores > 1)).any():
        fail("scores", "holds values that are not finite or outside [0, 1]")
    live = scores > 0                        # padding rows (score 0) may hold anything
    check_ids("labels", labels[live])
    b = boxes[live]
    if not np.isfinite(b).all():
        fail("boxes", "holds values that are not finite")
    tol = 1.0
    if b.size and ((b[:, 0] < -tol) | (b[:, 1] < -tol) | (b[:, 2] > w + tol) | (b[:, 3] > h + tol)
                   | (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
        fail("boxes", f"holds boxes outside the {w}x{h} input image or with x2 < x1 / y2 < y1")
    if not np.isfinite(masks[live]).all():
        fail("masks", "holds values that are not finite")
