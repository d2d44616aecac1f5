"""Occlusion-aware fusion of a ~120k-point cloud into a 1242x375 camera, single thread, against
a plain numpy projection-and-lookup with no depth test (written here, as a user would), and
ego-motion compensation throughput."""
from __future__ import annotations

import os
import time

import numpy as np

REPEATS = 30


def _baseline(points: np.ndarray, T_cam_from_lidar: np.ndarray, K: np.ndarray, semantic: np.ndarray,
              instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a plain numpy fusion looks like: homogeneous transform, pinhole projection, bounds
    check, mask lookup. No depth test."""
    H, W = semantic.shape
    hom = np.hstack([points[:, :3], np.ones((len(points), 1), points.dtype)])
    cam = (T_cam_from_lidar @ hom.T).T
    in_front = cam[:, 2] > 1.0
    uvw = (K @ cam[:, :3].T).T
    u = np.round(uvw[:, 0] / uvw[:, 2]).astype(np.int64)
    v = np.round(uvw[:, 1] / uvw[:, 2]).astype(np.int64)
    ok = in_front & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    cls = np.full(len(points), 255, np.uint8)
    inst = np.full(len(points), -1, np.int32)
    cls[ok] = semantic[v[ok], u[ok]]
    inst[ok] = instances[v[ok], u[ok]]
    return cls, inst


def _timeit(fn, repeats: int = REPEATS) -> np.ndarray:
    fn()  # warm-up (and numba compile)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return np.array(out)


def main() -> None:
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    from calibration.motion import compensate_ego_motion
    from calibration.rig import rig_from_drive_calib
    from pipeline.fusion.config import FusionConfig
    from pipeline.fusion.label import CameraView, InstanceMap, fuse
    from pipeline.sim.generate import Simulator

    sim = Simulator(seed=5, num_frames=2)
    f = sim.render(0).frame
    rig = rig_from_drive_calib(sim.calib)
    cam = rig.cameras[0]
    T = rig.T_cam_from_lidar()
    pts = f.lidar.points
    inst_map = InstanceMap.from_id_image(f.instance, f.semantic)
    view = CameraView(cam.name, cam.model, T, f.semantic, inst_map)
    cfg = FusionConfig(ego_motion=False)
    ours = _timeit(lambda: fuse(pts, [view], cfg))
    base = _timeit(lambda: _baseline(pts, T, sim.calib.K, f.semantic, f.instance))
    n = len(pts)
    print(f"points: {n:,}  camera: {cam.width}x{cam.height}  single thread, {REPEATS} runs, median")
    print(f"{'':38}{'ms/cloud':>10}{'Mpoints/s':>11}")
    print(f"{'ours: project + z-buffer + lookup':38}{np.median(ours) * 1e3:>10.2f}{n / np.median(ours) / 1e6:>11.1f}")
    print(f"{'baseline: numpy project + lookup':38}{np.median(base) * 1e3:>10.2f}{n / np.median(base) / 1e6:>11.1f}")
    print(f"ratio (ours throughput / baseline): {np.median(base) / np.median(ours):.2f}x   (target >= 1.5x)")

    comp = _timeit(lambda: compensate_ego_motion(pts, f.lidar.stamp_ns, f.lidar.t_offset_ns, f.pose_stamps_ns,
                                                 f.T_world_from_base, sim.calib.T_base_from_lidar, f.camera.stamp_ns))
    print(f"ego-motion compensation: {np.median(comp) * 1e3:.2f} ms/cloud, {n / np.median(comp) / 1e6:.1f} Mpoints/s")
