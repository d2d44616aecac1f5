"""KITTI raw on the real files in ../shared/data/kitti_raw: timestamps, calibration, OXTS,
and whole drive folders read through open_drive (calibration in the date folder, no
ground truth). The real files are used by path or symlink, never copied."""
from __future__ import annotations

import calendar
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.drive.io import open_drive
from pipeline.drive.kitti_raw import (
    calib_from_kitti_files,
    format_timestamps,
    parse_calib_file,
    parse_oxts_file,
    parse_timestamps,
    poses_from_oxts,
)
from pipeline.errors import CalibrationError, InputDataError

DATE = "2011_09_26"
DRIVE = "2011_09_26_drive_0001_sync"
SCANS = "2011_09_26_drive_unidentified_sync"


@pytest.fixture(scope="module")
def kitti_raw(shared_data) -> Path:
    path = shared_data / "kitti_raw" / DATE
    if not (path / DRIVE).is_dir():
        pytest.skip(f"KITTI raw samples not found at {path}")
    return path


def _ns(text: str) -> int:
    date, clock = text.split(" ")
    whole, frac = clock.split(".")
    secs = calendar.timegm(tuple(int(v) for v in date.split("-") + whole.split(":")) + (0, 0, 0))
    return secs * 10**9 + int(frac)


def test_real_timestamps_parse_exactly(kitti_raw):
    files = sorted((kitti_raw / DRIVE).glob("*/timestamps*.txt"))
    assert len(files) == 8
    for path in files:
        lines = path.read_text().splitlines()
        stamps = parse_timestamps(path)
        assert stamps.dtype == np.int64 and stamps.size == len(lines) == 108
        assert stamps[0] == _ns(lines[0]) and stamps[-1] == _ns(lines[-1])
        assert format_timestamps(stamps) == lines                  # ns-exact both ways
        dt = np.diff(stamps)
        assert np.all((dt > 90_000_000) & (dt < 115_000_000)), path   # 10 Hz
    cam = parse_timestamps(kitti_raw / DRIVE / "image_02" / "timestamps.txt")
    assert cam[0] == 1317042145961661696                            # 2011-09-26 13:02:25.961661696
    velo = kitti_raw / DRIVE / "velodyne_points"
    start, mid, end = (parse_timestamps(velo / f"timestamps{s}.txt") for s in ("_start", "", "_end"))
    assert np.all((start < mid) & (mid < end))
    assert np.all(np.abs(cam - mid) < 20_000_000)                   # the camera fires as the scanner faces forward


def test_malformed_timestamps_name_file_and_line(tmp_path):
    path = tmp_path / "timestamps.txt"
    path.write_text("2011-09-26 13:02:25.961661696\n2011-09-26 13:02:26,064785152\n")
    with pytest.raises(InputDataError) as err:
        parse_timestamps(path)
    assert err.value.path == str(path) and err.value.field == "line 2"
    with pytest.raises(InputDataError):
        parse_timestamps(tmp_path / "missing.txt")


def test_real_calibration(kitti_raw):
    calib = calib_from_kitti_files(kitti_raw)
    assert (calib.width, calib.height, calib.camera_id, calib.lidar_id) == (1242, 375, "image_02", "velodyne")
    cc = parse_calib_file(kitti_raw / "calib_cam_to_cam.txt")
    vc = parse_calib_file(kitti_raw / "calib_velo_to_cam.txt")
    assert cc["calib_time"] == "09-Jan-2012 13:57:47"
    P2 = cc["P_rect_02"].reshape(3, 4)
    np.testing.assert_array_equal(calib.K, P2[:, :3])
    np.testing.assert_array_equal(calib.dist, np.zeros(5))
    # KITTI's projection of a Velodyne point: P_rect_02 . R_rect_00 . [R|T] (homogeneous)
    R0 = np.eye(4)
    R0[:3, :3] = cc["R_rect_00"].reshape(3, 3)
    Tr = np.eye(4)
    Tr[:3, :3], Tr[:3, 3] = vc["R"].reshape(3, 3), vc["T"]
    pts = np.array([[10.0, 2.0, -1.0, 1.0], [25.0, -5.0, 0.5, 1.0], [6.0, 0.0, -1.6, 1.0]]).T
    kitti = P2 @ R0 @ Tr @ pts
    ours = calib.K @ (calib.T_cam_from_lidar @ pts)[:3]
    np.testing.assert_allclose(ours[:2] / ours[2], kitti[:2] / kitti[2], atol=1e-9)
    # the IMU (our base) to Velodyne transform is the inverse of calib_imu_to_velo
    iv = parse_calib_file(kitti_raw / "calib_imu_to_velo.txt")
    np.testing.assert_allclose(np.linalg.inv(calib.T_base_from_lidar)[:3, 3], iv["T"], atol=1e-12)


def test_real_oxts_record(kitti_raw):
    record = parse_oxts_file(kitti_raw / DRIVE / "oxts" / "data" / "0000000000.txt")
    assert record.shape == (30,) and math.isclose(record[0], 49.015003823272)
    T = poses_from_oxts(record)[0]
    np.testing.assert_allclose(T[:3, 3], 0.0)                       # relative to the first record
    roll, pitch, yaw = record[3:6]
    assert math.isclose(math.atan2(T[1, 0], T[0, 0]), yaw, abs_tol=1e-12)
    assert math.isclose(-math.asin(T[2, 0]), pitch, abs_tol=1e-12)
    assert math.isclose(math.atan2(T[2, 1], T[2, 2]), roll, abs_tol=1e-12)


def _png(height: int, width: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.full((height, width, 3), 80, np.uint8))
    assert ok
    return buf.tobytes()


def _date_folder(tmp_path: Path, kitti_raw: Path) -> Path:
    date = tmp_path / DATE
    date.mkdir()
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt", "calib_imu_to_velo.txt"):
        (date / name).symlink_to(kitti_raw / name)
    return date


def test_real_drive_folder(tmp_path, kitti_raw):
    """The real drive 0001 timestamps, OXTS record and calibration, with tiny scans and
    uniform images (the samples have none) written into a KITTI-shaped folder."""
    src = kitti_raw / DRIVE
    drive = _date_folder(tmp_path, kitti_raw) / DRIVE
    for sub in ("image_02", "velodyne_points", "oxts"):
        (drive / sub / "data").mkdir(parents=True)
    for name in ("image_02/timestamps.txt", "velodyne_points/timestamps.txt", "velodyne_points/timestamps_start.txt",
                 "velodyne_points/timestamps_end.txt", "oxts/timestamps.txt", "oxts/dataformat.txt",
                 "oxts/data/0000000000.txt"):
        (drive / name).symlink_to(src / name)
    png = _png(375, 1242)
    rng = np.random.default_rng(0)
    scans = []
    for i in range(108):
        (drive / "image_02" / "data" / f"{i:010d}.png").write_bytes(png)
        scan = rng.standard_normal((50 + i, 4)).astype(np.float32)
        scan.tofile(drive / "velodyne_points" / "data" / f"{i:010d}.bin")
        scans.append(scan)

    with open_drive(drive) as d:
        assert d.format == "kitti-raw" and d.meta is None and len(d) == 108
        assert d.calib.width == 1242 and d.calib.camera_id == "image_02"
        frames = list(d.frames())
    assert d.skipped == [] and len(frames) == 108
    cam = parse_timestamps(src / "image_02" / "timestamps.txt")
    start = parse_timestamps(src / "velodyne_points" / "timestamps_start.txt")
    for i, f in enumerate(frames):
        assert f.camera.stamp_ns == cam[i] and f.lidar.stamp_ns == start[i]   # sweep start
        assert f.camera.image.shape == (375, 1242, 3) and f.camera.image[0, 0, 0] == 80
        np.testing.assert_array_equal(f.lidar.points, scans[i])
        assert f.lidar.t_offset_ns is None
        assert f.semantic is None and f.instance is None and f.point_class is None and f.point_instance is None
        assert f.boxes == [] and f.lanes == []
    # only record 0 of the OXTS data is in the samples: frame 0 has its pose, later frames none
    oxts0 = parse_timestamps(src / "oxts" / "timestamps.txt")[0]
    np.testing.assert_array_equal(frames[0].pose_stamps_ns, [oxts0])
    np.testing.assert_allclose(frames[0].T_world_from_base[0], poses_from_oxts(
        parse_oxts_file(src / "oxts" / "data" / "0000000000.txt"))[0])
    assert frames[5].pose_stamps_ns.size == 0 and frames[5].T_world_from_base.shape == (0, 4, 4)


def test_real_velodyne_scans(tmp_path, kitti_raw):
    """11 real HDL-64E scans; their start/end files cover the whole source drive (361 lines), so
    each LiDAR stamp is the start of the sweep whose [start, end] holds the frame's timestamps.txt
    stamp (a sweep start, like every other layout: the configs' lidar_offset_ms is measured from it)."""
    src = kitti_raw / SCANS / "velodyne_points"
    drive = _date_folder(tmp_path, kitti_raw) / SCANS
    drive.mkdir()
    (drive / "velodyne_points").symlink_to(src)
    (drive / "image_02" / "data").mkdir(parents=True)
    (drive / "image_02" / "timestamps.txt").write_text((src / "timestamps.txt").read_text())
    png = _png(375, 1242)
    for i in range(11):
        (drive / "image_02" / "data" / f"{i:010d}.png").write_bytes(png)
    mid = parse_timestamps(src / "timestamps.txt")
    start, end = parse_timestamps(src / "timestamps_start.txt"), parse_timestamps(src / "timestamps_end.txt")
    stamps = [int(start[(start <= m) & (m <= end)][0]) for m in mid]
    assert all(45_000_000 < m - s < 60_000_000 for m, s in zip(mid, stamps))   # about half a sweep before
    with open_drive(drive) as d:
        assert len(d) == 11
        for i, f in enumerate(d.frames()):
            real = np.fromfile(src / "data" / f"{i:010d}.bin", np.float32).reshape(-1, 4)
            assert 110_000 < real.shape[0] < 125_000
            np.testing.assert_array_equal(f.lidar.points, real)
            assert f.lidar.stamp_ns == stamps[i]
            assert f.pose_stamps_ns.size == 0     # no OXTS folder


def test_missing_calibration_is_reported(tmp_path):
    drive = tmp_path / "drive_sync"
    (drive / "image_02" / "data").mkdir(parents=True)
    (drive / "image_02" / "timestamps.txt").write_text("2011-09-26 13:02:25.961661696\n")
    with pytest.raises(CalibrationError, match="calib_cam_to_cam.txt"):
        open_drive(drive)
    (drive / "calib_cam_to_cam.txt").write_text("calib_time: x\nP_rect_02: 1 2 3\n")
    (drive / "calib_velo_to_cam.txt").write_text("R: 1 0 0 0 1 0 0 0 1\nT: 0 0 0\n")
    (drive / "calib_imu_to_velo.txt").write_text("R: 1 0 0 0 1 0 0 0 1\nT: 0 zero 0\n")
    with pytest.raises(CalibrationError) as err:
        open_drive(drive)
    assert err.value.path == str(drive / "calib_imu_to_velo.txt") and err.value.field == "T"
