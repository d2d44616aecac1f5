"""Real KITTI / nuScenes calibration through our loaders and projection (skips without the data)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.camera import RectifiedCamera
from calibration.io import load_rig
from calibration.io_kitti import load_kitti_object_calib, load_kitti_raw_calib, read_kitti_velodyne
from calibration.io_nuscenes import load_nuscenes_calib
from calibration.projection import project_lidar
from calibration.transforms import invert_T

# /work/shared/data/README.md, "Reference figures": points inside image_2 with depth > 0.
REFERENCE_COUNTS = {"000000": 20285, "000001": 18630, "000002": 20210, "000003": 18911, "000004": 19063,
                    "000005": 19962, "000006": 19473, "000007": 19423, "000008": 17238, "000009": 19411}


def _devkit_count(calib_file: Path, points: np.ndarray, width: int, height: int) -> int:
    """The KITTI devkit recipe written out independently: P2 @ R0_rect @ Tr_velo_to_cam."""
    vals = {}
    for line in calib_file.read_text().splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            vals[k] = np.array(v.split(), dtype=np.float64)
    R0 = np.eye(4)
    R0[:3, :3] = vals["R0_rect"].reshape(3, 3)
    Tr = np.eye(4)
    Tr[:3] = vals["Tr_velo_to_cam"].reshape(3, 4)
    x = np.hstack([points[:, :3].astype(np.float64), np.ones((len(points), 1))])
    uvw = vals["P2"].reshape(3, 4) @ R0 @ Tr @ x.T
    u, v = uvw[0] / uvw[2], uvw[1] / uvw[2]
    return int(np.sum((uvw[2] > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)))


def test_kitti_object_reference_counts(kitti_object):
    sizes = {}
    for frame, expected in REFERENCE_COUNTS.items():
        rig = load_kitti_object_calib(kitti_object / "calib" / f"{frame}.txt")   # size from image_2/<frame>.png
        cam = rig.camera("cam2")
        assert isinstance(cam.model, RectifiedCamera) and rig.base_frame == "velo_link"
        sizes[frame] = (cam.width, cam.height)
        points = read_kitti_velodyne(kitti_object / "velodyne" / f"{frame}.bin")
        assert points.dtype == np.float32 and 100_000 < len(points) < 130_000
        proj = project_lidar(points, rig.T_cam_from_lidar("cam2", "velo"), cam.model, min_depth_m=0.0,
                             inside="floor")
        assert proj.count == expected, frame
        assert _devkit_count(kitti_object / "calib" / f"{frame}.txt", points, cam.width, cam.height) == expected
        # The OpenCV pixel-centre rule (round) drops the half-pixel strip at the right/bottom edges.
        rounded = project_lidar(points, rig.T_cam_from_lidar("cam2", "velo"), cam.model, min_depth_m=0.0)
        assert expected - 60 < rounded.count < expected
        assert np.all(proj.depth_m[proj.valid] > 0)
    assert sizes["000000"] == (1224, 370) and sizes["000006"] == (1238, 374) and sizes["000001"] == (1242, 375)


def test_kitti_object_through_rig_yaml_gives_the_same_count(kitti_object, tmp_path):
    from calibration.io_rig_yaml import read_rig_yaml, write_rig_yaml

    rig = load_kitti_object_calib(kitti_object / "calib" / "000003.txt")
    again = read_rig_yaml(write_rig_yaml(rig, tmp_path / "kitti.yaml"))
    points = read_kitti_velodyne(kitti_object / "velodyne" / "000003.bin")
    proj = project_lidar(points, again.T_cam_from_lidar("cam2", "velo"), again.camera("cam2").model,
                         min_depth_m=0.0, inside="floor")
    assert proj.count == REFERENCE_COUNTS["000003"]


def test_kitti_raw_calibration(shared_data):
    folder = shared_data / "kitti_raw" / "2011_09_26"
    rig = load_kitti_raw_calib(folder)
    assert load_rig(folder).kind == "kitti_raw" and load_rig(folder / "calib_velo_to_cam.txt").kind == "kitti_raw"
    for name in ("cam00", "cam01", "cam02", "cam03"):
        cam = rig.camera(name)
        assert (cam.width, cam.height) == (1242, 375)
        assert cam.model.K[0, 0] == pytest.approx(721.5377)
    baseline = np.linalg.norm(rig.camera("cam03").center_base - rig.camera("cam02").center_base)
    assert 0.52 < baseline < 0.56
    gray = np.linalg.norm(rig.camera("cam01").center_base - rig.camera("cam00").center_base)
    assert gray == pytest.approx(0.537, abs=0.005)
    # Cameras look forward (+x of the Velodyne), about 0.27 m ahead of it.
    z_axis_base = rig.camera("cam02").T_base_from_cam[:3, 2]
    assert z_axis_base[0] > 0.99 and 0.2 < rig.camera("cam02").center_base[0] < 0.35
    unrect = rig.camera("cam02_unrect")
    assert unrect.model.distortion_model == "plumb_bob" and (unrect.width, unrect.height) == (1392, 512)
    # A real scan of that day lands in the left colour camera in plausible numbers.
    scan = sorted((folder / "2011_09_26_drive_unidentified_sync" / "velodyne_points" / "data").glob("*.bin"))[0]
    points = read_kitti_velodyne(scan)
    proj = project_lidar(points, rig.T_cam_from_lidar("cam02", "velo"), rig.camera("cam02").model)
    assert 10_000 < proj.count < 30_000
    # The unrectified, distorted view of the same camera sees about as many.
    proj_raw = project_lidar(points, rig.T_cam_from_lidar("cam02_unrect", "velo"), unrect.model)
    assert 0.8 < proj_raw.count / proj.count < 1.6


def test_nuscenes_lidar_into_cameras(shared_data):
    folder = shared_data / "nuscenes_sample"
    rig = load_nuscenes_calib(folder / "calib.json")
    assert load_rig(folder / "calib.json").kind == "nuscenes"
    points = np.fromfile(next(folder.glob("*LIDAR_TOP*.pcd.bin")), dtype=np.float32).reshape(-1, 5)
    assert len(points) == 34688
    front = rig.camera("CAM_FRONT")
    assert (front.width, front.height) == (1600, 900)
    proj = project_lidar(points, rig.T_cam_from_lidar("CAM_FRONT", "LIDAR_TOP"), front.model)
    assert 2000 < proj.count < 6000
    # CAM_BACK_LEFT was exposed within 1 ms of the LiDAR: lidar2cam then equals the static chain
    # cam2ego^-1 @ lidar2ego (other cameras differ by the ego motion between the two stamps).
    data = json.loads((folder / "calib.json").read_text())
    cam = rig.camera("CAM_BACK_LEFT")
    T_static = invert_T(np.array(data["cameras"]["CAM_BACK_LEFT"]["cam2ego"])) @ np.array(data["lidar2ego"])
    a = project_lidar(points, rig.T_cam_from_lidar("CAM_BACK_LEFT", "LIDAR_TOP"), cam.model)
    b = project_lidar(points, T_static, cam.model)
    both = a.valid & b.valid
    assert both.sum() > 0.95 * a.count
    assert np.abs(a.uv[both] - b.uv[both]).max() < 3.0
