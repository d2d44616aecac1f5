"""Synthetic drive generation: frames per second for camera (1242x375) plus LiDAR (64 x 2000)
with all ground truth, rendered and recorded as rosbag2/MCAP, against the target of 5 frames/s
on a 2-core machine."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

TARGET_FPS = 5.0
FRAMES = 48


def main() -> None:
    from pipeline.sim.generate import Simulator
    from pipeline.sim.simulate import default_workers, simulate

    sim = Simulator(seed=3, num_frames=FRAMES)
    sim.render(0)
    t0 = time.perf_counter()
    for i in range(1, 9):
        sim.render(i)
    render_fps = 8 / (time.perf_counter() - t0)
    workers = default_workers(FRAMES)
    with tempfile.TemporaryDirectory() as tmp:
        s1 = simulate(Path(tmp) / "one", frames=FRAMES, seed=3, progress=False, workers=1)
        sN = simulate(Path(tmp) / "many", frames=FRAMES, seed=3, progress=False, workers=workers)
    print(f"{FRAMES} frames, 1242x375 camera + 64x2000 LiDAR + ground truth; whole runs incl. world build and writing")
    print(f"{'':44}{'frames/s':>10}{'vs target':>11}")
    print(f"{'render only, 1 process (warm)':44}{render_fps:>10.2f}{render_fps / TARGET_FPS:>10.2f}x")
    print(f"{'segfuse sim, 1 process':44}{s1.frames_per_s:>10.2f}{s1.frames_per_s / TARGET_FPS:>10.2f}x")
    print(f"{f'segfuse sim, {workers} processes (default here)':44}{sN.frames_per_s:>10.2f}{sN.frames_per_s / TARGET_FPS:>10.2f}x")
    print(f"target: {TARGET_FPS:.0f} frames/s on this 2-core machine "
          f"(whole runs include ~2 s of start-up: world build, Open3D scene, worker processes)")
