"""Rig from a ROS bag: ``sensor_msgs/CameraInfo`` topics and ``/tf_static``.

Reads rosbag2 (a directory, ``.mcap`` or ``.db3``) and ROS1 ``.bag`` with
``rosbags.highlevel.AnyReader``:
- every ``sensor_msgs/msg/CameraInfo`` topic (its first message) is a camera: ``K``, ``D``,
  ``width``, ``height``, ``distortion_model`` (plumb_bob, rational_polynomial -> pinhole;
  equidistant -> fisheye); ``header.frame_id`` is its optical frame;
- every ``sensor_msgs/msg/PointCloud2`` topic is a LiDAR; its frame is the first message's
  ``header.frame_id``;
- ``/tf_static`` (``tf2_msgs/msg/TFMessage``) is composed into each frame's pose in the base
  frame (``base_link`` by default).
Sensor names come from the topics: ``/camera_front/camera_info`` -> ``camera_front``,
``/lidar_top/points`` -> ``lidar_top`` (the last path component is dropped when there are
several).
"""
from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import numpy as np

from calibration import validate
from calibration.camera import CameraModel, FisheyeCamera, PinholeCamera
from calibration.rig import CameraSensor, LidarSensor, Rig
from calibration.transforms import R_from_quat_xyzw, invert_T, make_T
from pipeline.errors import CalibrationError, InputDataError

log = logging.getLogger(__name__)

CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINT_CLOUD2 = "sensor_msgs/msg/PointCloud2"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
TF_STATIC_TOPIC = "/tf_static"
BAG_SUFFIXES = (".mcap", ".db3", ".bag")


def sensor_name_from_topic(topic: str) -> str:
    parts = [p for p in topic.strip("/").split("/") if p]
    if len(parts) > 1:
        parts = parts[:-1]
    return "_".join(parts) or topic


def _frame(frame_id: str) -> str:
    return frame_id.lstrip("/")


def _field(msg, *names):
    for n in names:
        if hasattr(msg, n):
            return getattr(msg, n)
    raise AttributeError(names[0])


def is_bag(path: str | Path) -> bool:
    path = Path(path)
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.suffix in BAG_SUFFIXES


def load_rig_from_bag(bag_path: str | Path, *, base_frame: str = "base_link") -> Rig:
    """Cameras (CameraInfo), LiDARs (PointCloud2) and their extrinsics (/tf_static) of a bag."""
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.typesys import Stores, get_typestore

    bag_path = Path(bag_path)
    if not bag_path.exists():
        raise InputDataError("bag not found", path=bag_path)
    store = Stores.ROS1_NOETIC if bag_path.suffix == ".bag" else Stores.ROS2_HUMBLE
    camera_msgs: list[tuple[str, object]] = []
    lidar_frames: list[tuple[str, str]] = []
    edges: list[tuple[str, str, np.ndarray, str]] = []       # parent, child, T_parent_from_child, where
    try:
        with AnyReader([bag_path], default_typestore=get_typestore(store)) as reader:
            for conn in sorted(reader.connections, key=lambda c: c.topic):
                if conn.msgtype == CAMERA_INFO:
                    msg = _first(reader, conn)
                    if msg is not None:
                        camera_msgs.append((conn.topic, msg))
                elif conn.msgtype == POINT_CLOUD2:
                    msg = _first(reader, conn)
                    if msg is not None:
                        lidar_frames.append((conn.topic, _frame(msg.header.frame_id)))
            tf_conns = [c for c in reader.connections if c.topic == TF_STATIC_TOPIC and c.msgtype == TF_MESSAGE]
            for conn, _, raw in reader.messages(connections=tf_conns):
                msg = reader.deserialize(raw, conn.msgtype)
                for i, tr in enumerate(msg.transforms):
                    q = tr.transform.rotation
                    t = tr.transform.translation
                    parent, child = _frame(tr.header.frame_id), _frame(tr.child_frame_id)
                    where = f"{TF_STATIC_TOPIC}.transforms[{i}]({parent}->{child})"
                    try:
                        R = R_from_quat_xyzw([q.x, q.y, q.z, q.w])
                    except ValueError as exc:
                        raise CalibrationError(str(exc), path=bag_path, field=where + ".rotation") from None
                    T = make_T(R, [t.x, t.y, t.z])
                    validate.check_finite(T, path=bag_path, field=where)
                    edges.append((parent, child, T, where))
    except (AnyReaderError, OSError) as exc:
        raise InputDataError(f"cannot read bag: {exc}", path=bag_path) from None
    except Exception as exc:   # rosbags raises several reader/deserializer error types
        if type(exc).__module__.startswith("rosbags"):
            raise InputDataError(f"cannot read bag: {exc}", path=bag_path) from None
        raise

    if not camera_msgs and not lidar_frames:
        raise CalibrationError(f"no {CAMERA_INFO} or {POINT_CLOUD2} topic in the bag", path=bag_path, field="topics")
    poses = _compose_tf(edges, base_frame, bag_path)
    if edges and not any(base_frame in (e[0], e[1]) for e in edges):
        frames = sorted({e[0] for e in edges} | {e[1] for e in edges})
        raise CalibrationError(f"base frame {base_frame!r} is not in {TF_STATIC_TOPIC} (frames: {frames})",
                               path=bag_path, field=TF_STATIC_TOPIC)

    cameras = []
    for topic, msg in camera_msgs:
        frame = _frame(msg.header.frame_id)
        model = _camera_model(msg, bag_path, topic)
        cameras.append(CameraSensor(sensor_name_from_topic(topic), frame, model,
                                    _pose(poses, frame, base_frame, bag_path, f"{topic}.header.frame_id")))
    lidars = [LidarSensor(sensor_name_from_topic(topic), frame,
                          _pose(poses, frame, base_frame, bag_path, f"{topic}.header.frame_id"))
              for topic, frame in lidar_frames]
    rig = Rig(cameras, lidars, base_frame=base_frame, source=str(bag_path), kind="ros_bag")
    validate.validate_rig(rig, bag_path)
    return rig


def _first(reader, conn):
    for c, _, raw in reader.messages(connections=[conn]):
        return reader.deserialize(raw, c.msgtype)
    return None


def _camera_model(msg, path: Path, topic: str) -> CameraModel:
    width, height = int(msg.width), int(msg.height)
    validate.check_image_size(width, height, path=path, field=f"{topic}.width")
    k = np.asarray(_field(msg, "k", "K"), dtype=np.float64).reshape(-1)
    K = validate.check_intrinsics(k.reshape(3, 3) if k.size == 9 else k, width, height, path=path,
                                  field=f"{topic}.k")
    D = np.asarray(_field(msg, "d", "D"), dtype=np.float64).reshape(-1)
    dm = str(msg.distortion_model).strip()
    if dm in ("", "none") and not np.any(D):
        return PinholeCamera(K, None, width, height, distortion_model="none")
    if dm in ("plumb_bob", "rational_polynomial"):
        D = validate.check_distortion(D, dm, path=path, field=f"{topic}.d")
        return PinholeCamera(K, D, width, height, distortion_model=dm)
    if dm in ("equidistant", "fisheye", "kannala_brandt"):
        D = validate.check_distortion(D, "equidistant", path=path, field=f"{topic}.d")
        return FisheyeCamera(K, D, width, height)
    raise CalibrationError(f"unsupported distortion_model {dm!r} (plumb_bob, rational_polynomial, equidistant)",
                           path=path, field=f"{topic}.distortion_model")


def _compose_tf(edges: list[tuple[str, str, np.ndarray, str]], base_frame: str, path: Path) -> dict[str, np.ndarray]:
    """T_base_from_frame for every frame connected to ``base_frame`` (edges usable both ways)."""
    graph: dict[str, list[tuple[str, np.ndarray]]] = {}
    parents: dict[str, str] = {}
    for parent, child, T, where in edges:
        if child in parents and parents[child] != parent:
            raise CalibrationError(f"frame {child!r} has two parents ({parents[child]!r} and {parent!r})",
                                   path=path, field=where)
        parents[child] = parent
        validate.check_transform(T, path=path, field=where)
        graph.setdefault(parent, []).append((child, T))
        graph.setdefault(child, []).append((parent, invert_T(T)))
    poses = {base_frame: np.eye(4)}
    todo = deque([base_frame])
    while todo:
        frame = todo.popleft()
        for nxt, T_frame_from_nxt in graph.get(frame, []):
            if nxt not in poses:
                poses[nxt] = poses[frame] @ T_frame_from_nxt
                todo.append(nxt)
    return poses


def _pose(poses: dict[str, np.ndarray], frame: str, base_frame: str, path: Path, field: str) -> np.ndarray:
    if frame not in poses:
        raise CalibrationError(f"frame {frame!r} is not connected to {base_frame!r} through {TF_STATIC_TOPIC}",
                               path=path, field=field)
    return poses[frame]
