"""The one overlay module: drawing on camera frames (LiDAR points coloured by depth or class,
masks, labels) and the overlay video sink: the camera frame with the semantic mask blended in,
LiDAR points coloured by their fused class, objects labelled with class and range, tracks with
their id, speed and a short trail, and a banner (frame, mask provider, LiDAR missing).
``draw_overlay`` is a plain function; ``OverlayVideo`` writes an MP4 in closed segments, so a
killed run leaves a playable video (and the first frame as a PNG)."""
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
    draw_tracks(img, getattr(result, "tracks", []), camera)
    return img


def draw_tracks(img: np.ndarray, tracks: list, camera: Any) -> None:
    """In place: each track's trail (its last centres, base frame) and a label ``#id speed``."""
    import cv2

    from calibration.projection import project_lidar

    T_cam_from_base = np.linalg.inv(camera.T_base_from_cam)
    for t in tracks:
        if t.trail_base is None or not len(t.trail_base):
            continue
        pts = np.asarray(t.trail_base, np.float32)
        p = project_lidar(pts @ T_cam_from_base[:3, :3].T.astype(np.float32) + T_cam_from_base[:3, 3].astype(np.float32),
                          np.eye(4), camera.model, min_depth_m=1.0)
        if not p.count:
            continue
        uv = p.pixels.astype(np.int32)
        color = (0, 255, 255) if t.misses == 0 else (0, 160, 255)          # coasting: orange
        if len(uv) > 1:
            cv2.polylines(img, [uv.reshape(-1, 1, 2)], False, color, 2, cv2.LINE_AA)
        if p.index[-1] == len(pts) - 1:                                     # the current centre is in view
            u, v = uv[-1]
            cv2.circle(img, (int(u), int(v)), 3, color, -1, cv2.LINE_AA)
            _text(img, f"#{t.track_id} {t.speed_mps:.1f} m/s", (int(u) - 30, int(v) + 16), color=color)


MOSAIC_PANEL_WIDTH = 640            # px per panel of a camera-set overlay


def mosaic(panels: list[np.ndarray], *, panel_width: int = MOSAIC_PANEL_WIDTH, columns: int = 3) -> np.ndarray:
    """Panels (BGR, any sizes) scaled to ``panel_width`` and laid out row by row; nuScenes' six
    cameras in their file order make two rows of three."""
    import cv2

    if len(panels) == 1:
        return panels[0]
    cols = min(columns, len(panels))
    scaled = []
    for p in panels:
        h = int(round(p.shape[0] * panel_width / p.shape[1]))
        scaled.append(cv2.resize(p, (panel_width, h), interpolation=cv2.INTER_AREA))
    ph = max(p.shape[0] for p in scaled)
    rows = -(-len(scaled) // cols)
    out = np.zeros((rows * ph, cols * panel_width, 3), np.uint8)
    for k, p in enumerate(scaled):
        r, c = divmod(k, cols)
        out[r * ph:r * ph + p.shape[0], c * panel_width:(c + 1) * panel_width] = p
    return out


NUSCENES_PANEL_ORDER = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")


def draw_overlay(result: FrameResult, camera: Any, taxonomy: Any, *, masks_label: str,
                 mask_alpha: float = 0.35, rig: Any = None, note: str | None = None) -> np.ndarray:
    """One overlay frame of a FrameResult. ``camera``: the rig's CameraSensor or None. A camera
    set (several cameras, ``rig`` given) becomes a mosaic of one panel per camera
    (``mosaic``; nuScenes cameras in the devkit's layout), the banner over it;
    ``note`` is a line under the banner (the synthetic-only models note)."""
    frames = result.frame.cameras
    if result.frame.rig is not None:                 # per-frame calibration (KITTI object)
        rig = result.frame.rig
        camera = rig.camera(frames[0].camera_id) if frames[0].camera_id in rig.camera_names else camera
    if len(frames) > 1 and rig is not None:
        order = {n: k for k, n in enumerate(NUSCENES_PANEL_ORDER)}
        panels = []
        for f in sorted(frames, key=lambda f: order.get(f.camera_id, len(order))):
            cam = rig.camera(f.camera_id) if f.camera_id in rig.camera_names else None
            p = _draw_camera(result, f, cam, taxonomy, mask_alpha)
            _text(p, f.camera_id, (6, p.shape[0] - 10), scale=0.9)
            panels.append(p)
        img = mosaic(panels)
    else:
        img = _draw_camera(result, frames[0], camera, taxonomy, mask_alpha)
    _text(img, f"frame {result.index}  masks: {masks_label}", (6, 16))
    y = 34
    if result.lidar_missing:
        _text(img, "LiDAR missing: camera only", (6, y), color=(0, 0, 255))
        y += 18
    if note:
        _text(img, f"NOTE: {note}", (6, y), color=(0, 215, 255), scale=0.4)
    return img


def _draw_camera(result: FrameResult, frame: Any, camera: Any, taxonomy: Any, mask_alpha: float) -> np.ndarray:
    import cv2

    img = frame.image
    sem = result.masks.semantic.get(frame.camera_id)
    if sem is not None and mask_alpha > 0:
        img = cv2.addWeighted(img, 1.0 - mask_alpha, taxonomy.color_lut()[sem.class_ids], mask_alpha, 0.0)
    if result.fusion is not None and camera is not None:
        return draw_fusion(img, result.fusion, camera, taxonomy)
    return img.copy()


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
                 note: str | None = None, segment_frames: int | None = None) -> None:
        self.video_path = Path(out_dir) / f"{name}.mp4"
        self.first_path = Path(out_dir) / f"{name}_first.png"
        self.camera = rig.camera(camera_id) if rig is not None and camera_id in rig.camera_names else None
        self.rig = rig
        self.note = note
        self._size: tuple[int, int] | None = None
        self.taxonomy = taxonomy
        self.fps = float(fps)
        self.masks_label = masks_label
        self.mask_alpha = mask_alpha
        self.segment_frames = int(segment_frames or 10)
        self.segments_dir = Path(out_dir) / f".{name}.segments"
        self._video = None
        self._segment_n = 0
        self._segments: list[Path] = []
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
        img = draw_overlay(result, self.camera, self.taxonomy, masks_label=self.masks_label, mask_alpha=self.mask_alpha,
                           rig=self.rig, note=self.note)
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
