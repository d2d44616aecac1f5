"""The tracker's cost per frame with 50 tracks (target <= 1 ms, issue #16), beside the L-shape
box fit's cost per object. Printed, not asserted: 50 cars moving in a 100 m square, one
detection each per frame with 0.1 m noise, the ego driving at 10 m/s; 200 frames after a
20-frame warm-up, single thread."""
from __future__ import annotations

import time

import numpy as np

TRACKS = 50
FRAMES = 200


def main() -> None:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        _run()


def _run() -> None:
    from pipeline.config import load_taxonomy
    from pipeline.fusion.shape import fit_box
    from pipeline.tracking import Tracker, TrackerConfig
    from pipeline.types import Object3D

    tax = load_taxonomy()
    car = tax.id("car")
    rng = np.random.default_rng(0)
    start = rng.uniform(-50, 50, (TRACKS, 2))
    vel = rng.uniform(-10, 10, (TRACKS, 2))
    tracker = Tracker(TrackerConfig(), tuple(tax.names))
    times, cpu = [], []
    counts = []
    for k in range(FRAMES + 20):
        t = k * 0.1
        T = np.eye(4)
        T[0, 3] = 10.0 * t
        xy = start + vel * t + rng.normal(0, 0.1, (TRACKS, 2)) - T[:2, 3]
        objs = [Object3D(i, car, 0.9, np.r_[p, 0.75], np.r_[p, 0.75], np.array([4.4, 1.8, 1.5]), 0.0, 10.0, 100)
                for i, p in enumerate(xy)]
        t0, c0 = time.perf_counter(), time.thread_time()
        out = tracker.update(objs, int(k * 1e8), T)
        dt, dc = time.perf_counter() - t0, time.thread_time() - c0
        if k >= 20:
            times.append(dt)
            cpu.append(dc)
            counts.append(len(out))
    a = np.array(times) * 1e3
    c = np.array(cpu) * 1e3
    print(f"tracker, {TRACKS} objects per frame ({np.mean(counts):.0f} confirmed tracks): "
          f"p50 {np.percentile(a, 50):.3f} ms, p90 {np.percentile(a, 90):.3f} ms, mean {a.mean():.3f} ms per frame "
          f"(target <= 1 ms); CPU time of the thread: p50 {np.percentile(c, 50):.3f} ms, mean {c.mean():.3f} ms "
          f"(wall time includes waiting for a core on a busy machine)")
    pts = np.column_stack([rng.uniform(10, 14.4, 400), rng.uniform(-0.9, 0.9, 400), rng.uniform(0, 1.5, 400)])
    pts[:200, 1] = -0.9
    pts[200:, 0] = 10.0
    fit_box(pts, "car")
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(50):
        fit_box(pts, "car")
    print(f"L-shape box fit, 400 points: {(time.perf_counter() - t0) / 50 * 1e3:.2f} ms per object wall, "
          f"{(time.thread_time() - c0) / 50 * 1e3:.2f} ms CPU")
