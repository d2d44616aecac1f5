"""Drives written in both formats and read back: every array, stamp, box, lane, pose,
the calibration and the metadata come back as written."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.drive.io import open_drive, open_writer
from pipeline.drive.kitti_raw import (
    OXTS_FIELDS,
    calib_from_kitti_files,
    parse_oxts_file,
    parse_timestamps,
    poses_from_oxts,
)
from pipeline.drive.synth import make_calib, make_frame, make_meta
from pipeline.drive.types import DriveCalib, DriveFrame

FORMATS = ["rosbag2", "kitti-raw"]


def assert_calib_equal(a: DriveCalib, b: DriveCalib, atol: float) -> None:
    assert (a.camera_id, a.lidar_id, a.width, a.height) == (b.camera_id, b.lidar_id, b.width, b.height)
    np.testing.assert_array_equal(a.K, b.K)
    np.testing.assert_array_equal(a.dist, b.dist)
    np.testing.assert_allclose(a.T_base_from_cam, b.T_base_from_cam, rtol=0, atol=atol)
    np.testing.assert_allclose(a.T_base_from_lidar, b.T_base_from_lidar, rtol=0, atol=atol)


def assert_frames_equal(a: DriveFrame, b: DriveFrame, pose_atol: float) -> None:
    assert a.index == b.index
    assert (a.camera.camera_id, a.camera.stamp_ns) == (b.camera.camera_id, b.camera.stamp_ns)
    assert (a.lidar.lidar_id, a.lidar.stamp_ns) == (b.lidar.lidar_id, b.lidar.stamp_ns)
    assert b.camera.image.dtype == np.uint8 and b.lidar.points.dtype == np.float32
    np.testing.assert_array_equal(a.camera.image, b.camera.image)
    np.testing.assert_array_equal(a.lidar.points, b.lidar.points)
    if a.lidar.t_offset_ns is None:
        assert b.lidar.t_offset_ns is None
    else:
        assert b.lidar.t_offset_ns.dtype == np.int64
        np.testing.assert_array_equal(a.lidar.t_offset_ns, b.lidar.t_offset_ns)
    for name, dtype in (("semantic", np.uint8), ("instance", np.uint16), ("point_class", np.uint8),
                        ("point_instance", np.uint16)):
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None, name
        else:
            assert y.dtype == dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert len(a.boxes) == len(b.boxes)
    for x, y in zip(a.boxes, b.boxes):
        assert (x.instance_id, x.class_id) == (y.instance_id, y.class_id)
        np.testing.assert_array_equal(x.center, y.center)
        np.testing.assert_array_equal(x.size, y.size)
        assert math.isclose(x.yaw, y.yaw, abs_tol=1e-12)
    assert [(la.lane_id, la.type) for la in a.lanes] == [(lb.lane_id, lb.type) for lb in b.lanes]
    for x, y in zip(a.lanes, b.lanes):
        np.testing.assert_array_equal(x.points_base, y.points_base)
    assert b.pose_stamps_ns.dtype == np.int64
    np.testing.assert_array_equal(a.pose_stamps_ns, b.pose_stamps_ns)
    np.testing.assert_allclose(a.T_world_from_base, b.T_world_from_base, rtol=0, atol=pose_atol)


@pytest.mark.parametrize("fmt,background", [("rosbag2", False), ("kitti-raw", False), ("rosbag2", True)])
def test_round_trip_is_exact(tmp_path, fmt, background):
    calib = make_calib(dist=True)
    meta = make_meta(3)
    frames = [make_frame(calib, i) for i in range(3)]
    out = tmp_path / "drive"
    with open_writer(out, calib, meta, format=fmt, background=background) as writer:
        for frame in frames:
            writer.write(frame)

    with open_drive(out) as drive:
        assert drive.format == fmt
        assert len(drive) == 3
        assert drive.meta == meta
        # rosbag2 stores the extrinsics as quaternions (/tf_static), KITTI extras as JSON
        assert_calib_equal(calib, drive.calib, atol=1e-12 if fmt == "rosbag2" else 0.0)
        pose_atol = 1e-12 if fmt == "rosbag2" else 0.0
        read = list(drive.frames())
        assert len(read) == 3 and drive.skipped == []
        for a, b in zip(frames, read):
            assert_frames_equal(a, b, pose_atol)
        assert_frames_equal(frames[1], drive.frame(1), pose_atol)   # random access
        assert_frames_equal(frames[2], drive.frame(-1), pose_atol)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_without_ground_truth(tmp_path, fmt):
    calib = make_calib()
    frames = [make_frame(calib, i, 500, gt=False, t_offsets=False) for i in range(2)]
    with open_writer(tmp_path / "d", calib, make_meta(2), format=fmt) as writer:
        for frame in frames:
            writer.write(frame)
    with open_drive(tmp_path / "d") as drive:
        read = list(drive.frames())
    assert len(read) == 2
    for a, b in zip(frames, read):
        assert b.semantic is None and b.instance is None and b.point_class is None and b.point_instance is None
        assert b.boxes == [] and b.lanes == [] and b.lidar.t_offset_ns is None
        assert_frames_equal(a, b, 1e-12)


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_rosbag_round_trip_other_compressions(tmp_path, compression):
    calib = make_calib()
    frames = [make_frame(calib, i, 800) for i in range(2)]
    with open_writer(tmp_path / "d", calib, make_meta(2), compression=compression) as writer:
        for frame in frames:
            writer.write(frame)
    with open_drive(tmp_path / "d") as drive:
        for a, b in zip(frames, drive.frames(), strict=True):     # strict: every frame comes back
            assert_frames_equal(a, b, 1e-12)


@pytest.fixture(scope="module")
def kitti_export(tmp_path_factory):
    calib = make_calib(dist=True)
    frames = [make_frame(calib, i, 200) for i in range(4)]
    out = tmp_path_factory.mktemp("kitti") / "2023_11_14_drive_0001_sync"
    with open_writer(out, calib, make_meta(4), format="kitti-raw") as writer:
        for frame in frames:
            writer.write(frame)
    return out, calib, frames


def test_kitti_export_text_files_agree_with_the_frames(kitti_export):
    out, calib, frames = kitti_export
    # calib_*.txt (what KITTI tools read) give the same calibration as segfuse/calib.json
    txt = calib_from_kitti_files(out, rectified=False, camera_id=calib.camera_id, lidar_id=calib.lidar_id)
    assert_calib_equal(calib, txt, atol=1e-12)
    assert (out / "calib_velo_to_cam.txt").read_text().splitlines()[3] == "delta_f: 0.0 0.0"
    np.testing.assert_array_equal(parse_timestamps(out / "image_02" / "timestamps.txt"),
                                  [f.camera.stamp_ns for f in frames])
    starts = parse_timestamps(out / "velodyne_points" / "timestamps_start.txt")
    mids = parse_timestamps(out / "velodyne_points" / "timestamps.txt")
    ends = parse_timestamps(out / "velodyne_points" / "timestamps_end.txt")
    np.testing.assert_array_equal(starts, [f.lidar.stamp_ns for f in frames])
    np.testing.assert_array_equal(ends, [f.lidar.stamp_ns + f.lidar.t_offset_ns.max() for f in frames])
    assert np.all((starts < mids) & (mids < ends))
    # the .bin is KITTI's float32 x, y, z, reflectance; labels are SemanticKITTI uint32
    for i, f in enumerate(frames):
        name = f"{i:010d}"
        scan = np.fromfile(out / "velodyne_points" / "data" / f"{name}.bin", np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(scan, f.lidar.points)
        label = np.fromfile(out / "segfuse" / "labels" / f"{name}.label", np.uint32)
        np.testing.assert_array_equal(label & 0xFFFF, f.point_class)
        np.testing.assert_array_equal(label >> 16, f.point_instance)


def test_kitti_export_oxts_gives_the_poses_back(kitti_export):
    out, _calib, frames = kitti_export
    oxts_stamps = parse_timestamps(out / "oxts" / "timestamps.txt")
    records = np.array([parse_oxts_file(out / "oxts" / "data" / f"{i:010d}.txt") for i in range(len(frames))])
    assert records.shape == (len(frames), len(OXTS_FIELDS))
    T_oxts = poses_from_oxts(records)   # the KITTI devkit's way: relative to the first record
    T_true = []
    for f, stamp in zip(frames, oxts_stamps):
        k = int(np.flatnonzero(f.pose_stamps_ns == stamp)[0])   # OXTS stamps are pose stamps
        assert abs(stamp - f.camera.stamp_ns) <= 5_000_000
        T_true.append(f.T_world_from_base[k])
    T_true = np.array(T_true)
    np.testing.assert_allclose(T_oxts[:, :3, :3], T_true[:, :3, :3], atol=1e-9)
    np.testing.assert_allclose(T_oxts[:, :3, 3], T_true[:, :3, 3] - T_true[0, :3, 3], atol=1e-5)
    speed = np.hypot(records[:, 6], records[:, 7])        # vn, ve
    assert np.all(np.abs(speed - 10.0) < 0.5)             # the made-up drive runs at ~10 m/s
    np.testing.assert_allclose(records[:, 8], speed, rtol=0.01)   # all of it forward (vf)
    assert np.all(np.abs(records[:, 13] - 9.81) < 0.2)    # az: gravity, as an IMU measures it
    np.testing.assert_allclose(records[:, 19], 0.05, atol=0.01)   # wz: the yaw rate of the drive
