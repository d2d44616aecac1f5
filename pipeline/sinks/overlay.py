"""The one overlay module: drawing on camera frames (LiDAR points coloured by depth or class,
masks, labels) and the overlay video sink: the camera frame with the semantic mask blended in,
LiDAR points coloured by their fused class, objects labelled with class and range, and a banner
(frame, mask provider, LiDAR missing). ``draw_overlay`` is a plain function; ``OverlayVideo``
writes an MP4 in closed segments, so a killed run leaves a playable video (and the first frame
as a PNG)."""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import setting
from pipeline.types import FrameResult

log = logging.getLogger(__name__)


@dataclass
class OverlayConfig:
    """``sinks.overlay`` of a run config."""

    enabled: bool = setting(True, doc="write the overlay video (OUT/overlay.mp4) and its first frame as a PNG")
    fps: float | None = setting(None, unit="frames/s", above=0, doc="the video's frame rate (null: the source's "
                                "rate, 10 when unknown)")
    mask_alpha: float = setting(0.35, min=0, max=1, doc="opacity of the semantic mask over the camera image")
    every_n_frames: int = setting(1, unit="frames", min=1, doc="draw only every Nth frame (a debug sink: 1 draws "
                                  "all; the video's rate is divided by N and the run summary says so)")
    segment_frames: int = setting(10, unit="frames", above=0, doc="frames per closed MP4 segment: a killed run "
                                  "loses at most the segment being written (segfuse recover joins the rest)")


# --- drawing primitives ----------------------------------------------------------------------

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


def _text(img: np.ndarray, text: str, org: tuple[int, int], color: tuple[int, int, int] = (255, 255, 255),
          scale: float = 0.45) -> None:
    import cv2

    x, y = org
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1)):    # a dark outline; the same thickness
        cv2.putText(img, text, (x + dx, y + dy), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)   # keeps the glyphs aligned


def draw_fusion(image: np.ndarray, result: Any, camera: Any, taxonomy: Any, *, point_radius: int = 1) -> np.ndarray:
    """LiDAR points coloured by fused class (unlabelled: black) and objects labelled with range."""
    from calibration.projection import project_lidar

    T_cam_from_base = np.linalg.inv(camera.T_base_from_cam)
    proj = project_lidar(np.asarray(result.points_base, np.float32), T_cam_from_base, camera.model, min_depth_m=1.0)
    idx = proj.index
    order = np.argsort(-proj.depth_m[idx])                  # far first: near points drawn on top
    labelled = result.cloud.class_id[idx[order]]
    colors = taxonomy.color_lut()[labelled]
    colors[labelled == taxonomy.ignore_id] = (0, 0, 0)
    img = draw_points(image, proj.pixels[order], colors, radius=point_radius)
    for o in result.objects:
        c = (T_cam_from_base[:3, :3] @ o.centroid + T_cam_from_base[:3, 3]).reshape(1, 3).astype(np.float32)
        p = project_lidar(c, np.eye(4), camera.model, min_depth_m=1.0)
        if p.count:
            u, v = p.pixels[0]
            _text(img, f"{taxonomy.names[o.class_id]} {o.range_m:.0f}m", (int(u) - 30, int(v) - 8))
    return img


def draw_overlay(result: FrameResult, camera: Any, taxonomy: Any, *, masks_label: str,
                 mask_alpha: float = 0.35) -> np.ndarray:
    """One overlay frame of a FrameResult. ``camera``: the rig's CameraSensor or None."""
    import cv2

    frame = result.camera
    img = frame.image
    sem = result.masks.semantic.get(frame.camera_id)
    if sem is not None and mask_alpha > 0:
        img = cv2.addWeighted(img, 1.0 - mask_alpha, taxonomy.color_lut()[sem.class_ids], mask_alpha, 0.0)
    if result.fusion is not None and camera is not None:
        img = draw_fusion(img, result.fusion, camera, taxonomy)
    else:
        img = img.copy()
    _text(img, f"frame {result.index}  masks: {masks_label}", (6, 16))
    if result.lidar_missing:
        _text(img, "LiDAR missing: camera only", (6, 34), color=(0, 0, 255))
    return img


def fit_canvas(img: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """``img`` scaled to fit a (width, height) canvas, aspect kept, centred on black (letterbox)."""
    import cv2

    w, h = size_wh
    ih, iw = img.shape[:2]
    if (iw, ih) == (w, h):
        return img
    s = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * s)), max(1, round(ih * s))
    canvas = np.zeros((h, w, 3), np.uint8)
    x0, y0 = (w - nw) // 2, (h - nh) // 2
    canvas[y0:y0 + nh, x0:x0 + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return canvas


def join_segments(segments: list[Path], dest: Path, fps: float) -> int:
    """Concatenate closed .mp4 segments into one .mp4 (decoded and encoded again with OpenCV:
    FFmpeg's stream copy is not always installed); returns the frames written."""
    import cv2

    writer = None
    n = 0
    tmp = dest.with_name(f".{dest.name}.joining.mp4")
    try:
        for seg in segments:
            cap = cv2.VideoCapture(str(seg))
            while True:
                ok, img = cap.read()
                if not ok:
                    break
                if writer is None:
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (img.shape[1], img.shape[0]))
                writer.write(img)
                n += 1
            cap.release()
    finally:
        if writer is not None:
            writer.release()
    if writer is not None:
        tmp.replace(dest)
    return n


class OverlayVideo:
    """The overlay as an MP4. Written as short closed .mp4 segments (``segment_frames`` frames
    each) in ``OUT/.NAME.segments/``, joined into ``OUT/NAME.mp4`` by ``close()``: a killed run
    leaves every closed segment playable (``segfuse recover OUT`` joins them). A frame whose size
    differs from the first is letterboxed onto the first frame's canvas (counted: ``resized``)."""

    def __init__(self, out_dir: str | Path, rig: Any, taxonomy: Any, *, camera_id: str, fps: float,
                 masks_label: str, mask_alpha: float = 0.35, name: str = "overlay", every_n_frames: int = 1,
                 segment_frames: int | None = None) -> None:
        self.video_path = Path(out_dir) / f"{name}.mp4"
        self.first_path = Path(out_dir) / f"{name}_first.png"
        self.camera = rig.camera(camera_id) if rig is not None and camera_id in rig.camera_names else None
        self.taxonomy = taxonomy
        self.fps = float(fps)
        self.masks_label = masks_label
        self.mask_alpha = mask_alpha
        self.segment_frames = int(segment_frames or 10)
        self.segments_dir = Path(out_dir) / f".{name}.segments"
        self._video = None
        self._segment_n = 0
        self._segments: list[Path] = []
        self._size: tuple[int, int] | None = None
        self.frames = 0
        self.every_n_frames = max(1, int(every_n_frames))
        self.skipped = 0                  # frames not drawn (decimation)
        self._seen = 0
        self.resized = 0
        self.segments_written = 0

    def write(self, result: FrameResult) -> None:
        import cv2

        self._seen += 1
        if (self._seen - 1) % self.every_n_frames:
            self.skipped += 1
            return
        img = draw_overlay(result, self.camera, self.taxonomy, masks_label=self.masks_label, mask_alpha=self.mask_alpha)
        if self._size is None:
            self._size = (img.shape[1], img.shape[0])
            self.segments_dir.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(self.first_path), img):
                raise OSError(f"could not write {self.first_path}")
        elif (img.shape[1], img.shape[0]) != self._size:
            if not self.resized:
                log.warning("overlay: frame %d is %dx%d, the video is %dx%d: letterboxed onto the first frame's "
                            "canvas (counted in the summary)", result.index, img.shape[1], img.shape[0], *self._size)
            img = fit_canvas(img, self._size)
            self.resized += 1
        if self._video is None:
            seg = self.segments_dir / f"{len(self._segments):06d}.mp4"
            self._video = cv2.VideoWriter(str(seg), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._video.isOpened():
                self._video = None
                raise OSError(f"could not open the overlay segment {seg}")
            self._segments.append(seg)
            self.segments_written += 1
            self._segment_n = 0
        self._video.write(img)
        self._segment_n += 1
        self.frames += 1
        if self._segment_n >= self.segment_frames:
            self._video.release()
            self._video = None

    def close(self) -> Path | None:
        """Join the segments into NAME.mp4 (the segments go when it is written)."""
        if self._video is not None:
            self._video.release()
            self._video = None
        if not self._segments:
            shutil.rmtree(self.segments_dir, ignore_errors=True)
            return None
        n = join_segments(self._segments, self.video_path, self.fps)
        if n != self.frames:
            log.warning("overlay: %d of %d frames could be joined into %s", n, self.frames, self.video_path)
        shutil.rmtree(self.segments_dir, ignore_errors=True)
        self._segments = []
        return self.video_path if n else None

    def abort(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None
        shutil.rmtree(self.segments_dir, ignore_errors=True)
        self._segments = []
