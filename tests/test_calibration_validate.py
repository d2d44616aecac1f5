"""Every validation error raises CalibrationError naming the file and the field.

The KITTI-format files here are synthetic (our own numbers), so these tests need no real data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.camera import PinholeCamera
from calibration.io_kitti import load_kitti_object_calib, load_kitti_raw_calib
from calibration.io_rig_yaml import read_rig_yaml
from calibration.validate import check_frame_size
from pipeline.errors import CalibrationError

P2 = [700.0, 0.0, 600.0, 45.0, 0.0, 700.0, 180.0, -0.3, 0.0, 0.0, 1.0, 0.005]
R0 = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
# velo x forward, y left, z up -> camera x right, y down, z forward
TR = [0.0, -1.0, 0.0, 0.01, 0.0, 0.0, -1.0, -0.06, 1.0, 0.0, 0.0, -0.27]


def _kitti_object_text(**override) -> str:
    vals = {"P0": P2, "P1": P2, "P2": P2, "P3": P2, "R0_rect": R0, "Tr_velo_to_cam": TR, "Tr_imu_to_velo": TR}
    vals.update(override)
    return "".join(f"{k}: {' '.join(str(x) for x in v) if isinstance(v, list) else v}\n"
                   for k, v in vals.items() if v is not None)


def _load_object(tmp_path: Path, text: str):
    f = tmp_path / "000042.txt"
    f.write_text(text)
    return f, (lambda: load_kitti_object_calib(f, image_size=(1242, 375)))


def _expect(fn, path: Path, field: str, words: str) -> CalibrationError:
    with pytest.raises(CalibrationError) as err:
        fn()
    msg = str(err.value)
    assert str(path) in msg, msg
    assert f"field '{field}'" in msg, msg
    assert words in msg, msg
    assert err.value.field == field and err.value.path == str(path)
    return err.value


def test_synthetic_kitti_object_file_loads(tmp_path):
    _, load = _load_object(tmp_path, _kitti_object_text())
    rig = load()
    assert rig.camera_names == ["cam0", "cam1", "cam2", "cam3"] and rig.lidar_names == ["velo"]
    assert "T_velo_from_imu" in rig.extra


@pytest.mark.parametrize("override, field, words", [
    ({"R0_rect": [1.02, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]}, "R0_rect", "not orthonormal"),
    ({"R0_rect": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0]}, "R0_rect", "determinant -1"),
    ({"Tr_velo_to_cam": [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0]}, "Tr_velo_to_cam",
     "determinant -1"),
    ({"P2": [-700.0] + P2[1:]}, "P2", "focal length must be positive"),
    ({"P2": P2[:5] + [0.0] + P2[6:]}, "P2", "focal length must be positive"),
    ({"P2": P2[:2] + [5000.0] + P2[3:]}, "P2", "principal point"),
    ({"P2": P2[:6] + [-40.0] + P2[7:]}, "P2", "principal point"),
    ({"P2": P2[:11]}, "P2", "expected 12 numbers, got 11"),
    ({"P2": P2[:3] + ["nan"] + P2[4:]}, "P2", "NaN"),
    ({"P2": " ".join(str(x) for x in P2[:4]) + " 7.0e+02abc " + " ".join(str(x) for x in P2[5:])}, "P2",
     "not a number"),
    ({"Tr_velo_to_cam": None}, "Tr_velo_to_cam", "missing"),
    ({"R0_rect": R0[:6]}, "R0_rect", "expected 9 numbers"),
])
def test_kitti_object_errors_name_file_and_field(tmp_path, override, field, words):
    f, load = _load_object(tmp_path, _kitti_object_text(**override))
    _expect(load, f, field, words)


def test_truncated_kitti_object_file(tmp_path):
    text = _kitti_object_text()
    cut = text.index("R0_rect") + 30                                   # mid-line, then nothing
    f, load = _load_object(tmp_path, text[:cut])
    _expect(load, f, "R0_rect", "truncated")
    f, load = _load_object(tmp_path, text[: text.index("P3")])           # whole lines missing
    _expect(load, f, "P3", "missing")
    f, load = _load_object(tmp_path, text + "garbage line without colon\n")
    _expect(load, f, "line 8", "not 'key: values'")


def test_image_size_that_differs_from_the_frames(tmp_path):
    import cv2

    calib = tmp_path / "calib"
    images = tmp_path / "image_2"
    calib.mkdir()
    images.mkdir()
    f = calib / "000007.txt"
    f.write_text(_kitti_object_text())
    cv2.imwrite(str(images / "000007.png"), np.zeros((370, 1224, 3), np.uint8))
    rig = load_kitti_object_calib(f)                                      # size from the frame
    assert (rig.camera("cam2").width, rig.camera("cam2").height) == (1224, 370)
    _expect(lambda: load_kitti_object_calib(f, image_size=(1242, 375)), f, "image_size", "1224x370")
    alone = tmp_path / "000008.txt"
    alone.write_text(_kitti_object_text())
    _expect(lambda: load_kitti_object_calib(alone), alone, "image_size", "image size unknown")
    cam = PinholeCamera(np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]), None, 640, 480, "none")
    _expect(lambda: check_frame_size(cam, (480, 600, 3), path="frame.png", field="camera_front.size"),
            Path("frame.png"), "camera_front.size", "calibrated for 640x480 but the frame is 600x480")


def _raw_files(tmp_path: Path, cam_text: str, velo_text: str) -> Path:
    (tmp_path / "calib_cam_to_cam.txt").write_text(cam_text)
    (tmp_path / "calib_velo_to_cam.txt").write_text(velo_text)
    return tmp_path


SIM_CAM = ("calib_time: synthetic\nS_02: 1280 720\nK_02: 900 0 640 0 900 360 0 0 1\nD_02: 0 0 0 0 0\n"
           "S_rect_02: 1.280000e+03 7.200000e+02\nR_rect_00: 1 0 0 0 1 0 0 0 1\n"
           "P_rect_02: 900 0 640 0 0 900 360 0 0 0 1 0\n")
SIM_VELO = "calib_time: synthetic\nR: 0 -1 0 0 0 -1 1 0 0\nT: 0.0 -0.3 -0.5\n"


def test_kitti_raw_as_the_synthetic_world_writes_it(tmp_path):
    rig = load_kitti_raw_calib(_raw_files(tmp_path, SIM_CAM, SIM_VELO))
    assert rig.camera_names == ["cam02"]                                   # no R_02/T_02: no unrect camera
    T = rig.T_cam_from_lidar("cam02", "velo")
    np.testing.assert_allclose(T[:3, :3], [[0, -1, 0], [0, 0, -1], [1, 0, 0]])
    np.testing.assert_allclose(T[:3, 3], [0.0, -0.3, -0.5])
    assert (rig.camera("cam02").width, rig.camera("cam02").height) == (1280, 720)


@pytest.mark.parametrize("cam_text, velo_text, which, field, words", [
    (SIM_CAM, "R: 0 -1 0 0 0 -1 1 0 0\n", "velo", "T", "missing"),
    (SIM_CAM, "R: 0 -1 0 0 0 -1 1 0 0\nT: 0.0 -0.3\n", "velo", "T", "expected 3 numbers"),
    (SIM_CAM, "R: 0 1 0 0 0 -1 1 0 0\nT: 0 0 0\n", "velo", "R", "determinant -1"),
    (SIM_CAM.replace("R_rect_00", "R_rect_99"), SIM_VELO, "cam", "R_rect_00", "missing"),
    (SIM_CAM.replace("S_rect_02: 1.280000e+03 7.200000e+02", "S_rect_02: 1280.5 720"), SIM_VELO, "cam",
     "S_rect_02", "positive integers"),
    (SIM_CAM.replace("P_rect_02: 900 0 640", "P_rect_02: 900 0 1640"), SIM_VELO, "cam", "P_rect_02",
     "principal point"),
])
def test_kitti_raw_errors_name_file_and_field(tmp_path, cam_text, velo_text, which, field, words):
    folder = _raw_files(tmp_path, cam_text, velo_text)
    path = folder / ("calib_velo_to_cam.txt" if which == "velo" else "calib_cam_to_cam.txt")
    _expect(lambda: load_kitti_raw_calib(folder), path, field, words)


RIG_YAML = """\
format: segfuse-rig
version: 1
base_frame: base_link
cameras:
- name: camera_front
  frame_id: camera_front_optical
  model: pinhole
  width: 1280
  height: 720
  intrinsics: {fx: 900.0, fy: 900.0, cx: 639.5, cy: 359.5}
  distortion_model: plumb_bob
  distortion: [-0.1, 0.01, 0.0, 0.0, 0.0]
  T_base_from_cam:
    matrix: [[0.0, 0.0, 1.0, 1.5], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.4], [0.0, 0.0, 0.0, 1.0]]
lidars:
- name: lidar_top
  frame_id: lidar_top
  T_base_from_lidar:
    translation_xyz: [0.0, 0.0, 1.8]
    quaternion_xyzw: [0.0, 0.0, 0.0, 1.0]
"""


@pytest.mark.parametrize("old, new, field, words", [
    ("[[0.0, 0.0, 1.0, 1.5], [-1.0, 0.0, 0.0, 0.0]", "[[0.0, 0.0, 1.1, 1.5], [-1.0, 0.0, 0.0, 0.0]",
     "cameras[0].T_base_from_cam.matrix", "not orthonormal"),
    ("[0.0, -1.0, 0.0, 1.4]", "[0.0, 1.0, 0.0, 1.4]", "cameras[0].T_base_from_cam.matrix", "determinant -1"),
    ("fx: 900.0", "fx: 0.0", "cameras[0].intrinsics", "focal length must be positive"),
    ("cx: 639.5", "cx: 1400.0", "cameras[0].intrinsics", "principal point"),
    ("[0.0, 0.0, 0.0, 1.0]]", "[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]", "cameras[0].T_base_from_cam.matrix",
     "wrong shape: expected 4x4, got 5x4"),
    ("[-1.0, 0.0, 0.0, 0.0]", "[-1.0, .nan, 0.0, 0.0]", "cameras[0].T_base_from_cam.matrix", "NaN"),
    ("distortion: [-0.1, 0.01, 0.0, 0.0, 0.0]", "distortion: [-0.1, 0.01, 0.0]", "cameras[0].distortion",
     "plumb_bob takes 4 or 5 coefficients, got 3"),
    ("  width: 1280\n", "", "cameras[0].width", "missing"),
    ("width: 1280", "width: -5", "cameras[0].width", "positive integer"),
    ("width: 1280", "width: wide", "cameras[0].width", "expected an integer"),
    ("  model: pinhole\n", "  model: pinhole\n  colour: red\n", "cameras[0].colour", "unknown key"),
    ("quaternion_xyzw: [0.0, 0.0, 0.0, 1.0]", "quaternion_xyzw: [0.0, 0.0, 0.0, 0.0]",
     "lidars[0].T_base_from_lidar.quaternion_xyzw", "unit norm"),
    ("model: pinhole", "model: orthographic", "cameras[0].model", "unknown camera model"),
    ("format: segfuse-rig", "format: other", "format", "expected format"),
])
def test_rig_yaml_errors_name_file_and_field(tmp_path, old, new, field, words):
    assert old in RIG_YAML
    f = tmp_path / "rig.yaml"
    f.write_text(RIG_YAML.replace(old, new))
    _expect(lambda: read_rig_yaml(f), f, field, words)


def test_rig_yaml_sample_loads(tmp_path):
    f = tmp_path / "rig.yaml"
    f.write_text(RIG_YAML)
    rig = read_rig_yaml(f)
    assert rig.camera("camera_front").model.distortion_model == "plumb_bob"
    np.testing.assert_allclose(rig.lidar("lidar_top").T_base_from_lidar[:3, 3], [0, 0, 1.8])


def test_duplicate_sensor_names_are_refused(tmp_path):
    f = tmp_path / "rig.yaml"
    f.write_text(RIG_YAML.replace("name: lidar_top", "name: camera_front"))
    _expect(lambda: read_rig_yaml(f), f, "lidars.camera_front", "duplicate sensor name")
