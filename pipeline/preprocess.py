"""Camera frames -> engine input tensors (plain functions over typed data).

Every engine (see engines/contracts.py) takes ``images``: float32 [B, 3, H, W], RGB,
values 0..255 (uint8 range), with the normalisation inside the graph. This module
resizes each (H, W, 3) uint8 BGR frame to the engine's input size, either keeping the
aspect ratio and padding (``letterbox``, the default), padding without enlarging a frame
that already fits (``pad``: no resampling, so 1-2 px lane paint and poles keep their exact
pixels; larger frames are letterboxed down) or stretching (``stretch``), swaps BGR to RGB
and lays it out NCHW. The returned ``FrameTransform`` maps engine-input
pixels back to camera pixels for the postprocess.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.errors import ConfigError, InputDataError
from pipeline.types import CameraFrame

RESIZE_MODES = ("letterbox", "pad", "stretch")


@dataclass(frozen=True)
class FrameTransform:
    """Camera pixel (u, v) -> engine input pixel (u * scale_x + pad_x, v * scale_y + pad_y)."""

    src_hw: tuple[int, int]        # camera image (H, W)
    dst_hw: tuple[int, int]        # engine input (H, W)
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int

    @property
    def content_hw(self) -> tuple[int, int]:
        """Size of the resized image inside the engine input (excluding padding)."""
        return (int(round(self.src_hw[0] * self.scale_y)), int(round(self.src_hw[1] * self.scale_x)))

    def boxes_to_camera(self, boxes: np.ndarray) -> np.ndarray:
        """(K, 4) x1 y1 x2 y2 in engine-input pixels -> camera pixels, clipped to the image."""
        out = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
        out[:, 0::2] = (out[:, 0::2] - self.pad_x) / self.scale_x
        out[:, 1::2] = (out[:, 1::2] - self.pad_y) / self.scale_y
        out[:, 0::2] = np.clip(out[:, 0::2], 0, self.src_hw[1])
        out[:, 1::2] = np.clip(out[:, 1::2], 0, self.src_hw[0])
        return out

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        out = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
        out[:, 0::2] = out[:, 0::2] * self.scale_x + self.pad_x
        out[:, 1::2] = out[:, 1::2] * self.scale_y + self.pad_y
        return out


def make_transform(src_hw: tuple[int, int], dst_hw: tuple[int, int], mode: str = "letterbox") -> FrameTransform:
    if mode not in RESIZE_MODES:
        raise ConfigError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}", field="resize")
    sh, sw = int(src_hw[0]), int(src_hw[1])
    dh, dw = int(dst_hw[0]), int(dst_hw[1])
    if mode == "stretch":
        return FrameTransform((sh, sw), (dh, dw), dw / sw, dh / sh, 0, 0)
    scale = min(dh / sh, dw / sw)
    if mode == "pad":
        scale = min(scale, 1.0)
    nh, nw = max(1, int(round(sh * scale))), max(1, int(round(sw * scale)))
    # exact per-axis scales of the rounded size, so boxes map back without drift
    return FrameTransform((sh, sw), (dh, dw), nw / sw, nh / sh, (dw - nw) // 2, (dh - nh) // 2)


def resize_to_input(image: np.ndarray, dst_hw: tuple[int, int], mode: str = "letterbox",
                    pad_value: int = 0) -> tuple[np.ndarray, FrameTransform]:
    """(H, W, 3) uint8 BGR -> (dst_h, dst_w, 3) uint8 BGR and its transform."""
    import cv2

    check_image(image)
    t = make_transform(image.shape[:2], dst_hw, mode)
    nh, nw = t.content_hw
    if (nh, nw) == image.shape[:2]:
        resized = image
    else:
        shrink = nh < image.shape[0] or nw < image.shape[1]
        resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if (nh, nw) == tuple(dst_hw):
        return np.ascontiguousarray(resized), t
    out = np.full((dst_hw[0], dst_hw[1], 3), pad_value, np.uint8)
    out[t.pad_y:t.pad_y + nh, t.pad_x:t.pad_x + nw] = resized
    return out, t


def resize_labels(labels: np.ndarray, dst_hw: tuple[int, int]) -> np.ndarray:
    """A label image (class or instance ids) resampled to ``dst_hw`` by pixel-centre nearest,
    aligned with the pixel-centre resampling of the image itself. OpenCV's INTER_NEAREST takes
    floor(x * scale), which moves labels half a pixel on average (a 1242 -> 1248 -> 1242 round
    trip moves most columns by one; on 3-10 px lane paint that cost 11 points of IoU,
    docs/models.md). Every label resize goes through here."""
    import cv2

    return cv2.resize(labels, (int(dst_hw[1]), int(dst_hw[0])), interpolation=cv2.INTER_NEAREST_EXACT)


def check_image(image: np.ndarray, where: str = "frame") -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = (f"{image.dtype}{list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__)
        raise InputDataError(f"expected an (H, W, 3) uint8 BGR image, got {desc}", path=where, field="image")


@dataclass
class PreprocessedBatch:
    images: np.ndarray                  # float32 [B, 3, H, W] RGB 0..255: the engine's ``images`` input
    transforms: list[FrameTransform]
    camera_ids: list[str]

    def feed(self) -> dict[str, np.ndarray]:
        return {"images": self.images}


@dataclass(frozen=True)
class Batches:
    """``Preprocess``'s output: one engine batch per model kind (deeplab, maskrcnn)."""

    by_kind: dict[str, PreprocessedBatch]


def preprocess_frames(frames: Sequence[CameraFrame | np.ndarray], input_hw: tuple[int, int], *,
                      mode: str = "letterbox", pad_value: int = 0) -> PreprocessedBatch:
    """Frames (CameraFrame or bare BGR images) -> one engine batch."""
    if len(frames) == 0:
        raise InputDataError("no frames to preprocess", field="frames")
    h, w = int(input_hw[0]), int(input_hw[1])
    batch = np.empty((len(frames), 3, h, w), np.float32)
    transforms, ids = [], []
    for i, frame in enumerate(frames):
        image = frame.image if isinstance(frame, CameraFrame) else frame
        ids.append(frame.camera_id if isinstance(frame, CameraFrame) else f"frame{i}")
        resized, t = resize_to_input(image, (h, w), mode, pad_value)
        batch[i] = resized.transpose(2, 0, 1)[::-1]        # HWC BGR -> CHW RGB, cast to float32
        transforms.append(t)
    return PreprocessedBatch(batch, transforms, ids)
