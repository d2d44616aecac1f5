"""Render a drive and record it; the function behind `segfuse sim`."""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

FORMATS = ("rosbag2", "kitti-raw")


@dataclass
class SimSummary:
    out: Path
    fmt: str
    frames: int
    seed: int
    seconds: float
    points_per_frame: float
    class_pixels: dict[str, int] = field(default_factory=dict)
    class_points: dict[str, int] = field(default_factory=dict)
    instances: int = 0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")

    def render(self) -> str:
        lines = [f"segfuse sim: {self.frames} frames (seed {self.seed}) -> {self.out} [{self.fmt}]",
                 f"  {self.seconds:.1f} s, {self.frames_per_s:.2f} frames/s, {self.points_per_frame:,.0f} LiDAR points/frame, "
                 f"{self.instances} distinct instances seen",
                 f"  {'class':<14}{'pixels':>14}{'points':>12}"]
        for name in self.class_pixels:
            lines.append(f"  {name:<14}{self.class_pixels[name]:>14,}{self.class_points.get(name, 0):>12,}")
        return "\n".join(lines)


def check_params(out: str | Path, frames: int, seed: int, fmt: str, overwrite: bool) -> Path:
    if not isinstance(frames, int) or frames <= 0:
        raise ConfigError(f"must be a positive number of frames, got {frames}", field="--frames")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})", field="--format")
    if seed < 0:
        raise ConfigError(f"must be >= 0, got {seed}", field="--seed")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError("output already exists (choose another path or pass --overwrite)", path=out, field="--out")
    return out


def default_workers(frames: int) -> int:
    """Two render processes pay for their ~2 s start-up from about 40 frames on (measured on the
    2-core machine: 1.2x at 60 frames, slower than one process at 24)."""
    return max(1, min(2, os.cpu_count() or 1)) if frames >= 40 else 1


def simulate(out: str | Path, *, frames: int, seed: int = 0, fmt: str = "rosbag2", scale: float = 1.0,
             overwrite: bool = False, progress: bool = True, workers: int | None = None) -> SimSummary:
    """Render `frames` frames of drive `seed` and record them atomically at `out`.

    ``workers`` > 1 renders frames in that many processes (Open3D's ray casting holds the GIL,
    so threads cannot use a second core); each rebuilds the same world from the seed and the
    frames come back in order, so the drive is identical whatever the number of workers.
    """
    from tqdm import tqdm

    from pipeline.drive.io import open_writer
    from pipeline.sim.generate import SimConfig, Simulator

    out = check_params(out, frames, seed, fmt, overwrite)
    if not 0.05 <= scale <= 2.0:
        raise ConfigError(f"must be within 0.05..2, got {scale}", field="--scale")
    workers = default_workers(frames) if workers is None else workers
    if workers < 1:
        raise ConfigError(f"must be >= 1, got {workers}", field="--workers")
    config = SimConfig() if scale == 1.0 else SimConfig().scaled(scale)
    t0 = time.perf_counter()
    sim = Simulator(seed, frames, config)
    tax = sim.taxonomy
    pix = np.zeros(tax.num_classes, np.int64)
    pts = np.zeros(tax.num_classes, np.int64)
    n_points = 0
    instances: set[int] = set()
    with open_writer(out, sim.calib, sim.meta, format=fmt, overwrite=overwrite) as writer, \
            _rendered(sim, workers) as rendered:
        for f in tqdm(rendered, total=frames, desc="sim", unit="frame", disable=not progress):
            writer.write(f)
            pix += np.bincount(f.semantic.reshape(-1), minlength=tax.num_classes)[: tax.num_classes]
            pts += np.bincount(f.point_class, minlength=tax.num_classes)[: tax.num_classes]
            n_points += len(f.lidar.points)
            instances.update(np.unique(f.instance).tolist())
    instances.discard(0)
    seconds = time.perf_counter() - t0
    summary = SimSummary(out, fmt, frames, seed, seconds, n_points / frames,
                         {n: int(pix[i]) for i, n in enumerate(tax.names)},
                         {n: int(pts[i]) for i, n in enumerate(tax.names)}, len(instances))
    log.info("wrote %s (%d frames, %.2f frames/s)", out, frames, summary.frames_per_s)
    return summary


# -- rendering in worker processes ----------------------------------------------------------
_WORKER: dict = {}


def _init_worker(seed: int, frames: int, config) -> None:
    from pipeline.sim.generate import Simulator

    # one ray-casting thread per worker: the workers already fill the cores, and Open3D's own
    # threads on top of them only contend
    _WORKER["sim"] = Simulator(seed, frames, config, threads=1)


def _render_in_worker(index: int):
    return _WORKER["sim"].render(index).frame


@contextmanager
def _rendered(sim, workers: int):
    """Yields an iterator of the drive's frames in order, rendered here or in worker processes."""
    if workers == 1 or sim.num_frames < 4:
        yield (sf.frame for sf in sim.frames())
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(sim.seed, sim.num_frames, sim.config)) as pool:
        try:
            yield pool.map(_render_in_worker, range(sim.num_frames))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
