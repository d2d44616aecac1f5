"""Drawing on camera frames: LiDAR points coloured by depth or class, masks, labels."""
from __future__ import annotations

import numpy as np


def depth_colors(depth_m: np.ndarray, max_depth_m: float = 60.0) -> np.ndarray:
    """(N, 3) uint8 BGR from a perceptual colormap (near = warm, far = cool)."""
    import cv2

    code = np.clip(depth_m / max_depth_m * 255.0, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(255 - code.reshape(-1, 1), cv2.COLORMAP_TURBO).reshape(-1, 3)


def draw_points(image: np.ndarray, pixels: np.ndarray, colors_bgr: np.ndarray, radius: int = 1) -> np.ndarray:
    """A copy of ``image`` with a filled square of side 2*radius+1 at each (col, row) pixel;
    nearer points should come last (pass them sorted far to near)."""
    out = image.copy()
    H, W = out.shape[:2]
    cols, rows = pixels[:, 0].astype(np.int64), pixels[:, 1].astype(np.int64)
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            r, c = rows + dr, cols + dc
            ok = (r >= 0) & (r < H) & (c >= 0) & (c < W)
            out[r[ok], c[ok]] = colors_bgr[ok]
    return out


def depth_overlay(image: np.ndarray, pixels: np.ndarray, depth_m: np.ndarray, max_depth_m: float = 60.0) -> np.ndarray:
    order = np.argsort(-depth_m)           # far first, near drawn on top
    return draw_points(image, pixels[order], depth_colors(depth_m[order], max_depth_m))


def blend_mask(image: np.ndarray, class_ids: np.ndarray, lut_bgr: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    color = lut_bgr[class_ids]
    return (image.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha).astype(np.uint8)
