"""Render a drive and record it; the function behind `segfuse sim`."""
from __future__ import annotations

import logging
import os
import sys
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
    """Two render processes from 24 frames on (forked workers, measured on the 2-core machine:
    even with one process at 20 frames, 1.16x at 30; spawned workers needed ~40)."""
    return max(1, min(2, os.cpu_count() or 1)) if frames >= 24 else 1


def simulate(out: str | Path, *, frames: int, seed: int = 0, fmt: str = "rosbag2", scale: float = 1.0,
             overwrite: bool = False, progress: bool = True, workers: int | None = None,
             start_method: str | None = None) -> SimSummary:
    """Render `frames` frames of drive `seed` and record them atomically at `out`.

    ``workers`` > 1 renders frames in that many processes (Open3D's ray casting holds the GIL,
    so threads cannot use a second core); the frames come back in order, so the drive is
    identical whatever the number of workers. ``start_method``: fork (the default where the
    platform has it) or spawn.
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
            _rendered(sim, workers, start_method) as rendered:
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


def _one_thread_each() -> None:
    """The workers already fill the cores: Open3D's ray-casting threads and OpenBLAS's on top
    of them only contend. OpenBLAS's idle threads spin, which cost ~110 ms of CPU per frame
    (421 vs 305 ms, measured) when the other core is busy."""
    from threadpoolctl import threadpool_limits

    _WORKER["blas_limit"] = threadpool_limits(1)


def _init_worker(seed: int, frames: int, config) -> None:
    """Spawned worker: rebuild the same world from the seed."""
    from pipeline.sim.generate import Simulator

    _one_thread_each()
    _WORKER["sim"] = Simulator(seed, frames, config, threads=1)


def _init_forked_worker() -> None:
    """Forked worker: the parent's world is already here (set before the fork; the parent has
    built no ray-casting scene); this process builds its own, with one thread."""
    _one_thread_each()
    _WORKER["sim"].threads = 1


def _render_in_worker(index: int):
    return _WORKER["sim"].render(index).frame


@contextmanager
def _rendered(sim, workers: int, start_method: str | None = None):
    """Yields an iterator of the drive's frames in order, rendered here or in worker processes.

    Workers are forked where the platform can (Linux) and this process has not loaded Open3D
    (its thread pool is not fork-safe): they inherit the world the parent has built and the
    modules it has imported, which saves their start-up; otherwise they are spawned and
    rebuild the world from the seed. The arrays are the same either way.
    """
    if workers == 1 or sim.num_frames < 4:
        yield (sf.frame for sf in sim.frames())
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if start_method is None:
        can_fork = "fork" in multiprocessing.get_all_start_methods() and "open3d" not in sys.modules
        start_method = "fork" if can_fork else "spawn"
    if start_method not in ("fork", "spawn"):
        raise ConfigError(f"start method must be fork or spawn, got {start_method!r}", field="start_method")
    log.debug("rendering in %d %s workers", workers, start_method)
    if start_method == "fork" and sim._renderer is None:
        _WORKER["sim"] = sim
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_init_forked_worker)
    else:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(sim.seed, sim.num_frames, sim.config))
    with pool:
        try:
            yield pool.map(_render_in_worker, range(sim.num_frames))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            _WORKER.pop("sim", None)
