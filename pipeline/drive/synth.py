"""Made-up drives for tests and the writer/reader benchmark (not the simulator: the arrays
are noise with the right shapes, dtypes, stamps and pose windows).

    python -m pipeline.drive.synth            # benchmark full-size frames in both formats
"""
from __future__ import annotations

import argparse
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.drive.common import POSE_MARGIN_NS, SWEEP_PERIOD_NS
from pipeline.drive.types import DriveCalib, DriveFrame, DriveMeta
from pipeline.types import Box3D, CameraFrame, LaneBoundaryGT, LidarSweep

log = logging.getLogger(__name__)

T0_NS = 1_700_000_000_123_456_789     # 2023-11-14, odd nanoseconds on purpose
POSE_STEP_NS = 10_000_000             # 100 Hz


def make_calib(width: int = 64, height: int = 48, *, dist: bool = False) -> DriveCalib:
    K = np.array([[0.9 * width, 0.0, width / 2 - 0.5], [0.0, 0.9 * width, height / 2 + 0.25], [0.0, 0.0, 1.0]])
    # optical (x right, y down, z forward) -> base_link (x forward, y left, z up), slightly pitched
    R_base_from_opt = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    a = math.radians(2.0)
    R_pitch = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    T_cam = np.eye(4)
    T_cam[:3, :3] = R_pitch @ R_base_from_opt
    T_cam[:3, 3] = [1.6, 0.05, 1.55]
    T_lidar = np.eye(4)
    b = math.radians(-1.5)
    T_lidar[:3, :3] = [[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]]
    T_lidar[:3, 3] = [1.2, 0.0, 1.8]
    d = np.array([-0.1, 0.02, 0.001, -0.002, 0.0005]) if dist else np.zeros(5)
    return DriveCalib("camera_front", width, height, K, d, T_cam, "lidar_top", T_lidar)


def make_meta(num_frames: int, seed: int = 7) -> DriveMeta:
    return DriveMeta(seed=seed, num_frames=num_frames, rate_hz=10.0,
                     extra={"lighting": "dusk", "scene": {"cars": 3}})


def ego_pose(stamp_ns: int) -> np.ndarray:
    """A smooth made-up trajectory: 10 m/s along a gentle left curve, a little pitch and roll."""
    t = (stamp_ns - T0_NS) / 1e9
    yaw = 0.3 + 0.05 * t
    T = np.eye(4)
    cy, sy = math.cos(yaw), math.sin(yaw)
    p, r = 0.01 * math.sin(t), 0.005 * math.cos(t)
    Ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
    Rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
    T[:3, :3] = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]]) @ Ry @ Rx
    T[:3, 3] = [100.0 + 10 * t * math.cos(yaw), -50.0 + 10 * t * math.sin(yaw), 0.2 * t]
    return T


def make_frame(calib: DriveCalib, index: int, num_points: int = 3000, *, seed: int = 0,
               gt: bool = True, t_offsets: bool = True, camera_delay_ns: int = 50_000_123) -> DriveFrame:
    rng = np.random.default_rng(seed * 1000 + index)
    lidar_ns = T0_NS + index * SWEEP_PERIOD_NS
    cam_ns = lidar_ns + camera_delay_ns
    h, w = calib.height, calib.width
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    points = (rng.standard_normal((num_points, 4)) * [20, 20, 2, 0.3]).astype(np.float32)
    t_off = np.sort(rng.integers(0, SWEEP_PERIOD_NS, num_points)).astype(np.int64) if t_offsets else None
    # poses on a global 100 Hz grid covering the frame's window (neighbours overlap)
    start, end = lidar_ns - POSE_MARGIN_NS, max(cam_ns, lidar_ns + SWEEP_PERIOD_NS) + POSE_MARGIN_NS
    first = -(-(start - T0_NS) // POSE_STEP_NS) * POSE_STEP_NS + T0_NS
    stamps = np.arange(first, end + 1, POSE_STEP_NS, dtype=np.int64)
    Ts = np.stack([ego_pose(int(s)) for s in stamps])
    boxes, lanes = [], []
    semantic = instance = point_class = point_instance = None
    if gt:
        semantic = rng.integers(0, 11, (h, w), dtype=np.uint8)
        instance = rng.integers(0, 70000, (h, w)).astype(np.uint16)
        point_class = rng.integers(0, 11, num_points).astype(np.uint8)
        point_instance = rng.integers(0, 65536, num_points).astype(np.uint16)
        boxes = [Box3D(instance_id=1000 + k, class_id=[6, 8, 9][k % 3],
                       center=rng.standard_normal(3) * 10, size=np.abs(rng.standard_normal(3)) + 1,
                       yaw=float(rng.uniform(-math.pi, math.pi))) for k in range(3)]
        lanes = [LaneBoundaryGT(lane_id=k, type=["solid", "dashed"][k % 2],
                                points_base=np.cumsum(rng.standard_normal((12, 3)), axis=0))
                 for k in range(2)]
    return DriveFrame(index=index, camera=CameraFrame(calib.camera_id, cam_ns, image),
                      lidar=LidarSweep(calib.lidar_id, lidar_ns, points, t_off), semantic=semantic,
                      instance=instance, point_class=point_class, point_instance=point_instance, boxes=boxes,
                      lanes=lanes, pose_stamps_ns=stamps, T_world_from_base=Ts)


def _realistic_frame(calib: DriveCalib, index: int, num_points: int) -> DriveFrame:
    """A full-size frame whose arrays compress like rendered ones (smooth image, flat masks,
    a scan-like cloud), for timing."""
    frame = make_frame(calib, index, num_points, gt=True)
    h, w = calib.height, calib.width
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 0.2 + yy * 0.5 + index) % 256, (xx * 0.1) % 256, (yy * 0.6) % 256], axis=2)
    noise = np.random.default_rng(index).integers(0, 8, (h, w, 3))
    frame.camera.image = (img + noise).astype(np.uint8)
    frame.semantic = ((yy // 40 + xx // 200) % 11).astype(np.uint8)
    frame.instance = np.where((xx // 150) % 3 == 0, 1000 + xx // 150, 0).astype(np.uint16)
    az = np.linspace(-math.pi, math.pi, num_points, endpoint=False)
    ring = np.arange(num_points) % 64
    rng = np.random.default_rng(index)
    r = 5 + 40 * rng.random(num_points)
    pts = np.stack([r * np.cos(az), r * np.sin(az), -1.7 + 0.03 * ring * r / 10, rng.random(num_points)], axis=1)
    frame.lidar.points = pts.astype(np.float32)
    frame.lidar.t_offset_ns = ((az + math.pi) / (2 * math.pi) * SWEEP_PERIOD_NS).astype(np.int64)
    frame.point_class = (ring % 11).astype(np.uint8)
    frame.point_instance = np.where(ring < 5, 1000 + ring, 0).astype(np.uint16)
    return frame


def benchmark(num_frames: int = 10, num_points: int = 120_000, width: int = 1242, height: int = 375,
              formats: tuple[str, ...] = ("rosbag2:none", "rosbag2:lz4", "rosbag2:zstd", "kitti-raw"),
              repeat: int = 3) -> dict[str, dict[str, float]]:
    """Write and read ``num_frames`` full-size frames per format; print and return the best of
    ``repeat`` runs (ms per frame, MB per frame). A format spec is "rosbag2:<compression>"."""
    from pipeline.drive.io import open_drive, open_writer

    calib = make_calib(width, height)
    frames = [_realistic_frame(calib, i, num_points) for i in range(num_frames)]
    tmp = Path(tempfile.mkdtemp(prefix="segfuse-drive-bench-"))
    results: dict[str, dict[str, float]] = {}
    try:
        for _ in range(repeat):
            for spec in formats:
                fmt, _, comp = spec.partition(":")
                out = tmp / spec.replace(":", "-")
                opts = {"compression": comp} if comp else {}
                t0 = time.perf_counter()
                with open_writer(out, calib, make_meta(num_frames), format=fmt, **opts) as writer:
                    for f in frames:
                        writer.write(f)
                t_write = (time.perf_counter() - t0) / num_frames
                size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
                t0 = time.perf_counter()
                drive = open_drive(out)
                t_open = time.perf_counter() - t0
                t0 = time.perf_counter()
                count = sum(1 for _ in drive.frames())
                t_read = (time.perf_counter() - t0) / max(count, 1)
                drive.close()
                shutil.rmtree(out)
                best = results.setdefault(spec, {"write_ms": math.inf, "read_ms": math.inf, "open_ms": math.inf})
                best["write_ms"] = min(best["write_ms"], t_write * 1e3)
                best["read_ms"] = min(best["read_ms"], t_read * 1e3)
                best["open_ms"] = min(best["open_ms"], t_open * 1e3)
                best["MB_per_frame"] = size / num_frames / 1e6
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{num_frames} frames of {width}x{height} + {num_points} points + ground truth; best of {repeat}:")
    for spec, r in results.items():
        print(f"  {spec:14s} write {r['write_ms']:6.1f} ms/frame  read {r['read_ms']:6.1f} ms/frame  "
              f"open {r['open_ms']:6.1f} ms  size {r['MB_per_frame']:5.2f} MB/frame")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    benchmark(args.frames, args.points, repeat=args.repeat)


if __name__ == "__main__":
    main()
