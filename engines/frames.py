"""Frames for calibration, export checks and backend comparisons.

- ``iter_frames(source)``: camera images from a recorded drive (``pipeline.drive.open_drive``),
  a folder of images, or a single image file.
- ``check_calibration_frames``: INT8 calibration refuses data that cannot represent real
  activations: too few frames, noise (no spatial correlation, near-uniform histogram),
  blank frames, or one image repeated.
- ``procedural_frames``: smooth structured road-like scenes rendered from a seed, for
  tests and the export check when no drive is given. They are not calibration data for a
  real deployment (the quantizer only accepts them with an explicit reduced frame count).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from pipeline.errors import InputDataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")
DEFAULT_MIN_CALIBRATION_FRAMES = 500


# --- sources ------------------------------------------------------------------------------

def _image_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return files


def _read_image(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputDataError("cannot decode image", path=path)
    return image


def is_drive(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".mcap"
    return ((path / "metadata.yaml").is_file() or any(path.glob("*.mcap"))
            or (path / "image_02").is_dir() or (path / "velodyne_points").is_dir())


def iter_drive_frames(path: str | Path, *, stride: int = 1, limit: int | None = None) -> Iterator[np.ndarray]:
    """Camera images (BGR uint8) of a recorded drive, through the pipeline's drive reader.
    Thin adapter over ``pipeline.drive.open_drive(path)`` -> frames with ``.camera.image``."""
    try:
        from pipeline.drive import io as drive_io
    except ImportError as exc:  # pragma: no cover - the drive reader is part of segfuse
        raise InputDataError(f"the drive reader is not available ({exc})", path=path) from exc
    drive = drive_io.open_drive(path)
    count = 0
    try:
        frames = drive.frames(on_error="skip") if hasattr(drive, "frames") else iter(drive)
        for i, frame in enumerate(frames):
            if i % stride:
                continue
            yield frame.camera.image
            count += 1
            if limit is not None and count >= limit:
                break
    finally:
        close = getattr(drive, "close", None)
        if close:
            close()


def iter_frames(source: str | Path, *, stride: int = 1, limit: int | None = None) -> Iterator[np.ndarray]:
    """BGR uint8 frames from a drive, a folder of images (searched recursively) or one image."""
    path = Path(source)
    if not path.exists():
        raise InputDataError("frame source not found (a drive folder, an image folder or an image)", path=path)
    stride = max(1, int(stride))
    if is_drive(path):
        yield from iter_drive_frames(path, stride=stride, limit=limit)
        return
    files = [path] if path.is_file() else _image_files(path)
    if not files:
        raise InputDataError("no images found (and not a drive: no metadata.yaml, .mcap or image_02/)", path=path)
    for n, f in enumerate(files[::stride]):
        if limit is not None and n >= limit:
            break
        yield _read_image(f)


def load_frames(source: str | Path, *, stride: int = 1, limit: int | None = None) -> list[np.ndarray]:
    return list(iter_frames(source, stride=stride, limit=limit))


# --- noise / validity checks --------------------------------------------------------------

@dataclass(frozen=True)
class FrameStats:
    neighbour_corr: float        # correlation of horizontally/vertically adjacent pixels (downsampled)
    hist_entropy: float          # entropy of the 64-bin grey histogram / log(64), 1.0 = uniform
    std: float                   # grey-level standard deviation

    @property
    def verdict(self) -> str | None:
        """None if the frame looks like a camera image, else why not."""
        if self.std < 2.0:
            return "blank (constant) image"
        if self.neighbour_corr < 0.3:
            return f"noise: adjacent pixels uncorrelated (r={self.neighbour_corr:.2f})"
        if self.hist_entropy > 0.985 and self.neighbour_corr < 0.6:
            return (f"noise: near-uniform histogram (entropy {self.hist_entropy:.3f}) with weak spatial "
                    f"correlation (r={self.neighbour_corr:.2f})")
        return None


def frame_stats(image: np.ndarray) -> FrameStats:
    import cv2

    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    hist = np.bincount((grey.ravel() >> 2).astype(np.int64), minlength=64).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    entropy = float(-(p * np.log(p)).sum() / np.log(64))
    h, w = grey.shape[:2]
    scale = min(1.0, 256.0 / max(h, w))
    if scale < 1.0:
        grey = cv2.resize(grey, (max(2, int(w * scale)), max(2, int(h * scale))), interpolation=cv2.INTER_AREA)
    g = grey.astype(np.float64)
    std = float(g.std())

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
        denom = np.sqrt((a * a).sum() * (b * b).sum())
        return float((a * b).sum() / denom) if denom > 0 else 1.0

    r = 0.5 * (corr(g[:, :-1], g[:, 1:]) + corr(g[:-1, :], g[1:, :]))
    return FrameStats(r, entropy, std)


def check_calibration_frames(frames: Sequence[np.ndarray], *, min_frames: int = DEFAULT_MIN_CALIBRATION_FRAMES,
                             source: str | Path | None = None, max_bad_fraction: float = 0.02,
                             verdicts: Sequence[str | None] | None = None) -> None:
    """Refuse calibration data that would ruin INT8 scales; InputDataError names the frame.
    ``verdicts``: per-frame ``FrameStats.verdict`` computed earlier (on the full-size frames)."""
    where = source if source is not None else "<calibration frames>"
    if len(frames) < min_frames:
        raise InputDataError(f"{len(frames)} calibration frames, at least {min_frames} needed (INT8 scales from "
                             "too few frames clip real activations; lower --min-frames only for tests)",
                             path=where, field="frames")
    bad = []
    for i, image in enumerate(frames):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputDataError("calibration frames must be (H, W, 3) uint8 BGR camera images", path=where,
                                 field=f"frames[{i}]")
        verdict = verdicts[i] if verdicts is not None else frame_stats(image).verdict
        if verdict:
            bad.append((i, verdict))
    if len(bad) > max_bad_fraction * len(frames):
        i, why = bad[0]
        raise InputDataError(f"{len(bad)} of {len(frames)} frames do not look like camera images (first: frame "
                             f"{i}, {why}); calibrate on frames from recorded drives, not random data",
                             path=where, field=f"frames[{i}]")
    # one image repeated: no diversity, the scales fit one frame
    small = [np.asarray(f[:: max(1, f.shape[0] // 32), :: max(1, f.shape[1] // 32)], np.int16) for f in frames[:64]]
    if len(small) > 1 and all(s.shape == small[0].shape and np.abs(s - small[0]).mean() < 1.0 for s in small[1:]):
        raise InputDataError(f"the first {len(small)} calibration frames are the same image; calibrate on a drive",
                             path=where, field="frames")


# --- procedural scenes ------------------------------------------------------------------

def procedural_frames(n: int, hw: tuple[int, int] = (375, 1242), seed: int = 0) -> list[np.ndarray]:
    """``n`` smooth, structured road scenes (BGR uint8): sky, buildings, trees, road with lane
    markings and a few vehicles, blurred, with mild sensor noise. Deterministic for a seed."""
    return [render_scene(hw, np.random.default_rng([seed, i])) for i in range(n)]


def render_scene(hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    import cv2

    h, w = int(hw[0]), int(hw[1])
    img = np.zeros((h, w, 3), np.float32)
    horizon = int(h * rng.uniform(0.35, 0.5))
    yy = np.linspace(0, 1, horizon, dtype=np.float32)[:, None]
    sky_top = np.array([rng.uniform(150, 200), rng.uniform(110, 150), rng.uniform(60, 100)], np.float32)
    sky_bot = np.array([235, 215, 200], np.float32)
    img[:horizon] = sky_top * (1 - yy[..., None]) + sky_bot * yy[..., None]
    ground = np.array([rng.uniform(60, 90)] * 3, np.float32) + rng.uniform(-8, 8, 3).astype(np.float32)
    img[horizon:] = ground
    # buildings and trees along the horizon
    x = 0
    while x < w:
        bw = int(rng.uniform(0.05, 0.15) * w)
        bh = int(rng.uniform(0.1, 0.3) * h)
        if rng.random() < 0.6:
            colour = rng.uniform(60, 180, 3)
            cv2.rectangle(img, (x, horizon - bh), (x + bw, horizon + 4), colour.tolist(), -1)
            for wy in range(horizon - bh + 6, horizon - 6, 14):
                for wx in range(x + 5, x + bw - 8, 14):
                    cv2.rectangle(img, (wx, wy), (wx + 6, wy + 7), (colour * 0.5).tolist(), -1)
        else:
            cv2.ellipse(img, (x + bw // 2, horizon - bh // 3), (bw // 2, bh // 2), 0, 0, 360,
                        (rng.uniform(30, 60), rng.uniform(100, 150), rng.uniform(40, 80)), -1)
        x += bw + int(rng.uniform(0, 0.05) * w)
    # road trapezoid, sidewalk edges and lane markings
    vx = w * rng.uniform(0.4, 0.6)
    road = np.array([[vx - 0.02 * w, horizon], [vx + 0.02 * w, horizon], [w * 1.1, h], [-0.1 * w, h]], np.int32)
    cv2.fillPoly(img, [road], (rng.uniform(80, 110),) * 3)
    for side in (-1, 1):
        x_bot = vx + side * 0.55 * w
        cv2.line(img, (int(vx + side * 0.02 * w), horizon), (int(x_bot), h), (200, 200, 205), max(2, w // 200))
    for t0 in np.arange(0.0, 1.0, 0.12):
        t1 = t0 + 0.06
        y0, y1 = horizon + (h - horizon) * t0 ** 1.5, horizon + (h - horizon) * t1 ** 1.5
        cv2.line(img, (int(vx), int(y0)), (int(vx), int(y1)), (240, 240, 240), max(1, int(1 + 6 * t1)))
    # vehicles: boxes with windows and wheels, bigger when lower in the image
    for _ in range(int(rng.integers(1, 5))):
        t = rng.uniform(0.1, 0.9)
        cy = horizon + (h - horizon) * t
        size = (0.03 + 0.2 * t) * w * 0.4
        cx = vx + rng.uniform(-0.6, 0.6) * (0.55 * w * t + 0.05 * w)
        x0, x1 = int(cx - size), int(cx + size)
        y0, y1 = int(cy - size * 0.9), int(cy)
        body = rng.uniform(20, 230, 3)
        cv2.rectangle(img, (x0, y0), (x1, y1), body.tolist(), -1)
        cv2.rectangle(img, (x0 + (x1 - x0) // 6, y0 + 3), (x1 - (x1 - x0) // 6, y0 + (y1 - y0) // 3),
                      (40, 40, 50), -1)
        r = max(2, (x1 - x0) // 8)
        for wx in (x0 + r, x1 - r):
            cv2.circle(img, (wx, y1), r, (20, 20, 20), -1)
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=max(0.8, w / 800))
    img += rng.normal(0, 2.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def take(frames: Iterable[np.ndarray], n: int) -> list[np.ndarray]:
    out = []
    for f in frames:
        out.append(f)
        if len(out) >= n:
            break
    return out
