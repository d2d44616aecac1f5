"""Rig YAML and ROS bag round trips, format detection, the drive rig and the `segfuse calib` CLI."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from calibration.camera import FisheyeCamera, PinholeCamera, RectifiedCamera
from calibration.io import detect_kind, load_rig
from calibration.io_rig_yaml import dump_rig_yaml, read_rig_yaml, write_rig_yaml
from calibration.io_ros import load_rig_from_bag
from calibration.projection import project_lidar
from calibration.rig import CameraSensor, LidarSensor, Rig, rig_from_drive_calib
from calibration.transforms import R_from_rpy, make_T, quat_xyzw_from_R
from pipeline.cli import main as segfuse_main
from pipeline.errors import CalibrationError

# base_link: x forward, y left, z up. Optical frame: x right, y down, z forward.
R_BASE_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
K_FRONT = np.array([[1000.25, 0.0, 640.5], [0.0, 1001.75, 360.125], [0.0, 0.0, 1.0]])


def _rig() -> Rig:
    front = CameraSensor("camera_front", "camera_front_optical",
                         PinholeCamera(K_FRONT, [-0.12, 0.034, 0.0011, -0.0007, 0.0], 1280, 720, "plumb_bob"),
                         make_T(R_from_rpy(0.01, 0.02, -0.03) @ R_BASE_FROM_OPTICAL, [1.6, 0.05, 1.45]))
    wide = CameraSensor("camera_wide", "camera_wide_optical",
                        PinholeCamera(K_FRONT * [[0.5], [0.5], [1.0]], [0.3, -0.05, 0.001, -0.0005, 0.002, 0.6,
                                                                         -0.02, 0.01], 1280, 720,
                                      "rational_polynomial"),
                        make_T(R_from_rpy(0.0, 0.1, 0.5) @ R_BASE_FROM_OPTICAL, [1.5, 0.5, 1.4]))
    fish = CameraSensor("camera_rear", "camera_rear_optical",
                        FisheyeCamera(np.array([[320.0, 0.0, 640.0], [0.0, 320.0, 400.0], [0.0, 0.0, 1.0]]),
                                      [-0.02, 0.005, -0.003, 0.0004], 1280, 800),
                        make_T(R_from_rpy(0.0, 0.2, np.pi) @ R_BASE_FROM_OPTICAL, [-1.0, 0.0, 1.2]))
    P = np.array([[721.5377, 0.0, 609.5593, 44.85728], [0.0, 721.5377, 172.854, 0.2163791],
                  [0.0, 0.0, 1.0, 0.002745884]])
    rect = CameraSensor("cam2", "cam0", RectifiedCamera(P, R_from_rpy(0.004, -0.007, -0.01), 1242, 375),
                        make_T(R_from_rpy(-np.pi / 2, 0.0, -np.pi / 2), [0.27, 0.0, -0.08]))
    lidars = [LidarSensor("lidar_top", "lidar_top", make_T(R_from_rpy(0.0, 0.0, 0.01), [1.0, 0.0, 1.9])),
              LidarSensor("lidar_rear", "lidar_rear", make_T(R_from_rpy(0.0, 0.05, np.pi), [-0.8, 0.0, 0.9]))]
    return Rig([front, wide, fish, rect], lidars, base_frame="base_link", source="test")


def _assert_same_rig(a: Rig, b: Rig, atol: float = 0.0) -> None:
    assert a.base_frame == b.base_frame
    assert a.camera_names == b.camera_names and a.lidar_names == b.lidar_names
    close = (lambda x, y: np.array_equal(x, y)) if atol == 0.0 else (lambda x, y: np.allclose(x, y, atol=atol))
    for ca, cb in zip(a.cameras, b.cameras, strict=True):
        assert ca.frame_id == cb.frame_id and type(ca.model) is type(cb.model)
        assert (ca.width, ca.height) == (cb.width, cb.height)
        assert close(ca.T_base_from_cam, cb.T_base_from_cam)
        for attr in ("K", "dist", "D", "P", "R_rect"):
            if hasattr(ca.model, attr):
                assert np.array_equal(getattr(ca.model, attr), getattr(cb.model, attr)), (ca.name, attr)
        if isinstance(ca.model, PinholeCamera):
            assert ca.model.distortion_model == cb.model.distortion_model
    for la, lb in zip(a.lidars, b.lidars, strict=True):
        assert la.frame_id == lb.frame_id and close(la.T_base_from_lidar, lb.T_base_from_lidar)


def test_rig_yaml_round_trip_is_exact(tmp_path):
    rig = _rig()
    path = write_rig_yaml(rig, tmp_path / "rig.yaml")
    again = read_rig_yaml(path)
    _assert_same_rig(rig, again)                    # bit-identical arrays
    assert dump_rig_yaml(again) == path.read_text()  # and the text is stable
    assert again.kind == "rig_yaml" and again.source == str(path)
    quat = read_rig_yaml(write_rig_yaml(rig, tmp_path / "rig_q.yaml", extrinsic_style="quaternion"))
    _assert_same_rig(rig, quat, atol=1e-14)
    assert "quaternion_xyzw" in (tmp_path / "rig_q.yaml").read_text()


def test_drive_calib_rig():
    from pipeline.drive.types import DriveCalib

    calib = DriveCalib(camera_id="camera_front", width=1280, height=720, K=K_FRONT, dist=np.zeros(5),
                       T_base_from_cam=make_T(R_BASE_FROM_OPTICAL, [1.6, 0.0, 1.45]), lidar_id="lidar_top",
                       T_base_from_lidar=make_T(np.eye(3), [1.0, 0.0, 1.9]))
    rig = rig_from_drive_calib(calib)
    assert rig.camera().frame_id == "camera_front_optical" and rig.lidar().name == "lidar_top"
    np.testing.assert_allclose(rig.T_cam_from_lidar(), calib.T_cam_from_lidar, atol=1e-12)
    # a point 10 m ahead of the car at camera height lands on the principal point row
    pt = np.array([[11.6 - 1.0, 0.0, 1.45 - 1.9]])
    proj = project_lidar(pt, rig.T_cam_from_lidar(), rig.camera().model)
    np.testing.assert_allclose(proj.uv[0], [640.5, 360.125], atol=1e-4)
    assert proj.depth_m[0] == pytest.approx(10.0)
    with pytest.raises(CalibrationError, match="cameras.rear"):
        rig.camera("rear")


# --- ROS bag -----------------------------------------------------------------------------------

def _write_bag(path: Path, storage: str, *, camera_frame: str = "camera_front_optical") -> dict:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    stamp = Time(sec=1_700_000_000, nanosec=5)

    def camera_info(frame, w, h, K, D, model):
        return T["sensor_msgs/msg/CameraInfo"](
            header=Header(stamp=stamp, frame_id=frame), height=h, width=w, distortion_model=model,
            d=np.asarray(D, dtype=np.float64), k=np.asarray(K, dtype=np.float64).ravel(),
            r=np.eye(3).ravel(), p=np.hstack([np.asarray(K, dtype=np.float64), np.zeros((3, 1))]).ravel(),
            binning_x=0, binning_y=0,
            roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))

    def tf(parent, child, T_parent_from_child):
        q = quat_xyzw_from_R(T_parent_from_child[:3, :3])
        t = T_parent_from_child[:3, 3]
        return T["geometry_msgs/msg/TransformStamped"](
            header=Header(stamp=stamp, frame_id=parent), child_frame_id=child,
            transform=T["geometry_msgs/msg/Transform"](
                translation=T["geometry_msgs/msg/Vector3"](x=t[0], y=t[1], z=t[2]),
                rotation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))

    T_base_from_front = make_T(R_from_rpy(0.01, 0.02, -0.03) @ R_BASE_FROM_OPTICAL, [1.6, 0.05, 1.45])
    T_base_from_fish = make_T(R_from_rpy(0.0, 0.2, np.pi) @ R_BASE_FROM_OPTICAL, [-1.0, 0.0, 1.2])
    T_base_from_mount = make_T(R_from_rpy(0.0, 0.0, 0.3), [1.0, 0.0, 1.5])
    T_mount_from_lidar = make_T(R_from_rpy(0.02, 0.0, -0.3), [0.0, 0.0, 0.4])
    K_fish = np.array([[320.0, 0.0, 640.0], [0.0, 320.0, 400.0], [0.0, 0.0, 1.0]])
    D_fish = [-0.02, 0.005, -0.003, 0.0004]
    D_front = [-0.12, 0.034, 0.0011, -0.0007, 0.0]

    fields = [T["sensor_msgs/msg/PointField"](name=n, offset=4 * i, datatype=7, count=1)
              for i, n in enumerate("xyz")] + [T["sensor_msgs/msg/PointField"](name="intensity", offset=12,
                                                                                 datatype=7, count=1)]
    pts = np.array([[10.0, 0.0, 0.0, 1.0], [5.0, 1.0, -1.0, 0.5]], dtype=np.float32)
    cloud = T["sensor_msgs/msg/PointCloud2"](
        header=Header(stamp=stamp, frame_id="lidar_top"), height=1, width=len(pts), fields=fields,
        is_bigendian=False, point_step=16, row_step=16 * len(pts), data=pts.view(np.uint8).ravel(), is_dense=True)
    tf_msg = T["tf2_msgs/msg/TFMessage"](transforms=[
        tf("base_link", camera_frame, T_base_from_front),
        tf("base_link", "camera_rear_optical", T_base_from_fish),
        tf("base_link", "lidar_mount", T_base_from_mount),
        tf("lidar_mount", "lidar_top", T_mount_from_lidar),
    ])
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    t0 = 1_700_000_000_000_000_005
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        for topic, msgtype, msg in [
            ("/tf_static", "tf2_msgs/msg/TFMessage", tf_msg),
            ("/camera_front/camera_info", "sensor_msgs/msg/CameraInfo",
             camera_info("camera_front_optical", 1280, 720, K_FRONT, D_front, "plumb_bob")),
            ("/camera_rear/camera_info", "sensor_msgs/msg/CameraInfo",
             camera_info("camera_rear_optical", 1280, 800, K_fish, D_fish, "equidistant")),
            ("/lidar_top/points", "sensor_msgs/msg/PointCloud2", cloud),
        ]:
            conn = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(conn, t0, ts.serialize_cdr(msg, msgtype))
    return {"front": T_base_from_front, "fish": T_base_from_fish, "lidar": T_base_from_mount @ T_mount_from_lidar,
            "K_fish": K_fish, "D_fish": D_fish, "D_front": D_front}


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_round_trip(tmp_path, storage):
    bag = tmp_path / "drive_bag"
    truth = _write_bag(bag, storage)
    assert detect_kind(bag) == "ros_bag"
    rig = load_rig(bag)
    assert rig.kind == "ros_bag" and rig.base_frame == "base_link"
    assert rig.camera_names == ["camera_front", "camera_rear"] and rig.lidar_names == ["lidar_top"]
    front, rear = rig.camera("camera_front"), rig.camera("camera_rear")
    assert front.frame_id == "camera_front_optical" and rig.lidar().frame_id == "lidar_top"
    assert isinstance(front.model, PinholeCamera) and front.model.distortion_model == "plumb_bob"
    np.testing.assert_array_equal(front.model.K, K_FRONT)
    np.testing.assert_array_equal(front.model.dist, truth["D_front"])
    assert isinstance(rear.model, FisheyeCamera) and (rear.width, rear.height) == (1280, 800)
    np.testing.assert_array_equal(rear.model.D, truth["D_fish"])
    np.testing.assert_allclose(front.T_base_from_cam, truth["front"], atol=1e-12)
    np.testing.assert_allclose(rear.T_base_from_cam, truth["fish"], atol=1e-12)
    np.testing.assert_allclose(rig.lidar().T_base_from_lidar, truth["lidar"], atol=1e-12)   # composed chain
    if storage == "mcap":      # a bare .mcap file is a bag too
        mcap = next(bag.glob("*.mcap"))
        assert len(load_rig_from_bag(mcap).cameras) == 2


def test_bag_with_a_camera_frame_outside_the_tf_tree(tmp_path):
    bag = tmp_path / "bad_bag"
    _write_bag(bag, "mcap", camera_frame="camera_front_link")      # tf names another frame
    with pytest.raises(CalibrationError) as err:
        load_rig_from_bag(bag)
    msg = str(err.value)
    assert str(bag) in msg and "/camera_front/camera_info.header.frame_id" in msg and "camera_front_optical" in msg


# --- detection and CLI -------------------------------------------------------------------------

def test_detect_kind(tmp_path):
    yaml_path = write_rig_yaml(_rig(), tmp_path / "rig.yaml")
    assert detect_kind(yaml_path) == "rig_yaml"
    (tmp_path / "x.bag").write_bytes(b"")
    assert detect_kind(tmp_path / "x.bag") == "ros_bag"
    (tmp_path / "000001.txt").write_text("P0: 1 2 3\nP2: 1 2 3\n")
    assert detect_kind(tmp_path / "000001.txt") == "kitti_object"
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(CalibrationError, match="unknown calibration format"):
        detect_kind(tmp_path / "notes.txt")
    with pytest.raises(CalibrationError, match="no such file"):
        load_rig(tmp_path / "missing.yaml")


def test_cli_show_and_check(tmp_path, capsys, caplog):
    path = write_rig_yaml(_rig(), tmp_path / "rig.yaml")
    assert segfuse_main(["calib", "show", str(path)]) == 0
    out = capsys.readouterr().out
    for text in ("camera_front", "rational_polynomial", "fisheye", "rectified", "lidar_rear",
                 "fx 1000.2500", "xyz [1.6000, 0.0500, 1.4500] m", "deg"):
        assert text in out, text
    assert segfuse_main(["calib", "check", str(path)]) == 0
    assert capsys.readouterr().out.startswith("OK: ")
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("fx: 1000.25", "fx: -1000.25"))
    with caplog.at_level(logging.ERROR):
        assert segfuse_main(["calib", "check", str(bad)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(bad) in errors[0] and "cameras[0].intrinsics" in errors[0]
    assert "OK" not in capsys.readouterr().out
    # the calibrated size must match a frame
    import cv2

    frame = tmp_path / "front.png"
    cv2.imwrite(str(frame), np.zeros((700, 1280, 3), np.uint8))
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert segfuse_main(["calib", "check", str(path), "--image", f"camera_front={frame}"]) == 2
    assert "calibrated for 1280x720 but the frame is 1280x700" in caplog.records[-1].getMessage()


def test_ros1_bag(tmp_path):
    """ROS1 bags name the CameraInfo fields K, D (upper case); tf2_msgs comes from the bag's own definitions."""
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC)
    ts.register(get_types_from_msg("geometry_msgs/TransformStamped[] transforms", "tf2_msgs/msg/TFMessage"))
    T = ts.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    stamp = Time(sec=1_300_000_000, nanosec=0)
    info = T["sensor_msgs/msg/CameraInfo"](
        header=Header(seq=0, stamp=stamp, frame_id="/cam_optical"), height=720, width=1280,
        distortion_model="rational_polynomial", D=np.array([0.3, -0.05, 0.001, -0.0005, 0.002, 0.6, -0.02, 0.01]),
        K=K_FRONT.ravel(), R=np.eye(3).ravel(), P=np.zeros(12), binning_x=0, binning_y=0,
        roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    T_base_from_cam = make_T(R_BASE_FROM_OPTICAL, [1.5, 0.0, 1.3])
    q = quat_xyzw_from_R(T_base_from_cam[:3, :3])
    tf_msg = T["tf2_msgs/msg/TFMessage"](transforms=[T["geometry_msgs/msg/TransformStamped"](
        header=Header(seq=0, stamp=stamp, frame_id="base_link"), child_frame_id="cam_optical",
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=1.5, y=0.0, z=1.3),
            rotation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))])
    bag = tmp_path / "drive.bag"
    with Writer(bag) as writer:
        for topic, msgtype, msg in [("/tf_static", "tf2_msgs/msg/TFMessage", tf_msg),
                                    ("/front/camera_info", "sensor_msgs/msg/CameraInfo", info)]:
            conn = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(conn, 1_300_000_000_000_000_000, ts.serialize_ros1(msg, msgtype))
    rig = load_rig(bag)
    cam = rig.camera("front")
    assert cam.frame_id == "cam_optical" and cam.model.distortion_model == "rational_polynomial"
    np.testing.assert_array_equal(cam.model.K, K_FRONT)
    np.testing.assert_allclose(cam.T_base_from_cam, T_base_from_cam, atol=1e-12)


def test_example_rig_in_the_repo_is_valid(capsys):
    example = Path(__file__).resolve().parents[1] / "calibration" / "examples" / "rig_example.yaml"
    rig = load_rig(example)
    assert rig.camera_names == ["camera_front"] and rig.extra["description"]
    assert segfuse_main(["calib", "show", str(example)]) == 0
    out = capsys.readouterr().out
    assert "rpy [-90.000, 0.000, -90.000] deg" in out and "plumb_bob" in out


def test_kitti_raw_export_of_a_drive_loads_back(tmp_path):
    """The drive writer's KITTI-raw calibration (pipeline.drive.kitti_raw) reads back as the same rig."""
    kitti_raw = pytest.importorskip("pipeline.drive.kitti_raw")
    from pipeline.drive.types import DriveCalib

    calib = DriveCalib(camera_id="camera_front", width=1242, height=375,
                       K=np.array([[721.5, 0.0, 609.6], [0.0, 721.5, 172.9], [0.0, 0.0, 1.0]]), dist=np.zeros(5),
                       T_base_from_cam=make_T(R_from_rpy(0.0, 0.03, 0.01) @ R_BASE_FROM_OPTICAL, [1.6, 0.0, 1.45]),
                       lidar_id="lidar_top", T_base_from_lidar=make_T(R_from_rpy(0.0, 0.0, 0.02), [1.0, 0.0, 1.9]))
    kitti_raw.write_kitti_calib(tmp_path, calib, "synthetic")
    rig = load_rig(tmp_path)
    assert rig.kind == "kitti_raw" and "cam02" in rig.camera_names
    np.testing.assert_allclose(rig.T_cam_from_lidar("cam02", "velo"), calib.T_cam_from_lidar, atol=1e-12)
    np.testing.assert_array_equal(rig.camera("cam02").model.K, calib.K)
