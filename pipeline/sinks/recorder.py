"""Recorder: the run's results as a rosbag2 folder with MCAP storage that Foxglove opens.

Topics (log time = header stamp = the input's stamp; no wall-clock value anywhere, so a
replay of the same drive records the same bytes):

| topic | type | frame_id | stamp |
|---|---|---|---|
| ``/tf_static`` | tf2_msgs/TFMessage (latched) | base_link | first frame: base_link -> camera optical, LiDAR |
| ``/tf`` | tf2_msgs/TFMessage | world | camera: world -> base_link, when the drive has poses |
| ``/segfuse/points`` | sensor_msgs/PointCloud2 | LiDAR | sweep start: x, y, z, intensity (f32), class_id (u8), flags (u8), instance_id (i32, -1 none), score (f32) |
| ``/segfuse/{cam}/semantic`` | sensor_msgs/Image mono8 | camera optical | camera: class ids |
| ``/segfuse/{cam}/instance`` | sensor_msgs/Image mono16 | camera optical | camera: instance ids, 0 none |
| ``/segfuse/{cam}/camera_info`` | sensor_msgs/CameraInfo | camera optical | camera |
| ``/segfuse/{cam}/image_raw`` | sensor_msgs/Image bgr8 | camera optical | camera (``camera_image: true`` only) |
| ``/segfuse/objects`` | vision_msgs/Detection3DArray | base_link | camera: id = instance, class name + score, hypothesis pose = centroid of the points, bbox = BEV box |
| ``/segfuse/lanes`` | segfuse_msgs/LaneBoundaryArray | base_link | camera: each cubic sampled every metre |
| ``/segfuse/markers`` | visualization_msgs/MarkerArray | base_link | camera: boxes, labels, lane strips (for Foxglove's 3D panel) |
| ``/segfuse/frame_status`` | std_msgs/String (JSON) | - | camera: frame, stamps, ``lidar_missing`` |
| ``/segfuse/run_info`` | std_msgs/String (JSON, latched) | - | first frame: mask provider, taxonomy, format |

The folder is built as ``OUT/.NAME.partial-<pid>/NAME`` and moved to ``OUT/NAME`` by ``close()``,
so a recording that exists is complete; ``close()`` after SIGINT/SIGTERM finishes it too.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import setting
from pipeline.errors import ConfigError
from pipeline.msgs import header, transform_stamped
from pipeline.types import FrameResult

log = logging.getLogger(__name__)

RECORDING_FORMAT = 1
TOPIC_POINTS = "/segfuse/points"
TOPIC_OBJECTS = "/segfuse/objects"
TOPIC_LANES = "/segfuse/lanes"
TOPIC_MARKERS = "/segfuse/markers"
TOPIC_STATUS = "/segfuse/frame_status"
TOPIC_RUN_INFO = "/segfuse/run_info"
BASE_FRAME = "base_link"
WORLD_FRAME = "world"

# PointCloud2 layout of /segfuse/points
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
CLOUD_DTYPE = np.dtype({"names": ["x", "y", "z", "intensity", "class_id", "flags", "instance_id", "score"],
                        "formats": ["<f4", "<f4", "<f4", "<f4", "u1", "u1", "<i4", "<f4"],
                        "offsets": [0, 4, 8, 12, 16, 17, 20, 24], "itemsize": 28})
CLOUD_FIELDS = [("x", 0, FLOAT32), ("y", 4, FLOAT32), ("z", 8, FLOAT32), ("intensity", 12, FLOAT32),
                ("class_id", 16, UINT8), ("flags", 17, UINT8), ("instance_id", 20, INT32), ("score", 24, FLOAT32)]
LANE_STEP_M = 1.0
COMPRESSIONS = ("lz4", "zstd", "none")


@dataclass
class RecorderConfig:
    """``sinks.recorder`` of a run config."""

    enabled: bool = setting(True, doc="record the run's results (OUT/recording, rosbag2 + MCAP)")
    compression: str = setting("lz4", choices=COMPRESSIONS, doc="MCAP chunk compression")
    camera_image: bool = setting(False, doc="also record the input camera image (a bigger file)")


def semantic_topic(camera_id: str) -> str:
    return f"/segfuse/{camera_id}/semantic"


def instance_topic(camera_id: str) -> str:
    return f"/segfuse/{camera_id}/instance"


def sample_lane(coeffs: np.ndarray, x_min: float, x_max: float, step: float = LANE_STEP_M) -> np.ndarray:
    """(M, 3) points of y(x) = c0 + c1 x + c2 x^2 + c3 x^3 from x_min to x_max, z = 0 (base frame)."""
    n = max(2, int(math.ceil((x_max - x_min) / step)) + 1)
    x = np.linspace(x_min, x_max, n)
    y = np.polyval(np.asarray(coeffs, np.float64)[::-1], x)
    return np.stack([x, y, np.zeros_like(x)], axis=1)


class RosMessages:
    """The ROS 2 messages of a frame's results, shared by the recorder and the publisher
    (pipeline.sinks.publisher). Needs ``_ts`` (a make_typestore()), ``taxonomy``, ``_cam_frame``
    and ``_lidar_frame`` on the instance."""

    def _header(self, stamp_ns: int, frame_id: str) -> Any:
        return header(self._ts, stamp_ns, frame_id)

    def _transform(self, stamp_ns: int, parent: str, child: str, M: np.ndarray) -> Any:
        return transform_stamped(self._ts, stamp_ns, parent, child, M)

    def _image(self, stamp_ns: int, array: np.ndarray, encoding: str) -> Any:
        h = array.shape[0]
        data = array.reshape(-1) if array.dtype == np.uint8 else array.astype("<u2").view(np.uint8).reshape(-1)
        return self._ts.types["sensor_msgs/msg/Image"](
            header=self._header(stamp_ns, self._cam_frame), height=h, width=array.shape[1], encoding=encoding,
            is_bigendian=0, step=int(data.size // h), data=np.ascontiguousarray(data))

    def _string(self, text: str) -> Any:
        return self._ts.types["std_msgs/msg/String"](data=text)

    def _pose(self, x: float, y: float, z: float, yaw: float) -> Any:
        T = self._ts.types
        return T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](x=float(x), y=float(y), z=float(z)),
            orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=math.sin(0.5 * yaw), w=math.cos(0.5 * yaw)))

    def _cloud(self, stamp_ns: int, cloud: Any) -> Any:
        T = self._ts.types
        n = int(cloud.points.shape[0])
        rec = np.zeros(n, CLOUD_DTYPE)
        for k, name in enumerate(("x", "y", "z", "intensity")):
            rec[name] = cloud.points[:, k]
        rec["class_id"] = cloud.class_id
        rec["flags"] = cloud.flags
        rec["instance_id"] = cloud.instance_id
        rec["score"] = cloud.score
        fields = [T["sensor_msgs/msg/PointField"](name=nm, offset=off, datatype=dt, count=1) for nm, off, dt in CLOUD_FIELDS]
        return T["sensor_msgs/msg/PointCloud2"](
            header=self._header(stamp_ns, self._lidar_frame), height=1, width=n, fields=fields, is_bigendian=False,
            point_step=CLOUD_DTYPE.itemsize, row_step=CLOUD_DTYPE.itemsize * n, data=rec.view(np.uint8).reshape(-1),
            is_dense=bool(np.isfinite(cloud.points[:, :3]).all()))

    def _objects(self, stamp_ns: int, objects: list) -> Any:
        T = self._ts.types
        header = self._header(stamp_ns, BASE_FRAME)
        dets = []
        for o in objects:
            c, s = np.asarray(o.box_center, np.float64), np.asarray(o.box_size, np.float64)
            pose = self._pose(c[0], c[1], c[2], float(o.yaw))
            m = np.asarray(o.centroid, np.float64)
            hyp = T["vision_msgs/msg/ObjectHypothesisWithPose"](
                hypothesis=T["vision_msgs/msg/ObjectHypothesis"](class_id=self.taxonomy.names[int(o.class_id)],
                                                                 score=float(o.score)),
                pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=self._pose(m[0], m[1], m[2], float(o.yaw)),
                                                               covariance=np.zeros(36)))
            dets.append(T["vision_msgs/msg/Detection3D"](
                header=header, results=[hyp],
                bbox=T["vision_msgs/msg/BoundingBox3D"](center=pose, size=T["geometry_msgs/msg/Vector3"](
                    x=float(s[0]), y=float(s[1]), z=float(s[2]))),
                id=str(int(o.instance_id))))
        return T["vision_msgs/msg/Detection3DArray"](header=header, detections=dets)

    def _lanes(self, stamp_ns: int, lanes: list) -> Any:
        T = self._ts.types
        out = []
        for i, lane in enumerate(lanes):
            pts = sample_lane(lane.coeffs, lane.x_min_m, lane.x_max_m)
            out.append(T["segfuse_msgs/msg/LaneBoundary"](
                lane_id=i, type=str(lane.type),
                points=[T["geometry_msgs/msg/Point"](x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in pts]))
        return T["segfuse_msgs/msg/LaneBoundaryArray"](header=self._header(stamp_ns, BASE_FRAME), boundaries=out)


class Recorder(RosMessages):
    """``write(result)`` per frame (in order, from one thread), ``close()`` once; ``abort()`` drops it."""

    def __init__(self, out_dir: str | Path, rig: Any, taxonomy: Any, *, camera_id: str, lidar_id: str | None,
                 run_info: dict[str, Any], compression: str = "lz4", camera_image: bool = False,
                 name: str = "recording") -> None:
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

        from pipeline.drive.rosbag import use_lz4_chunks
        from pipeline.msgs import make_typestore

        self.final = Path(out_dir) / name
        self.staging = Path(out_dir) / f".{name}.partial-{os.getpid()}"
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
        self.path = self.staging / name
        self.rig, self.taxonomy = rig, taxonomy
        self.camera_id, self.lidar_id = camera_id, lidar_id
        self.camera_image = camera_image
        self._run_info = json.dumps({"segfuse_recording_format": RECORDING_FORMAT, **run_info}, sort_keys=True)
        self._ts = make_typestore()
        self._writer = Writer(self.path, version=8, storage_plugin=StoragePlugin.MCAP)
        if compression == "zstd":
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        elif compression not in ("lz4", "none"):
            raise ConfigError(f"unknown compression {compression!r}", field="sinks.recorder.compression")
        self._writer.open()
        if compression == "lz4":
            use_lz4_chunks(self._writer)
        self._conns: dict[str, Any] = {}
        self._started = False
        self._state = "open"
        self.frames = 0
        self.clouds = 0
        cam = rig.camera(camera_id) if rig is not None and camera_id in rig.camera_names else None
        self._cam = cam
        self._cam_frame = cam.frame_id if cam is not None else f"{camera_id}_optical"
        lid = None
        if rig is not None and lidar_id is not None:
            lid = rig.lidar(lidar_id if lidar_id in rig.lidar_names else None)
        self._lidar = lid
        self._lidar_frame = lid.frame_id if lid is not None else (lidar_id or "lidar")

    # -- message helpers -------------------------------------------------------------------
    def _put(self, topic: str, msgtype: str, stamp_ns: int, msg: Any, latched: bool = False) -> None:
        conn = self._conns.get(topic)
        if conn is None:
            qos = ()
            if latched:
                from pipeline.drive.rosbag import latched_qos

                qos = latched_qos()
            conn = self._writer.add_connection(topic, msgtype, typestore=self._ts, offered_qos_profiles=qos)
            self._conns[topic] = conn
        self._writer.write(conn, int(stamp_ns), self._ts.serialize_cdr(msg, msgtype))

    # -- frames ----------------------------------------------------------------------------
    def _start(self, stamp_ns: int) -> None:
        tfs = []
        if self._cam is not None:
            tfs.append(self._transform(stamp_ns, BASE_FRAME, self._cam_frame, self._cam.T_base_from_cam))
        if self._lidar is not None:
            tfs.append(self._transform(stamp_ns, BASE_FRAME, self._lidar_frame, self._lidar.T_base_from_lidar))
        if tfs:
            self._put("/tf_static", "tf2_msgs/msg/TFMessage", stamp_ns,
                      self._ts.types["tf2_msgs/msg/TFMessage"](transforms=tfs), latched=True)
        self._put(TOPIC_RUN_INFO, "std_msgs/msg/String", stamp_ns, self._string(self._run_info), latched=True)
        self._started = True

    def write(self, result: FrameResult) -> None:
        """Record one frame's results."""
        if self._state != "open":
            return
        cam = result.camera
        cam_ns = int(cam.stamp_ns)
        sweep = result.frame.lidar
        if not self._started:
            self._start(min(cam_ns, int(sweep.stamp_ns)) if sweep is not None else cam_ns)
        T = self._ts.types
        if result.frame.T_world_from_base is not None:
            tf = self._transform(cam_ns, WORLD_FRAME, BASE_FRAME, result.frame.T_world_from_base)
            self._put("/tf", "tf2_msgs/msg/TFMessage", cam_ns, T["tf2_msgs/msg/TFMessage"](transforms=[tf]))
        cid = cam.camera_id
        if self._cam is not None:
            self._put(f"/segfuse/{cid}/camera_info", "sensor_msgs/msg/CameraInfo", cam_ns, self._camera_info(cam_ns))
        if self.camera_image:
            self._put(f"/segfuse/{cid}/image_raw", "sensor_msgs/msg/Image", cam_ns, self._image(cam_ns, cam.image, "bgr8"))
        sem = result.masks.semantic.get(cid)
        if sem is not None:
            self._put(semantic_topic(cid), "sensor_msgs/msg/Image", cam_ns, self._image(cam_ns, sem.class_ids, "mono8"))
        imap = result.masks.instance_maps.get(cid)
        if imap is not None:
            self._put(instance_topic(cid), "sensor_msgs/msg/Image", cam_ns, self._image(cam_ns, imap.ids, "mono16"))
        res = result.fusion
        if res is not None and sweep is not None:
            self._put(TOPIC_POINTS, "sensor_msgs/msg/PointCloud2", int(sweep.stamp_ns), self._cloud(sweep.stamp_ns, res.cloud))
            self._put(TOPIC_OBJECTS, "vision_msgs/msg/Detection3DArray", cam_ns, self._objects(cam_ns, res.objects))
            self._put(TOPIC_LANES, "segfuse_msgs/msg/LaneBoundaryArray", cam_ns, self._lanes(cam_ns, res.lanes))
            self._put(TOPIC_MARKERS, "visualization_msgs/msg/MarkerArray", cam_ns, self._markers(cam_ns, res))
            self.clouds += 1
        status = {"frame": int(result.index), "camera_seq": int(result.frame.camera_seq), "camera_stamp_ns": cam_ns,
                  "lidar_stamp_ns": None if sweep is None else int(sweep.stamp_ns),
                  "lidar_missing": bool(sweep is None), "fused": bool(res is not None),
                  "ego_motion": bool(res is not None and res.ego_motion_applied)}
        self._put(TOPIC_STATUS, "std_msgs/msg/String", cam_ns, self._string(json.dumps(status, sort_keys=True)))
        self.frames += 1

    def _camera_info(self, stamp_ns: int) -> Any:
        T = self._ts.types
        m = self._cam.model
        K = np.asarray(m.K, np.float64)
        dist = np.asarray(getattr(m, "dist", getattr(m, "D", np.zeros(5))), np.float64).reshape(-1)
        model = {"fisheye": "equidistant"}.get(m.kind, str(getattr(m, "distortion_model", "plumb_bob")))
        P = np.asarray(m.P, np.float64).reshape(3, 4) if hasattr(m, "P") else np.hstack([K, np.zeros((3, 1))])
        roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return T["sensor_msgs/msg/CameraInfo"](
            header=self._header(stamp_ns, self._cam_frame), height=int(m.height), width=int(m.width),
            distortion_model=model, d=dist.copy(), k=K.reshape(9).copy(),
            r=np.eye(3).reshape(9), p=P.reshape(12), binning_x=0, binning_y=0, roi=roi)

    def _markers(self, stamp_ns: int, res: Any) -> Any:
        T = self._ts.types
        header = self._header(stamp_ns, BASE_FRAME)
        colors = self.taxonomy.colors_bgr

        def rgba(cid: int, a: float = 0.5) -> Any:
            b, g, r = (int(v) for v in colors[cid]) if cid < len(colors) else (255, 255, 255)
            return T["std_msgs/msg/ColorRGBA"](r=r / 255.0, g=g / 255.0, b=b / 255.0, a=a)

        def marker(ns: str, mid: int, mtype: int, pose: Any, scale: tuple, color: Any, *, points: list | None = None,
                   text: str = "") -> Any:
            return T["visualization_msgs/msg/Marker"](
                header=header, ns=ns, id=mid, type=mtype, action=0, pose=pose,
                scale=T["geometry_msgs/msg/Vector3"](x=float(scale[0]), y=float(scale[1]), z=float(scale[2])),
                color=color, lifetime=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=200_000_000),
                frame_locked=False, points=points or [], colors=[], texture_resource="",
                texture=T["sensor_msgs/msg/CompressedImage"](header=header, format="", data=np.zeros(0, np.uint8)),
                uv_coordinates=[], text=text, mesh_resource="",
                mesh_file=T["visualization_msgs/msg/MeshFile"](filename="", data=np.zeros(0, np.uint8)),
                mesh_use_embedded_materials=False)

        markers = [marker("", 0, 0, self._pose(0, 0, 0, 0), (0, 0, 0), rgba(0, 0.0))]
        markers[0].action = 3                                          # DELETEALL, then this frame's markers
        for k, o in enumerate(res.objects):
            c, s = np.asarray(o.box_center, np.float64), np.asarray(o.box_size, np.float64)
            markers.append(marker("objects", k, 1, self._pose(c[0], c[1], c[2], float(o.yaw)), tuple(s),
                                  rgba(int(o.class_id))))
            markers.append(marker("labels", k, 9, self._pose(c[0], c[1], c[2] + 0.5 * s[2] + 0.6, 0.0), (0, 0, 0.8),
                                  rgba(int(o.class_id), 1.0),
                                  text=f"{self.taxonomy.names[int(o.class_id)]} {o.range_m:.0f} m"))
        for k, lane in enumerate(res.lanes):
            pts = [T["geometry_msgs/msg/Point"](x=float(p[0]), y=float(p[1]), z=float(p[2]))
                   for p in sample_lane(lane.coeffs, lane.x_min_m, lane.x_max_m)]
            markers.append(marker("lanes", k, 4, self._pose(0, 0, 0, 0), (0.15, 0, 0),
                                  T["std_msgs/msg/ColorRGBA"](r=1.0, g=1.0, b=1.0, a=1.0), points=pts))
        return T["visualization_msgs/msg/MarkerArray"](markers=markers)

    # -- closing ---------------------------------------------------------------------------
    def close(self) -> Path:
        """Finish the MCAP and move the recording into place (replacing an older one)."""
        if self._state != "open":
            return self.final
        self._state = "closing"
        try:
            if not self._started:
                self._start(0)
            self._writer.close()
            if self.final.exists():
                shutil.rmtree(self.final)
            os.rename(self.path, self.final)
        except BaseException:
            self._state = "aborted"
            shutil.rmtree(self.staging, ignore_errors=True)
            raise
        shutil.rmtree(self.staging, ignore_errors=True)
        self._state = "closed"
        log.info("recorded %d frames (%d fused clouds) to %s", self.frames, self.clouds, self.final)
        return self.final

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._writer.close()
        except Exception as exc:       # the folder is removed next anyway
            log.debug("recorder abort: %s", exc)
        shutil.rmtree(self.staging, ignore_errors=True)
