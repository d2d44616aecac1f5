"""A recorded bag played back message by message: rosbag2 (MCAP or SQLite3 storage, a folder or a
bare ``.mcap`` / ``.db3``) and ROS 1 ``.bag``, all through ``rosbags.highlevel.AnyReader``.

Topics come from ``input.topics`` in the config (keys: image, camera_info, points, tf, semantic,
instance); any key left out is found the way the drive reader finds it: the first
``sensor_msgs/Image`` (or ``CompressedImage``) and ``PointCloud2`` topics outside ``/gt/``,
preferring ``.../image_raw`` and ``.../points``; ``{camera namespace}/camera_info``; ``/tf``;
``/gt/{camera}/semantic`` and ``/gt/{camera}/instance`` (the ground-truth masks of
``segfuse sim`` drives). Calibration from the bag (``CameraInfo`` + ``/tf_static``,
calibration.io_ros) unless a rig file is given.

Messages come out in log-time order as CameraInput, LidarInput and PoseInput; the sync stage
pairs them. A message that cannot be decoded (a corrupt image, a truncated cloud, a type
this topic cannot hold) is skipped, counted and reported; the run goes on. So is an MCAP chunk
that fails to decompress or fails its CRC (pipeline.mcap_io.skip_corrupt_chunks): its topics and
log-time range are reported and the read resumes at the next chunk of the summary's index.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, InputDataError
from pipeline.sources.base import CameraInput, LidarInput, PoseInput, Source, SourceInfo, SourceItem
from pipeline.sources.uri import SourceURI
from pipeline.types import CameraFrame, LidarSweep

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINT_CLOUD2 = "sensor_msgs/msg/PointCloud2"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
STRING = "std_msgs/msg/String"
BASE_FRAME = "base_link"
META_TOPIC = "/segfuse/drive_meta"

ROLE_TYPES = {"image": (IMAGE, COMPRESSED), "camera_info": (CAMERA_INFO,), "points": (POINT_CLOUD2,),
              "tf": (TF_MESSAGE,), "semantic": (IMAGE,), "instance": (IMAGE,)}


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class BagSource(Source):
    def __init__(self, uri: SourceURI, *, topics: dict[str, str] | None = None, rig: Any = None,
                 want_truth: bool = False, config_path: str = "<config>") -> None:
        super().__init__()
        from pipeline.drive.rosbag import open_bag

        self.path = path = uri.path
        self._reader = open_bag(path, ros1=uri.kind == "ros1")
        from pipeline.mcap_io import skip_corrupt_chunks

        skip_corrupt_chunks(self._reader, self._chunk_lost)     # a corrupt MCAP chunk: skipped, counted
        try:
            self._setup(uri, dict(topics or {}), rig, want_truth, config_path)
        except BaseException:
            self.close()
            raise

    def _chunk_lost(self, topics: str, start_ns: int, end_ns: int, exc: BaseException) -> None:
        where = f"{self.path} log time {start_ns / 1e9:.3f}-{end_ns / 1e9:.3f} s ({topics})"
        self.skip("chunk", where, f"corrupt MCAP chunk ({exc}); its messages are lost, the read goes on")

    # -- opening ---------------------------------------------------------------------------
    def _setup(self, uri: SourceURI, topics: dict[str, str], rig: Any, want_truth: bool, config_path: str) -> None:
        from calibration.io_ros import sensor_name_from_topic

        path = self.path
        self._types: dict[str, set[str]] = {}
        self._count: dict[str, int] = {}
        for c in self._reader.connections:
            self._types.setdefault(c.topic, set()).add(c.msgtype)
            self._count[c.topic] = self._count.get(c.topic, 0) + int(getattr(c, "msgcount", 0) or 0)
        for role, topic in topics.items():
            if topic not in self._types:
                raise ConfigError(f"topic {topic} is not in the bag {path} (topics: {', '.join(sorted(self._types))})",
                                  path=config_path, field=f"input.topics.{role}")
            if not self._types[topic] & set(ROLE_TYPES[role]):
                raise ConfigError(f"topic {topic} holds {', '.join(sorted(self._types[topic]))}; a {role} topic holds "
                                  f"{' or '.join(ROLE_TYPES[role])}", path=config_path, field=f"input.topics.{role}")
        image = topics.get("image") or self._pick((IMAGE, COMPRESSED), ("/image_raw", "/image_rect_color", "/image"))
        points = topics.get("points") or self._pick((POINT_CLOUD2,), ("/points",))
        if image is None:
            raise InputDataError("no sensor_msgs/Image or CompressedImage topic outside /gt/ (set input.topics.image)",
                                 path=path)
        ns = image.rsplit("/", 1)[0] if image.count("/") > 1 else ""
        if image.endswith("/compressed"):
            ns = ns.rsplit("/", 1)[0]
        info = topics.get("camera_info")
        if info is None:
            infos = sorted(t for t, ty in self._types.items() if CAMERA_INFO in ty)
            info = f"{ns}/camera_info" if f"{ns}/camera_info" in infos else (infos[0] if len(infos) == 1 else None)
        tf = topics.get("tf") or ("/tf" if TF_MESSAGE in self._types.get("/tf", ()) else None)

        if rig is None:
            from calibration.io_ros import load_rig_from_bag

            rig = load_rig_from_bag(path)
        self.rig = rig
        if info is not None and sensor_name_from_topic(info) in rig.camera_names:
            self.camera_id = sensor_name_from_topic(info)
        elif len(rig.cameras) == 1:
            self.camera_id = rig.cameras[0].name
        else:
            raise ConfigError(f"cannot tell which rig camera {image} is (cameras: {rig.camera_names}); set "
                              "input.topics.camera_info", path=config_path, field="input.topics.camera_info")
        self.lidar_id = None
        if points is not None:
            name = sensor_name_from_topic(points)
            self.lidar_id = name if name in rig.lidar_names else (rig.lidars[0].name if len(rig.lidars) == 1 else name)
        cam = rig.camera(self.camera_id)
        self._size = (int(cam.height), int(cam.width))
        truth = {}
        if want_truth:
            for role in ("semantic", "instance"):
                t = topics.get(role) or f"/gt/{self.camera_id}/{role}"
                if IMAGE in self._types.get(t, ()):
                    truth[role] = t
        self.topics = {"image": image, "camera_info": info, "points": points, "tf": tf, **truth}
        self._role = {t: r for r, t in self.topics.items() if t is not None and r != "camera_info"}
        rate = None
        if META_TOPIC in self._types:
            rate = self._meta_rate()
        if rate is None and self._reader.duration and self._count.get(image, 0) > 1:
            rate = (self._count[image] - 1) / (self._reader.duration / 1e9)
        self.info = SourceInfo(name=f"{uri.kind} {path.name}", uri=uri.raw, kind=uri.kind, live=False, rate_hz=rate,
                               num_frames=self._count.get(image) or None, has_lidar=points is not None,
                               has_poses=tf is not None, has_truth=bool(truth), extra={"topics": dict(self.topics)})
        log.info("%s: camera %s from %s, LiDAR %s from %s, poses from %s%s", path, self.camera_id, image,
                 self.lidar_id, points, tf, f", ground truth from {', '.join(truth.values())}" if truth else "")

    def _pick(self, types: tuple[str, ...], prefer: tuple[str, ...]) -> str | None:
        found = sorted(t for t, ty in self._types.items() if ty & set(types) and not t.startswith("/gt/"))
        found.sort(key=lambda t: next((i for i, s in enumerate(prefer) if t.endswith(s)), len(prefer)))
        return found[0] if found else None

    def _meta_rate(self) -> float | None:
        import json

        conns = [c for c in self._reader.connections if c.topic == META_TOPIC and c.msgtype == STRING]
        for conn, _, raw in self._reader.messages(connections=conns):
            try:
                return float(json.loads(self._reader.deserialize(raw, STRING).data)["rate_hz"])
            except Exception:       # a foreign or damaged meta message: the rate is estimated instead
                return None
        return None

    # -- playing ---------------------------------------------------------------------------
    def _items(self) -> Iterator[SourceItem]:
        conns = [c for c in self._reader.connections if c.topic in self._role]
        seq = {"image": 0, "points": 0}
        poses: list[tuple[int, np.ndarray]] = []
        pending: CameraInput | None = None
        pending_log = 0
        want = {r for r in ("semantic", "instance") if r in self.topics}
        world: str | None = None

        def flush_poses() -> Iterator[PoseInput]:
            if poses:
                poses.sort(key=lambda p: p[0])
                stamps = np.array([p[0] for p in poses], np.int64)
                yield PoseInput(stamps, np.stack([p[1] for p in poses]), int(stamps[-1]))
                poses.clear()

        try:
            messages = self._reader.messages(connections=conns)
            for conn, log_ns, raw in messages:
                if pending is not None and log_ns > pending_log:
                    yield from flush_poses()
                    yield pending
                    pending = None
                role = self._role[conn.topic]
                if conn.msgtype not in ROLE_TYPES[role]:
                    self.skip("message", conn.topic, f"unknown message type {conn.msgtype} on the {role} topic")
                    continue
                try:
                    msg = self._reader.deserialize(raw, conn.msgtype)
                except Exception as exc:      # rosbags' decoding errors have no common base class
                    self.skip("message", conn.topic, f"cannot decode {conn.msgtype}: {exc}")
                    continue
                if role in seq:                       # the index of the message, readable or not
                    seq[role] += 1
                try:
                    if role == "image":
                        frame = CameraFrame(self.camera_id, _stamp_ns(msg.header), self._image(msg, conn))
                        item = CameraInput(frame, seq["image"] - 1)
                        if want:
                            if pending is not None:
                                yield from flush_poses()
                                yield pending
                            pending, pending_log = item, log_ns
                        else:
                            yield from flush_poses()
                            yield item
                    elif role == "points":
                        pts, t_off = self._cloud(msg, conn)
                        sweep = LidarSweep(self.lidar_id, _stamp_ns(msg.header), pts, t_off)
                        yield from flush_poses()
                        yield LidarInput(sweep, seq["points"] - 1)
                    elif role == "tf":
                        for tf in msg.transforms:
                            if tf.child_frame_id.lstrip("/") != BASE_FRAME:
                                continue
                            parent = tf.header.frame_id.lstrip("/")
                            world = world or parent
                            if parent == world:
                                poses.append((_stamp_ns(tf.header), _matrix(tf.transform)))
                    elif pending is not None and _stamp_ns(msg.header) == pending.stamp_ns:
                        from pipeline.drive.rosbag import image_array

                        arr = image_array(msg, self.path, conn.topic)
                        dtype = np.uint8 if role == "semantic" else np.uint16
                        if arr.shape != self._size or arr.dtype != dtype:
                            raise InputDataError(f"{arr.shape} {arr.dtype}, expected {self._size} "
                                                 f"{np.dtype(dtype).name}", path=self.path, field=conn.topic)
                        setattr(pending, f"{role}_truth", arr)
                        if all(getattr(pending, f"{r}_truth") is not None for r in want):
                            yield from flush_poses()
                            yield pending
                            pending = None
                except InputDataError as exc:
                    self.skip("image" if role in ("image", "semantic", "instance") else
                              "cloud" if role == "points" else "message", conn.topic, exc.message)
        except Exception as exc:
            if type(exc).__module__.startswith("rosbags"):
                raise InputDataError(f"cannot read the bag: {exc}", path=self.path) from exc
            raise
        yield from flush_poses()
        if pending is not None:
            yield pending

    def _image(self, msg: Any, conn: Any) -> np.ndarray:
        from pipeline.drive.rosbag import image_array, to_bgr

        if conn.msgtype == COMPRESSED:
            import cv2

            image = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise InputDataError(f"cannot decode the {msg.format} image", path=self.path, field=conn.topic)
        else:
            image = to_bgr(image_array(msg, self.path, conn.topic), msg.encoding)
        if image.shape[:2] != self._size:
            raise InputDataError(f"image is {image.shape[1]}x{image.shape[0]}, the calibration says "
                                 f"{self._size[1]}x{self._size[0]}", path=self.path, field=conn.topic)
        return image

    def _cloud(self, msg: Any, conn: Any) -> tuple[np.ndarray, np.ndarray | None]:
        return cloud_points(msg, self.path, conn.topic)

    def close(self) -> None:
        from pipeline.mcap_io import forget_reader

        forget_reader(self._reader)
        self._reader.close()


def cloud_points(msg: Any, path: Any, field: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A PointCloud2 message -> ((N, 4) x, y, z, intensity, per-point time offsets or None), the
    points without a return dropped (drivers emit NaN for them). Shared by every cloud source."""
    from pipeline.drive.rosbag import points_from_cloud

    pts, t_off = points_from_cloud(msg, path, field)
    finite = np.isfinite(pts[:, :3]).all(axis=1)
    if pts.shape[0] and not finite.any():     # a sweep with no return at all: the frame goes camera-only
        raise InputDataError(f"all {pts.shape[0]} points are NaN (no return)", path=path, field=field)
    if not finite.all():
        pts = pts[finite]
        t_off = None if t_off is None else t_off[finite]
    pts[:, 3] = np.nan_to_num(pts[:, 3])
    return np.ascontiguousarray(pts), t_off


def _matrix(transform: Any) -> np.ndarray:
    from pipeline.drive.common import matrix_from_quat

    r, t = transform.rotation, transform.translation
    T = np.eye(4)
    T[:3, :3] = matrix_from_quat(np.array([r.x, r.y, r.z, r.w]))
    T[:3, 3] = (t.x, t.y, t.z)
    return T
