"""A drive as a rosbag2 (MCAP storage) with standard ROS 2 messages; see docs/drive_format.md.

Writer: :class:`RosbagWriter` (used through ``pipeline.drive.io.open_writer``).
Reader: :class:`RosbagDrive` (through ``open_drive``) reads our bags exactly, and also
rosbag2 folders with SQLite3 or MCAP storage, and bare ``.mcap`` files, that other tools
recorded (frames then carry no ground truth).

Every heavy import (rosbags, mcap) is inside a function.
"""
from __future__ import annotations

import logging
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.drive.common import (
    NS_PER_S,
    SWEEP_PERIOD_NS,
    CheckedFrame,
    check_calib,
    check_frame,
    class_id_from_name,
    class_name,
    empty_poses,
    matrix_from_quat,
    meta_from_json,
    meta_to_json,
    pose_window_ns,
    select_poses,
    taxonomy_names,
    transform,
)
from pipeline.drive.io import Drive
from pipeline.drive.types import BASE_FRAME, WORLD_FRAME, DriveCalib, DriveFrame, DriveMeta
from pipeline.errors import ConfigError, InputDataError, SegfuseError
from pipeline.msgs import header, transform_stamped
from pipeline.types import Box3D, CameraFrame, LaneBoundaryGT, LidarSweep

log = logging.getLogger(__name__)

# --- Topics and types -----------------------------------------------------------------------
TOPIC_TF = "/tf"
TOPIC_TF_STATIC = "/tf_static"
TOPIC_META = "/segfuse/drive_meta"
TOPIC_OBJECTS = "/gt/objects"
TOPIC_LANES = "/gt/lanes"

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINT_CLOUD2 = "sensor_msgs/msg/PointCloud2"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
STRING = "std_msgs/msg/String"
DETECTIONS = "vision_msgs/msg/Detection3DArray"
LANES = "segfuse_msgs/msg/LaneBoundaryArray"

COMPRESSIONS = ("zstd", "lz4", "none")
DEFAULT_COMPRESSION = "lz4"


def image_topic(camera_id: str) -> str:
    return f"/{camera_id}/image_raw"


def camera_info_topic(camera_id: str) -> str:
    return f"/{camera_id}/camera_info"


def points_topic(lidar_id: str) -> str:
    return f"/{lidar_id}/points"


def semantic_topic(camera_id: str) -> str:
    return f"/gt/{camera_id}/semantic"


def instance_topic(camera_id: str) -> str:
    return f"/gt/{camera_id}/instance"


def labels_topic(lidar_id: str) -> str:
    return f"/gt/{lidar_id}/labels"


# sensor_msgs/PointField datatypes
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
_FIELD_DTYPES = {INT8: "i1", UINT8: "u1", INT16: "i2", UINT16: "u2", INT32: "i4", UINT32: "u4",
                 FLOAT32: "f4", FLOAT64: "f8"}

LABELS_DTYPE = np.dtype({"names": ["class_id", "instance_id"], "formats": ["u1", "<u2"],
                         "offsets": [0, 2], "itemsize": 4})


def _stamp_ns(t: Any) -> int:
    return int(t.sec) * NS_PER_S + int(t.nanosec)


# lz4 frame level of MCAP chunks: negative levels are lz4's "acceleration" (LZ4F fast mode).
# Measured on a fused 120k-point cloud (3.4 MB): level 0 4.1 ms at 0.64 of the size, -1 3.1 ms at
# 0.63, -4 2.5 ms at 0.68; zstd 1 7.3 ms at 0.52. Any level decodes with a plain lz4 frame reader.
LZ4_LEVEL = -1


def use_lz4_chunks(writer: Any) -> None:
    """Make a rosbags rosbag2 writer compress MCAP chunks with lz4 (rosbags compresses MCAP chunks
    with zstd only; lz4 frames are what the MCAP spec calls "lz4") and write each chunk's CRC-32
    (pipeline.mcap_io.configure_chunks)."""
    from pipeline.mcap_io import configure_chunks

    configure_chunks(writer, "lz4", lz4_level=LZ4_LEVEL)


def latched_qos() -> list[Any]:
    """QoS of a latched topic (transient local, keep last 1), as ros2 bag record stores it."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    infinite = QosTime(9223372036, 854775807)
    return [Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, infinite,
                infinite, QosLiveliness.AUTOMATIC, infinite, False)]


# --- Writer ---------------------------------------------------------------------------------

class RosbagWriter:
    """Writes a rosbag2 folder with MCAP storage into ``bag_dir`` (which must not exist).

    compression: MCAP chunk compression. "lz4" (default): as fast as "none" and a third
    smaller on full-size frames; "zstd": ~9% smaller than lz4 but 1.5-2x slower to write and
    to read; "none".
    """

    def __init__(self, bag_dir: Path, calib: DriveCalib, meta: DriveMeta, *,
                 compression: str = DEFAULT_COMPRESSION) -> None:
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

        from pipeline.msgs import make_typestore

        if compression not in COMPRESSIONS:
            raise ConfigError(f"unknown compression '{compression}' (known: {', '.join(COMPRESSIONS)})",
                              field="compression")
        self.path = Path(bag_dir)
        check_calib(calib, self.path)
        self.calib = calib
        self._meta_json = meta_to_json(meta)
        self._ts = make_typestore()
        self._class_names = taxonomy_names()
        self._writer = Writer(self.path, version=8, storage_plugin=StoragePlugin.MCAP)
        if compression == "zstd":
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._writer.open()
        from pipeline.mcap_io import configure_chunks

        configure_chunks(self._writer, compression, lz4_level=LZ4_LEVEL)   # lz4 chunks, every chunk's CRC-32
        self._conns: dict[str, Any] = {}
        self._started = False
        self._last_pose_ns: int | None = None
        self._dropped_poses = 0
        cam, lid = calib.camera_id, calib.lidar_id
        self._frame_cam = calib.camera_frame_id
        self._frame_lidar = lid
        self._topics = {"image": image_topic(cam), "info": camera_info_topic(cam), "points": points_topic(lid),
                        "semantic": semantic_topic(cam), "instance": instance_topic(cam),
                        "labels": labels_topic(lid)}
        self._camera_info = self._make_camera_info()

    # -- connections and messages --
    def _conn(self, topic: str, msgtype: str, latched: bool = False) -> Any:
        conn = self._conns.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self._ts,
                                               offered_qos_profiles=latched_qos() if latched else ())
            self._conns[topic] = conn
        return conn

    def _put(self, topic: str, msgtype: str, stamp_ns: int, msg: Any, latched: bool = False) -> None:
        self._writer.write(self._conn(topic, msgtype, latched), int(stamp_ns), self._ts.serialize_cdr(msg, msgtype))

    def _header(self, stamp_ns: int, frame_id: str) -> Any:
        return header(self._ts, stamp_ns, frame_id)

    def _make_camera_info(self) -> Any:
        c, T = self.calib, self._ts.types
        K = np.asarray(c.K, np.float64)
        P = np.zeros((3, 4))
        P[:, :3] = K
        roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return lambda stamp_ns: T[CAMERA_INFO](
            header=self._header(stamp_ns, self._frame_cam), height=int(c.height), width=int(c.width),
            distortion_model="plumb_bob", d=np.asarray(c.dist, np.float64).copy(), k=K.reshape(9).copy(),
            r=np.eye(3).reshape(9), p=P.reshape(12), binning_x=0, binning_y=0, roi=roi)

    def _image(self, stamp_ns: int, array: np.ndarray, encoding: str) -> Any:
        h, w = array.shape[:2]
        if array.dtype == np.uint8:
            data = array.reshape(-1)
        else:
            data = array.astype("<u2").view(np.uint8).reshape(-1)
        return self._ts.types[IMAGE](header=self._header(stamp_ns, self._frame_cam), height=h, width=w,
                                     encoding=encoding, is_bigendian=0, step=int(data.size // h), data=data)

    def _cloud(self, stamp_ns: int, fields: list[tuple[str, int, int]], point_step: int, n: int,
               data: np.ndarray, is_dense: bool) -> Any:
        T = self._ts.types
        pf = [T["sensor_msgs/msg/PointField"](name=name, offset=off, datatype=dt, count=1) for name, off, dt in fields]
        return T[POINT_CLOUD2](header=self._header(stamp_ns, self._frame_lidar), height=1, width=n, fields=pf,
                               is_bigendian=False, point_step=point_step, row_step=point_step * n,
                               data=data, is_dense=is_dense)

    # -- frames --
    def _start(self, t0_ns: int) -> None:
        c = self.calib
        tfs = []
        for child, T_base_from_x in ((c.camera_frame_id, c.T_base_from_cam), (c.lidar_id, c.T_base_from_lidar)):
            tfs.append(transform_stamped(self._ts, t0_ns, BASE_FRAME, child, T_base_from_x))
        self._put(TOPIC_TF_STATIC, TF_MESSAGE, t0_ns, self._ts.types[TF_MESSAGE](transforms=tfs), latched=True)
        self._put(TOPIC_META, STRING, t0_ns, self._ts.types[STRING](data=self._meta_json), latched=True)
        self._started = True

    def write(self, frame: DriveFrame) -> None:
        c = check_frame(frame, self.calib, self.path)
        if (c.point_class is None) != (c.point_instance is None):
            raise InputDataError("point_class and point_instance must both be given or both be None",
                                 path=self.path, field="point_class")
        cam_ns, lid_ns = int(frame.camera.stamp_ns), int(frame.lidar.stamp_ns)
        if not self._started:
            self._start(min([cam_ns, lid_ns] + ([int(c.pose_stamps_ns[0])] if c.pose_stamps_ns.size else [])))
        self._write_poses(c)
        T = self._ts.types
        self._put(self._topics["info"], CAMERA_INFO, cam_ns, self._camera_info(cam_ns))
        self._put(self._topics["image"], IMAGE, cam_ns, self._image(cam_ns, c.image, "bgr8"))
        self._put(self._topics["points"], POINT_CLOUD2, lid_ns, self._points_msg(lid_ns, c))
        if c.semantic is not None:
            self._put(self._topics["semantic"], IMAGE, cam_ns, self._image(cam_ns, c.semantic, "mono8"))
        if c.instance is not None:
            self._put(self._topics["instance"], IMAGE, cam_ns, self._image(cam_ns, c.instance, "mono16"))
        if c.point_class is not None:
            labels = np.zeros(c.points.shape[0], LABELS_DTYPE)   # zeros: the padding byte too
            labels["class_id"] = c.point_class
            labels["instance_id"] = c.point_instance
            msg = self._cloud(lid_ns, [("class_id", 0, UINT8), ("instance_id", 2, UINT16)], LABELS_DTYPE.itemsize,
                              labels.shape[0], labels.view(np.uint8), True)
            self._put(self._topics["labels"], POINT_CLOUD2, lid_ns, msg)
        if c.has_gt or frame.boxes or frame.lanes:
            self._put(TOPIC_OBJECTS, DETECTIONS, cam_ns, self._detections(cam_ns, frame.boxes))
            lanes = [T["segfuse_msgs/msg/LaneBoundary"](
                lane_id=int(lane.lane_id), type=str(lane.type),
                points=[T["geometry_msgs/msg/Point"](x=float(p[0]), y=float(p[1]), z=float(p[2]))
                        for p in np.asarray(lane.points_base, np.float64)]) for lane in frame.lanes]
            self._put(TOPIC_LANES, LANES, cam_ns,
                      T[LANES](header=self._header(cam_ns, BASE_FRAME), boundaries=lanes))

    def _write_poses(self, c: CheckedFrame) -> None:
        stamps, Ts = c.pose_stamps_ns, c.T_world_from_base
        if self._last_pose_ns is not None:
            keep = stamps > self._last_pose_ns
            self._dropped_poses += int(np.count_nonzero(~keep))
            stamps, Ts = stamps[keep], Ts[keep]
        if not stamps.size:
            return
        for stamp, T_ in zip(stamps.tolist(), Ts):
            tf = transform_stamped(self._ts, stamp, WORLD_FRAME, BASE_FRAME, T_)
            self._put(TOPIC_TF, TF_MESSAGE, stamp, self._ts.types[TF_MESSAGE](transforms=[tf]))
        self._last_pose_ns = int(stamps[-1])

    def _points_msg(self, stamp_ns: int, c: CheckedFrame) -> Any:
        pts = c.points
        n = pts.shape[0]
        fields = [("x", 0, FLOAT32), ("y", 4, FLOAT32), ("z", 8, FLOAT32), ("intensity", 12, FLOAT32)]
        if c.t_offset_u32 is None:
            buf = pts
        else:
            buf = np.empty((n, 5), np.float32)
            buf[:, :4] = pts
            buf.view(np.uint32)[:, 4] = c.t_offset_u32
            fields.append(("t", 16, UINT32))
        is_dense = bool(np.isfinite(pts[:, :3]).all())
        return self._cloud(stamp_ns, fields, buf.shape[1] * 4, n, buf.reshape(-1).view(np.uint8), is_dense)

    def _detections(self, stamp_ns: int, boxes: list[Box3D]) -> Any:
        T = self._ts.types
        header = self._header(stamp_ns, BASE_FRAME)
        dets = []
        for box in boxes:
            center = np.asarray(box.center, np.float64)
            size = np.asarray(box.size, np.float64)
            half = 0.5 * float(box.yaw)
            pose = T["geometry_msgs/msg/Pose"](
                position=T["geometry_msgs/msg/Point"](x=float(center[0]), y=float(center[1]), z=float(center[2])),
                orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=math.sin(half), w=math.cos(half)))
            hyp = T["vision_msgs/msg/ObjectHypothesisWithPose"](
                hypothesis=T["vision_msgs/msg/ObjectHypothesis"](
                    class_id=class_name(self._class_names, box.class_id, self.path), score=1.0),
                pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)))
            dets.append(T["vision_msgs/msg/Detection3D"](
                header=header, results=[hyp],
                bbox=T["vision_msgs/msg/BoundingBox3D"](
                    center=pose, size=T["geometry_msgs/msg/Vector3"](x=float(size[0]), y=float(size[1]),
                                                                      z=float(size[2]))),
                id=str(int(box.instance_id))))
        return T[DETECTIONS](header=header, detections=dets)

    def close(self) -> None:
        if not self._started:
            log.warning("%s: closing a drive with no frames", self.path)
            self._start(0)
        if self._dropped_poses:
            log.debug("%s: %d pose stamps repeated by overlapping frames were written once", self.path,
                      self._dropped_poses)
        self._writer.close()

    def abort(self) -> None:
        try:
            self._writer.abort()
        except Exception as exc:  # the folder is removed next anyway
            log.debug("rosbag writer abort: %s", exc)


# --- Reading: storage back-ends ---------------------------------------------------------------

def _header_stamp_ns(raw: bytes | memoryview) -> int:
    """Header stamp of a CDR message whose first field is std_msgs/Header, without decoding it."""
    endian = "<" if bytes(raw[1:2]) == b"\x01" else ">"
    sec, nsec = struct.unpack(endian + "iI", bytes(raw[4:12]))
    return sec * NS_PER_S + nsec


class _McapSource:
    """An MCAP file read with the ``mcap`` library (index, time ranges, lz4/zstd chunks);
    messages are decoded with a rosbags type store built from the file's own schemas."""

    def __init__(self, mcap_path: Path) -> None:
        from mcap.exceptions import McapError
        from mcap.reader import make_reader
        from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

        from pipeline.msgs import register_msgs

        self.path = mcap_path
        self._file = open(mcap_path, "rb")
        try:
            self._reader = make_reader(self._file)
            summary = self._reader.get_summary()
        except (McapError, EOFError, ValueError, struct.error, OSError) as exc:
            self._file.close()
            raise InputDataError(f"not a readable MCAP file (truncated or corrupt?): {exc}", path=mcap_path) from exc
        if summary is None:
            self._file.close()
            raise InputDataError("MCAP file has no summary section (recording not closed properly?); "
                                 "recover it with 'mcap recover'", path=mcap_path)
        self._summary = summary
        self.topics: dict[str, str] = {}
        self._channel_ids: dict[str, list[int]] = {}
        typs: dict[str, Any] = {}
        for ch in summary.channels.values():
            schema = summary.schemas.get(ch.schema_id)
            if schema is None:
                continue
            self.topics.setdefault(ch.topic, schema.name)
            self._channel_ids.setdefault(ch.topic, []).append(ch.id)
        for schema in summary.schemas.values():
            try:
                text = schema.data.decode()
                if schema.encoding == "ros2msg":
                    typs.update(get_types_from_msg(text, schema.name))
                elif schema.encoding == "ros2idl":
                    typs.update(get_types_from_idl(text))
            except Exception as exc:  # an unparseable schema only matters if its topic is read
                log.warning("%s: cannot parse schema %s: %s", mcap_path, schema.name, exc)
        self.typestore = get_typestore(Stores.ROS2_HUMBLE)
        register_msgs(self.typestore)
        new = {k: v for k, v in typs.items() if k not in self.typestore.fielddefs}
        if new:
            self.typestore.register(new)

    def log_times(self, topic: str) -> np.ndarray:
        """Sorted log times of a topic, from the message index records (no chunk is read)."""
        ids = set(self._channel_ids.get(topic, ()))
        if not ids:
            return np.zeros(0, np.int64)
        parts = []
        for ci in self._summary.chunk_indexes:
            if not ci.message_index_offsets:
                return self._scan_log_times(topic)
            for cid in ids:
                offset = ci.message_index_offsets.get(cid)
                if offset is None:
                    continue
                self._file.seek(offset)
                opcode, _length, _channel, nbytes = struct.unpack("<BQHI", self._file.read(15))
                if opcode != 0x07:
                    raise InputDataError(f"bad message index record at byte {offset}", path=self.path, field=topic)
                parts.append(np.frombuffer(self._file.read(nbytes), "<u8").reshape(-1, 2)[:, 0])
        if not self._summary.chunk_indexes:
            return self._scan_log_times(topic)
        return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)

    def _scan_log_times(self, topic: str) -> np.ndarray:
        return np.array([t for _, t, _ in self.messages([topic])], np.int64)

    def messages(self, topics: list[str], start: int | None = None,
                 stop: int | None = None) -> Iterator[tuple[str, int, bytes]]:
        """(topic, log_time_ns, raw CDR) in log-time order, ``start <= log_time < stop``."""
        try:
            try:
                it = self._reader.iter_messages(topics=topics, starting_at=start, ending_before=stop)
            except TypeError:  # mcap < 1.5
                it = self._reader.iter_messages(topics=topics, start_time=start, end_time=stop)
            for _schema, channel, message in it:
                yield channel.topic, message.log_time, message.data
        except SegfuseError:
            raise
        except Exception as exc:
            raise InputDataError(f"cannot read messages: {exc}", path=self.path, field=",".join(topics)) from exc

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        return self.typestore.deserialize_cdr(raw, msgtype)

    def close(self) -> None:
        self._file.close()


def open_bag(path: Path, *, ros1: bool = False) -> Any:
    """THE bag reader of segfuse: an opened ``rosbags.highlevel.AnyReader`` over a rosbag2 folder,
    a bare .mcap/.db3 or (``ros1``) a ROS 1 .bag, with our message types registered; an
    unreadable bag is refused naming the file. Runs (sources/bag.py), drives (this module),
    evaluation and training all read through it. Close it (or use it as a context manager)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from pipeline.msgs import make_typestore

    store = get_typestore(Stores.ROS1_NOETIC) if ros1 else make_typestore()
    reader = AnyReader([Path(path)], default_typestore=store)
    try:
        reader.open()
    except Exception as exc:      # rosbags raises its own error types for unreadable bags
        raise InputDataError(f"cannot open the bag: {exc}", path=path) from exc
    return reader


class _RosbagsSource:
    """Any rosbag2 folder rosbags reads (SQLite3 storage, split or compressed bags)."""

    def __init__(self, bag_dir: Path) -> None:
        self.path = bag_dir
        self._reader = open_bag(bag_dir)
        self.topics = {c.topic: c.msgtype for c in self._reader.connections}

    def log_times(self, topic: str) -> np.ndarray:
        return np.array([t for _, t, _ in self.messages([topic])], np.int64)

    def messages(self, topics: list[str], start: int | None = None,
                 stop: int | None = None) -> Iterator[tuple[str, int, bytes]]:
        conns = [c for c in self._reader.connections if c.topic in topics]
        if not conns:
            return
        try:
            for conn, t, raw in self._reader.messages(conns, start=start, stop=stop):
                yield conn.topic, t, raw
        except SegfuseError:
            raise
        except Exception as exc:
            raise InputDataError(f"cannot read messages: {exc}", path=self.path, field=",".join(topics)) from exc

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        return self._reader.deserialize(raw, msgtype)

    def close(self) -> None:
        self._reader.close()


def _open_source(path: Path) -> _McapSource | _RosbagsSource:
    if path.is_file():
        return _McapSource(path)
    meta_path = path / "metadata.yaml"
    if meta_path.is_file():
        import yaml

        try:
            info = yaml.safe_load(meta_path.read_text())["rosbag2_bagfile_information"]
            storage = info["storage_identifier"]
            files = [Path(p).name for p in info["relative_file_paths"]]
            compression = info.get("compression_mode") or ""
        except (yaml.YAMLError, KeyError, TypeError) as exc:
            raise InputDataError(f"not a valid rosbag2 metadata file: {exc}", path=meta_path) from exc
        for name in files:
            if not (path / name).is_file():
                raise InputDataError("storage file listed in metadata.yaml is missing", path=path / name)
        if storage == "mcap" and len(files) == 1 and not compression:
            return _McapSource(path / files[0])
        return _RosbagsSource(path)
    mcaps = sorted(path.glob("*.mcap"))
    if len(mcaps) == 1:
        return _McapSource(mcaps[0])
    raise InputDataError("no metadata.yaml and not exactly one .mcap file", path=path)


# --- Reading: message decoding ----------------------------------------------------------------

def image_array(msg: Any, where: Path, topic: str) -> np.ndarray:
    """(H, W, C) or (H, W) array of a sensor_msgs/Image, honouring step and endianness."""
    enc = msg.encoding.lower()
    channels = {"bgr8": 3, "rgb8": 3, "bgra8": 4, "rgba8": 4, "mono8": 1, "8uc1": 1, "mono16": 1, "16uc1": 1,
                "8uc3": 3}.get(enc)
    if channels is None:
        raise InputDataError(f"unsupported image encoding '{msg.encoding}'", path=where, field=topic)
    depth = 2 if enc in ("mono16", "16uc1") else 1
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, np.uint8)
    if step < w * channels * depth or data.size < h * step:
        raise InputDataError(f"image data {data.size} bytes too short for {w}x{h} {msg.encoding} (step {step})",
                             path=where, field=topic)
    rows = data[: h * step].reshape(h, step)[:, : w * channels * depth]
    if depth == 2:
        arr = rows.copy().view(">u2" if msg.is_bigendian else "<u2").astype(np.uint16).reshape(h, w)
        return arr
    arr = rows.reshape(h, w, channels) if channels > 1 else rows.reshape(h, w)
    return np.ascontiguousarray(arr)


def to_bgr(arr: np.ndarray, encoding: str) -> np.ndarray:
    enc = encoding.lower()
    if arr.ndim == 2:
        if arr.dtype != np.uint8:
            arr = (arr >> 8).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if enc.startswith("rgb"):
        return np.ascontiguousarray(arr[:, :, 2::-1])
    return np.ascontiguousarray(arr[:, :, :3])


def cloud_fields(msg: Any, where: Path, topic: str) -> np.ndarray:
    """The points of a PointCloud2 as a structured array (one record per point)."""
    endian = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.datatype not in _FIELD_DTYPES:
            raise InputDataError(f"field '{f.name}' has unknown datatype {f.datatype}", path=where, field=topic)
        dt = np.dtype(endian + _FIELD_DTYPES[f.datatype])
        names.append(f.name)
        formats.append(dt if f.count <= 1 else (dt, (int(f.count),)))
        offsets.append(int(f.offset))
    step, w, h = int(msg.point_step), int(msg.width), int(msg.height)
    try:
        dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": step})
    except (ValueError, TypeError) as exc:
        raise InputDataError(f"inconsistent point fields: {exc}", path=where, field=topic) from exc
    data = np.asarray(msg.data, np.uint8)
    n = w * h
    row_step = int(msg.row_step) if h > 1 else step * w
    if data.size < h * row_step or row_step < step * w:
        raise InputDataError(f"data is {data.size} bytes, expected {h} rows of {row_step} bytes "
                             f"({n} points of {step} bytes)", path=where, field=topic)
    if row_step == step * w:
        raw = data[: n * step]
    else:
        raw = np.ascontiguousarray(data[: h * row_step].reshape(h, row_step)[:, : step * w]).reshape(-1)
    return raw.view(dtype)


def points_from_cloud(msg: Any, where: Path, topic: str) -> tuple[np.ndarray, np.ndarray | None]:
    rec = cloud_fields(msg, where, topic)
    names = rec.dtype.names or ()
    for name in ("x", "y", "z"):
        if name not in names:
            raise InputDataError(f"PointCloud2 has no field '{name}'", path=where, field=topic)
    n = rec.shape[0]
    points = np.empty((n, 4), np.float32)
    points[:, 0], points[:, 1], points[:, 2] = rec["x"], rec["y"], rec["z"]
    intensity = next((k for k in ("intensity", "reflectance", "i") if k in names), None)
    points[:, 3] = rec[intensity] if intensity else 0.0
    t_off = None
    if "t" in names and rec.dtype["t"].kind in "iu":
        t_off = rec["t"].astype(np.int64)
    elif "time" in names and rec.dtype["time"].kind == "f":        # seconds after the stamp
        t_off = np.round(rec["time"].astype(np.float64) * NS_PER_S).astype(np.int64)
    return points, t_off


def _yaw_from_quat(q: Any) -> float:
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def _transform_matrix(tf: Any) -> np.ndarray:
    r, t = tf.rotation, tf.translation
    return transform(matrix_from_quat(np.array([r.x, r.y, r.z, r.w])), [t.x, t.y, t.z])


def pair_frames(cam_stamps: np.ndarray, lidar_stamps: np.ndarray, period_ns: int) -> list[tuple[int, int]]:
    """Pair camera i with the LiDAR sweep of the same frame: the sweep whose span
    [stamp, stamp + period) holds the camera stamp, else the sweep whose middle is nearest
    (within one period). One-to-one, in camera order."""
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    if not lidar_stamps.size:
        return pairs
    mid = lidar_stamps + period_ns // 2
    for ci, c in enumerate(cam_stamps.tolist()):
        j = int(np.searchsorted(lidar_stamps, c, side="right")) - 1
        if not (j >= 0 and c < lidar_stamps[j] + period_ns and j not in used):
            j = int(np.argmin(np.abs(mid - c)))
            if abs(int(mid[j]) - c) > period_ns or j in used:
                continue
        used.add(j)
        pairs.append((ci, j))
    return pairs


@dataclass
class _FramePlan:
    cam_log: int
    cam_stamp: int
    lidar_log: int
    lidar_stamp: int
    gt: dict[str, int] = field(default_factory=dict)     # topic -> log time


class RosbagDrive(Drive):
    """A rosbag2 drive opened for reading; see the module docstring."""

    format = "rosbag2"
    FOREIGN_TF_MARGIN_NS = 1 * NS_PER_S   # /tf log times of other recorders lag their stamps

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self._src = _open_source(path)
        try:
            calib, meta, plans = self._index(path)
        except BaseException:
            self._src.close()
            raise
        self._plans = plans
        self._class_names = taxonomy_names()
        super().__init__(path, calib, meta, len(plans))

    # -- opening --
    def _first(self, topic: str) -> Any:
        for _, _, raw in self._src.messages([topic]):
            return self._decode(raw, topic)
        raise InputDataError("topic has no messages", path=self._src.path, field=topic)

    def _decode(self, raw: bytes, topic: str) -> Any:
        try:
            return self._src.deserialize(raw, self._src.topics[topic])
        except SegfuseError:
            raise
        except Exception as exc:
            raise InputDataError(f"cannot decode {self._src.topics.get(topic)}: {exc}", path=self._src.path,
                                 field=topic) from exc

    def _pick(self, msgtype: str, prefer_suffix: str) -> list[str]:
        found = sorted(t for t, ty in self._src.topics.items() if ty == msgtype and not t.startswith("/gt/"))
        return sorted(found, key=lambda t: not t.endswith(prefer_suffix))

    def _index(self, path: Path) -> tuple[DriveCalib, DriveMeta | None, list[_FramePlan]]:
        src = self._src
        where = src.path
        meta = None
        if src.topics.get(TOPIC_META) == STRING:
            meta = meta_from_json(self._first(TOPIC_META).data, where, TOPIC_META)
        self._ours = meta is not None
        images = self._pick(IMAGE, "/image_raw")
        clouds = self._pick(POINT_CLOUD2, "/points")
        if not images:
            raise InputDataError("no sensor_msgs/msg/Image topic (outside /gt/)", path=where)
        if not clouds:
            raise InputDataError("no sensor_msgs/msg/PointCloud2 topic (outside /gt/)", path=where)
        if len(images) > 1 or len(clouds) > 1:
            log.warning("%s: several camera or LiDAR topics; reading %s and %s", where, images[0], clouds[0])
        self._image_topic, self._points_topic = images[0], clouds[0]
        ns = self._image_topic.rsplit("/", 1)[0]
        camera_id = ns.strip("/").replace("/", "_") or "camera"
        infos = sorted(t for t, ty in src.topics.items() if ty == CAMERA_INFO)
        info_topic = f"{ns}/camera_info" if f"{ns}/camera_info" in infos else (infos[0] if len(infos) == 1 else None)
        if info_topic is None:
            raise InputDataError(f"no sensor_msgs/msg/CameraInfo topic for {self._image_topic}", path=where,
                                 field=f"{ns}/camera_info")
        info = self._first(info_topic)
        cloud0 = self._first(self._points_topic)
        lidar_id = cloud0.header.frame_id or self._points_topic.rsplit("/", 1)[0].strip("/")
        if self._ours:
            lidar_id = self._points_topic.rsplit("/", 1)[0].strip("/")
        calib = self._calib(info, info_topic, camera_id, lidar_id, cloud0.header.frame_id or lidar_id)
        self._world_frame = WORLD_FRAME if self._ours else self._find_world_frame()

        # Frame index. Our writer logs every message at its header stamp, so the MCAP message
        # index gives the stamps without reading a chunk; other bags (or ours re-recorded) need
        # one pass over the messages to read their header stamps.
        lid_log = src.log_times(self._points_topic)
        self._log_is_stamp = self._ours and lid_log.size > 0 and int(lid_log[0]) == _stamp_ns(cloud0.header.stamp)
        if self._log_is_stamp:
            cam_log = src.log_times(self._image_topic)
            cam_stamp, lid_stamp = cam_log, lid_log
        else:
            cam_log, cam_stamp = self._log_and_stamps(self._image_topic)
            lid_log, lid_stamp = self._log_and_stamps(self._points_topic)
        if self._ours and cam_log.size == lid_log.size:
            pairs = [(i, i) for i in range(cam_log.size)]
        else:
            period = int(NS_PER_S / meta.rate_hz) if meta and meta.rate_hz > 0 else (
                int(np.median(np.diff(lid_stamp))) if lid_stamp.size > 1 else SWEEP_PERIOD_NS)
            order_c, order_l = np.argsort(cam_stamp, kind="stable"), np.argsort(lid_stamp, kind="stable")
            raw_pairs = pair_frames(cam_stamp[order_c], lid_stamp[order_l], period)
            pairs = [(int(order_c[a]), int(order_l[b])) for a, b in raw_pairs]
            if len(pairs) < max(cam_log.size, lid_log.size):
                log.warning("%s: %d camera images and %d LiDAR sweeps make %d frames", where, cam_log.size,
                            lid_log.size, len(pairs))
        gt_cam = [t for t in (semantic_topic(camera_id), instance_topic(camera_id), TOPIC_OBJECTS, TOPIC_LANES)
                  if t in src.topics]
        gt_lid = [t for t in (labels_topic(lidar_id),) if t in src.topics]
        gt_log_by_stamp: dict[str, dict[int, int]] = {}
        for t in gt_cam + gt_lid:
            if self._log_is_stamp:
                logs = src.log_times(t).tolist()
                gt_log_by_stamp[t] = dict(zip(logs, logs))
            else:
                logs_a, stamps_a = self._log_and_stamps(t)
                gt_log_by_stamp[t] = dict(zip(stamps_a.tolist(), logs_a.tolist()))
        self._gt_topics = {"semantic": semantic_topic(camera_id), "instance": instance_topic(camera_id),
                           "labels": labels_topic(lidar_id), "objects": TOPIC_OBJECTS, "lanes": TOPIC_LANES}
        plans = []
        for ci, li in pairs:
            plan = _FramePlan(int(cam_log[ci]), int(cam_stamp[ci]), int(lid_log[li]), int(lid_stamp[li]))
            for t in gt_cam:
                if plan.cam_stamp in gt_log_by_stamp[t]:
                    plan.gt[t] = gt_log_by_stamp[t][plan.cam_stamp]
            for t in gt_lid:
                if plan.lidar_stamp in gt_log_by_stamp[t]:
                    plan.gt[t] = gt_log_by_stamp[t][plan.lidar_stamp]
            plans.append(plan)
        if meta is not None and meta.num_frames != len(plans):
            log.warning("%s: metadata says %d frames, the bag holds %d", where, meta.num_frames, len(plans))
        return calib, meta, plans

    def _log_and_stamps(self, topic: str) -> tuple[np.ndarray, np.ndarray]:
        logs, stamps = [], []
        for _, t, raw in self._src.messages([topic]):
            logs.append(t)
            stamps.append(_header_stamp_ns(raw))
        return np.array(logs, np.int64), np.array(stamps, np.int64)

    def _find_world_frame(self) -> str | None:
        if TOPIC_TF not in self._src.topics:
            return None
        for k, (_, _, raw) in enumerate(self._src.messages([TOPIC_TF])):
            for tf in self._decode(raw, TOPIC_TF).transforms:
                if tf.child_frame_id == BASE_FRAME:
                    return tf.header.frame_id
            if k > 1000:
                break
        return None

    def _calib(self, info: Any, info_topic: str, camera_id: str, lidar_id: str, lidar_frame: str) -> DriveCalib:
        where = self._src.path
        d = np.asarray(info.d, np.float64)
        if d.size == 0:
            d = np.zeros(5)
        if d.size != 5 or info.distortion_model not in ("plumb_bob", ""):
            raise InputDataError(f"distortion model '{info.distortion_model}' with {d.size} coefficients; "
                                 "DriveCalib holds plumb_bob (5)", path=where, field=f"{info_topic}.d")
        static: dict[str, tuple[str, np.ndarray]] = {}
        if TOPIC_TF_STATIC in self._src.topics:
            for _, _, raw in self._src.messages([TOPIC_TF_STATIC]):
                for tf in self._decode(raw, TOPIC_TF_STATIC).transforms:
                    static[tf.child_frame_id] = (tf.header.frame_id, _transform_matrix(tf.transform))
        cam_frame = info.header.frame_id or f"{camera_id}_optical"

        def base_from(frame: str) -> np.ndarray:
            T = np.eye(4)
            seen = set()
            while frame != BASE_FRAME:
                if frame not in static or frame in seen:
                    raise InputDataError(f"no static transform chain from {BASE_FRAME} to '{frame}'", path=where,
                                         field=TOPIC_TF_STATIC)
                seen.add(frame)
                parent, T_parent_from_frame = static[frame]
                T = T_parent_from_frame @ T
                frame = parent
            return T

        return DriveCalib(camera_id=camera_id, width=int(info.width), height=int(info.height),
                          K=np.asarray(info.k, np.float64).reshape(3, 3).copy(), dist=d.copy(),
                          T_base_from_cam=base_from(cam_frame), lidar_id=lidar_id,
                          T_base_from_lidar=base_from(lidar_frame))

    # -- frames --
    def _read_frame(self, index: int) -> DriveFrame:
        plan = self._plans[index]
        where = self._src.path
        wanted = {(self._image_topic, plan.cam_log): "image", (self._points_topic, plan.lidar_log): "points"}
        for topic, t in plan.gt.items():
            wanted[(topic, t)] = topic
        window = pose_window_ns(plan.cam_stamp, plan.lidar_stamp)
        lo = min(t for _, t in wanted)
        hi = max(t for _, t in wanted)
        sensor_topics = sorted({topic for topic, _ in wanted})
        has_tf = TOPIC_TF in self._src.topics and self._world_frame is not None
        if self._log_is_stamp:
            queries = [(sensor_topics + ([TOPIC_TF] if has_tf else []), min(lo, window[0]), max(hi, window[1]) + 1)]
        else:
            queries = [(sensor_topics, lo, hi + 1)]
            if has_tf:
                m = self.FOREIGN_TF_MARGIN_NS
                queries.append(([TOPIC_TF], window[0] - m, window[1] + m + 1))
        found: dict[str, bytes] = {}
        tf_raw: list[bytes] = []
        for topics, start, stop in queries:
            for topic, t, raw in self._src.messages(topics, start, stop):
                if topic == TOPIC_TF:
                    tf_raw.append(raw)
                else:
                    key = wanted.get((topic, t))
                    if key is not None and key not in found:
                        found[key] = raw
        for (topic, t), key in wanted.items():
            if key not in found:
                raise InputDataError(f"frame {index}: message at {t} ns not found", path=where, field=topic)

        img_msg = self._decode(found["image"], self._image_topic)
        image = to_bgr(image_array(img_msg, where, self._image_topic), img_msg.encoding)
        if image.shape[:2] != (self.calib.height, self.calib.width):
            raise InputDataError(f"frame {index}: image {image.shape[1]}x{image.shape[0]}, camera_info says "
                                 f"{self.calib.width}x{self.calib.height}", path=where, field=self._image_topic)
        cloud = self._decode(found["points"], self._points_topic)
        points, t_off = points_from_cloud(cloud, where, self._points_topic)
        n = points.shape[0]
        camera = CameraFrame(self.calib.camera_id, _stamp_ns(img_msg.header.stamp), image)
        lidar = LidarSweep(self.calib.lidar_id, _stamp_ns(cloud.header.stamp), points, t_off)

        g = self._gt_topics
        semantic = instance = point_class = point_instance = None
        boxes: list[Box3D] = []
        lanes: list[LaneBoundaryGT] = []
        if g["semantic"] in found:
            semantic = self._gt_image(found[g["semantic"]], g["semantic"], np.uint8, index)
        if g["instance"] in found:
            instance = self._gt_image(found[g["instance"]], g["instance"], np.uint16, index)
        if g["labels"] in found:
            rec = cloud_fields(self._decode(found[g["labels"]], g["labels"]), where, g["labels"])
            if rec.shape[0] != n or not {"class_id", "instance_id"} <= set(rec.dtype.names or ()):
                raise InputDataError(f"frame {index}: labels for {rec.shape[0]} points with fields "
                                     f"{rec.dtype.names}, the cloud has {n}", path=where, field=g["labels"])
            point_class = rec["class_id"].astype(np.uint8)
            point_instance = rec["instance_id"].astype(np.uint16)
        if g["objects"] in found:
            boxes = self._boxes(self._decode(found[g["objects"]], g["objects"]), g["objects"])
        if g["lanes"] in found:
            msg = self._decode(found[g["lanes"]], g["lanes"])
            lanes = [LaneBoundaryGT(lane_id=int(b.lane_id), type=str(b.type),
                                    points_base=np.array([[p.x, p.y, p.z] for p in b.points],
                                                         np.float64).reshape(-1, 3))
                     for b in msg.boundaries]

        stamps, Ts = self._poses(tf_raw, window)
        return DriveFrame(index=index, camera=camera, lidar=lidar, semantic=semantic, instance=instance,
                          point_class=point_class, point_instance=point_instance, boxes=boxes, lanes=lanes,
                          pose_stamps_ns=stamps, T_world_from_base=Ts)

    def _gt_image(self, raw: bytes, topic: str, dtype: type, index: int) -> np.ndarray:
        arr = image_array(self._decode(raw, topic), self._src.path, topic)
        if arr.shape != (self.calib.height, self.calib.width) or arr.dtype != dtype:
            raise InputDataError(f"frame {index}: {arr.shape} {arr.dtype}, expected "
                                 f"({self.calib.height}, {self.calib.width}) {np.dtype(dtype).name}",
                                 path=self._src.path, field=topic)
        return arr

    def _boxes(self, msg: Any, topic: str) -> list[Box3D]:
        boxes = []
        for det in msg.detections:
            if not det.results:
                raise InputDataError(f"detection '{det.id}' has no hypothesis", path=self._src.path, field=topic)
            c, s = det.bbox.center, det.bbox.size
            boxes.append(Box3D(
                instance_id=int(det.id) if det.id.lstrip("-").isdigit() else 0,
                class_id=class_id_from_name(self._class_names, det.results[0].hypothesis.class_id,
                                            self._src.path, topic),
                center=np.array([c.position.x, c.position.y, c.position.z], np.float64),
                size=np.array([s.x, s.y, s.z], np.float64), yaw=_yaw_from_quat(c.orientation)))
        return boxes

    def _poses(self, tf_raw: list[bytes], window: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        stamps, quats, trans = [], [], []
        for raw in tf_raw:
            for tf in self._decode(raw, TOPIC_TF).transforms:
                if tf.child_frame_id != BASE_FRAME or tf.header.frame_id != self._world_frame:
                    continue
                stamp = _stamp_ns(tf.header.stamp)
                if window[0] <= stamp <= window[1]:
                    r, t = tf.transform.rotation, tf.transform.translation
                    stamps.append(stamp)
                    quats.append((r.x, r.y, r.z, r.w))
                    trans.append((t.x, t.y, t.z))
        if not stamps:
            return empty_poses()
        stamps_a = np.array(stamps, np.int64)
        order = np.argsort(stamps_a, kind="stable")
        keep = order[np.concatenate([[True], np.diff(stamps_a[order]) > 0])]
        T = np.tile(np.eye(4), (keep.size, 1, 1))
        T[:, :3, :3] = matrix_from_quat(np.array(quats)[keep])
        T[:, :3, 3] = np.array(trans)[keep]
        return select_poses(stamps_a[keep], T, window)

    def close(self) -> None:
        self._src.close()
