"""The ROS 2 messages of a run's results: one builder for every sink (recorder, Zenoh publisher,
Foxglove live view), driven by the output schema (pipeline.sinks.schema).

:meth:`RosMessages.frame_messages` turns one frame's results into ``(topic, msgtype, stamp_ns,
message)`` tuples in the schema's order; :meth:`RosMessages.start_messages` gives the latched
ones (``/tf_static``, ``/segfuse/run_info``). :func:`frame_view` reads what the builders need
from the frozen ``FrameResult`` every sink gets.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.msgs import header, transform_stamped
from pipeline.types import FrameResult
from pipeline.sinks.schema import BASE_FRAME, TOPICS, WORLD_FRAME, TopicSpec, topics_for

TOPIC_TF_STATIC = "/tf_static"
TOPIC_TF = "/tf"
TOPIC_CLOCK = "/clock"
TOPIC_POINTS = "/segfuse/points"
TOPIC_OBJECTS = "/segfuse/objects"
TOPIC_LANES = "/segfuse/lanes"
TOPIC_LANE_LINES = "/segfuse/lane_lines"
TOPIC_MARKERS = "/segfuse/markers"
TOPIC_STATUS = "/segfuse/status"
TOPIC_RUN_INFO = "/segfuse/run_info"

# PointCloud2 layout of /segfuse/points
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
CLOUD_DTYPE = np.dtype({"names": ["x", "y", "z", "intensity", "class_id", "flags", "instance_id", "score"],
                        "formats": ["<f4", "<f4", "<f4", "<f4", "u1", "u1", "<i4", "<f4"],
                        "offsets": [0, 4, 8, 12, 16, 17, 20, 24], "itemsize": 28})
CLOUD_FIELDS = [("x", 0, FLOAT32), ("y", 4, FLOAT32), ("z", 8, FLOAT32), ("intensity", 12, FLOAT32),
                ("class_id", 16, UINT8), ("flags", 17, UINT8), ("instance_id", 20, INT32), ("score", 24, FLOAT32)]
LANE_STEP_M = 1.0


def semantic_topic(camera_id: str) -> str:
    return f"/segfuse/{camera_id}/semantic"


def instance_topic(camera_id: str) -> str:
    return f"/segfuse/{camera_id}/instance"


def camera_info_topic(camera_id: str) -> str:
    return f"/segfuse/{camera_id}/camera_info"


def image_topic(camera_id: str) -> str:
    return f"/segfuse/{camera_id}/image_raw"


def sample_lane(coeffs: np.ndarray, x_min: float, x_max: float, step: float = LANE_STEP_M) -> np.ndarray:
    """(M, 3) points of y(x) = c0 + c1 x + c2 x^2 + c3 x^3 from x_min to x_max, z = 0 (base frame)."""
    n = max(2, int(math.ceil((x_max - x_min) / step)) + 1)
    x = np.linspace(x_min, x_max, n)
    y = np.polyval(np.asarray(coeffs, np.float64)[::-1], x)
    return np.stack([x, y, np.zeros_like(x)], axis=1)


@dataclass
class FrameView:
    """What the builders read from a sink's input."""

    index: int
    camera_seq: int
    received_ns: int
    camera: Any                    # pipeline.types.CameraFrame
    sweep: Any                     # LidarSweep or None
    T_world_from_base: Any
    semantic: dict
    instance_maps: dict
    fusion: Any
    dropped: int = 0               # frames the run dropped so far (live policy)
    more: tuple = ()               # the other cameras of a camera set (CameraFrame), after ``camera``
    rig: Any = None                # the frame's own rig (KITTI object: per frame), else None


def frame_view(result: FrameResult) -> FrameView:
    """The FrameView of a sink's FrameResult."""
    f = result.frame
    return FrameView(int(result.index), int(f.camera_seq), int(result.received_ns), f.cameras[0], f.lidar,
                     f.T_world_from_base, result.masks.semantic, result.masks.instance_maps, result.fusion,
                     int(result.counters.dropped), tuple(f.cameras[1:]), f.rig)


class FrameCache:
    """One frame's serialized messages, shared by the sinks of a run: the first sink that needs a
    topic of a frame builds and serializes it, the others take the same bytes (the recorder, the
    publisher and the live view would otherwise each build every message). Keeps the last
    ``frames`` frames; a frame that has gone is simply built again. Thread-safe: the sinks run on
    threads of their own."""

    def __init__(self, frames: int = 8) -> None:
        import threading
        from collections import OrderedDict

        self.frames = frames
        self._lock = threading.Lock()
        self._entries: OrderedDict = OrderedDict()       # (frame index, camera stamp) -> {key: value}, + a lock

    def frame(self, index: int, stamp_ns: int) -> tuple[Any, dict]:
        import threading

        key = (int(index), int(stamp_ns))
        with self._lock:
            got = self._entries.get(key)
            if got is None:
                got = self._entries[key] = (threading.Lock(), {})
                while len(self._entries) > self.frames:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
            return got


class RosMessages:
    """The ROS 2 messages of a frame's results, shared by every sink. Call :meth:`_init_messages`
    first (it sets the type store, the taxonomy, the rig's camera and LiDAR and the run's topics)."""

    def _init_messages(self, rig: Any, taxonomy: Any, *, camera_id: str, lidar_id: str | None,
                       has_poses: bool = False, replay: bool = True, camera_image: bool = False,
                       run_info: str = "{}") -> None:
        from pipeline.msgs import make_typestore

        self._ts = make_typestore()
        self.taxonomy = taxonomy
        self.camera_id, self.lidar_id = camera_id, lidar_id
        cam = rig.camera(camera_id) if rig is not None and camera_id in rig.camera_names else None
        self._cam = cam
        self._cam_frame = cam.frame_id if cam is not None else f"{camera_id}_optical"
        lid = None
        if rig is not None and lidar_id is not None:
            lid = rig.lidar(lidar_id if lidar_id in rig.lidar_names else None)
        self._lidar = lid
        self._lidar_frame = lid.frame_id if lid is not None else (lidar_id or "lidar")
        self.camera_image = camera_image
        self._run_info = run_info
        self.schema: dict[str, TopicSpec] = topics_for(
            camera_id, has_camera=cam is not None, has_lidar=lidar_id is not None, has_poses=has_poses,
            replay=replay, camera_image=camera_image)
        self.topics: dict[str, str] = {name: spec.msgtype for name, spec in self.schema.items()}
        self.cache: FrameCache | None = None  # set by the runner: one for all the run's sinks

    def add_set_cameras(self, rig: Any, camera_ids: list[str]) -> None:
        """The other cameras of a camera set (nuScenes' six): their per-camera topics (camera_info,
        image_raw, semantic, instance) join this sink's schema, and each frame's messages carry
        them. For sinks that create topics as they write (the recorder)."""
        extra = [c for c in camera_ids if c != self.camera_id and rig is not None and c in rig.camera_names]
        self._set_cams = {c: rig.camera(c) for c in extra}
        per_cam = [t for t in TOPICS if "{cam}" in t.name and t.topic(self.camera_id) in self.schema]
        for c in extra:
            for t in per_cam:
                self.schema[t.topic(c)] = t
        self.topics = {name: spec.msgtype for name, spec in self.schema.items()}

    def frame_cdr(self, v: FrameView, *, live: bool = False, want: Any = None) -> list[tuple[str, str, int, bytes]]:
        """:meth:`frame_messages`, serialized (CDR bytes), through the run's FrameCache when there
        is one. FrameStatus is cached per ``live`` (the live sinks' copy has wall-clock fields)."""
        if self.cache is None:
            return [(t, mt, st, bytes(self._ts.serialize_cdr(m, mt)))
                    for t, mt, st, m in self.frame_messages(v, live=live, want=want)]
        lock, entry = self.cache.frame(v.index, int(v.camera.stamp_ns))
        key = {TOPIC_STATUS: (TOPIC_STATUS, live)}

        def need(topic: str) -> bool:
            return (want is None or want(topic)) and key.get(topic, topic) not in entry

        with lock:
            for t, mt, st, m in self.frame_messages(v, live=live, want=need):
                entry[key.get(t, t)] = (t, mt, st, bytes(self._ts.serialize_cdr(m, mt)))
            order = {t: i for i, t in enumerate(self.schema)}
            out = [val for k, val in entry.items() if (k[1] == live if isinstance(k, tuple) else True)
                   and (want is None or want(val[0])) and val[0] in self.schema]
        return sorted(out, key=lambda m: order[m[0]])

    # -- per run / per frame ---------------------------------------------------------------
    def start_messages(self, stamp_ns: int) -> list[tuple[str, str, int, Any]]:
        """The latched messages, stamped at the run's first sensor stamp."""
        out = []
        tfs = self.static_transforms(stamp_ns)
        if tfs:
            out.append((TOPIC_TF_STATIC, "tf2_msgs/msg/TFMessage", stamp_ns,
                        self._ts.types["tf2_msgs/msg/TFMessage"](transforms=tfs)))
        out.append((TOPIC_RUN_INFO, "std_msgs/msg/String", stamp_ns, self._string(self._run_info)))
        return [m for m in out if m[0] in self.schema]

    def static_transforms(self, stamp_ns: int) -> list[Any]:
        tfs = []
        if self._cam is not None:
            tfs.append(self._transform(stamp_ns, BASE_FRAME, self._cam_frame, self._cam.T_base_from_cam))
        for other in getattr(self, "_set_cams", {}).values():          # the rest of a camera set
            tfs.append(self._transform(stamp_ns, BASE_FRAME, other.frame_id, other.T_base_from_cam))
        if self._lidar is not None:
            tfs.append(self._transform(stamp_ns, BASE_FRAME, self._lidar_frame, self._lidar.T_base_from_lidar))
        return tfs

    def first_stamp(self, v: FrameView) -> int:
        cam_ns = int(v.camera.stamp_ns)
        return min(cam_ns, int(v.sweep.stamp_ns)) if v.sweep is not None else cam_ns

    def frame_messages(self, v: FrameView, *, live: bool = False, want: Any = None) -> list[tuple[str, str, int, Any]]:
        """One frame's messages in the schema's order. ``live``: FrameStatus gets the wall-clock
        fields (publish stamp, pipeline latency); the recorder leaves them 0 / -1. ``want(topic)``:
        build only the topics it says yes to (the live view: those somebody watches)."""
        T = self._ts.types
        cam = v.camera
        cam_ns = int(cam.stamp_ns)
        cid = cam.camera_id
        s = self.schema
        out: list[tuple[str, str, int, Any]] = []

        def put(topic: str, stamp: int, build: Any) -> None:
            if topic in s and (want is None or want(topic)):
                out.append((topic, s[topic].msgtype, int(stamp), build()))

        if v.T_world_from_base is not None:
            put(TOPIC_TF, cam_ns, lambda: T["tf2_msgs/msg/TFMessage"](
                transforms=[self._transform(cam_ns, WORLD_FRAME, BASE_FRAME, v.T_world_from_base)]))
        put(TOPIC_CLOCK, cam_ns, lambda: T["rosgraph_msgs/msg/Clock"](clock=self._header(cam_ns, "").stamp))
        if self._cam is not None:
            own = v.rig.camera(cid) if v.rig is not None and cid in v.rig.camera_names else None   # per-frame rig
            put(camera_info_topic(cid), cam_ns, lambda: self._camera_info(cam_ns, own))
        put(image_topic(cid), cam_ns, lambda: self._image(cam_ns, cam.image, "bgr8"))
        sem = v.semantic.get(cid)
        if sem is not None:
            put(semantic_topic(cid), cam_ns, lambda: self._image(cam_ns, sem.class_ids, "mono8"))
        imap = v.instance_maps.get(cid)
        if imap is not None:
            put(instance_topic(cid), cam_ns, lambda: self._image(cam_ns, imap.ids, "mono16"))
        res = v.fusion
        if res is not None and v.sweep is not None:
            put(TOPIC_POINTS, v.sweep.stamp_ns, lambda: self._cloud(v.sweep.stamp_ns, res.cloud))
            put(TOPIC_OBJECTS, cam_ns, lambda: self._objects(cam_ns, res.objects))
            self._put_tracks(put, cam_ns, res, v.T_world_from_base is not None)
            put(TOPIC_LANES, cam_ns, lambda: self._lanes(cam_ns, res.lanes))
            put(TOPIC_LANE_LINES, cam_ns, lambda: self._lane_lines(cam_ns, res.lanes))
            put(TOPIC_MARKERS, cam_ns, lambda: self._markers(cam_ns, res))
        set_cams = getattr(self, "_set_cams", {})
        for f in v.more:                                  # the rest of a camera set (add_set_cameras)
            sensor = (v.rig.camera(f.camera_id) if v.rig is not None and f.camera_id in v.rig.camera_names
                      else set_cams.get(f.camera_id))
            if sensor is None:
                continue
            f_ns, fid = int(f.stamp_ns), f.camera_id
            put(camera_info_topic(fid), f_ns, lambda f_ns=f_ns, sensor=sensor: self._camera_info(f_ns, sensor))
            put(image_topic(fid), f_ns, lambda f=f, f_ns=f_ns, sensor=sensor: self._image(f_ns, f.image, "bgr8",
                                                                                          sensor.frame_id))
            m = v.semantic.get(fid)
            if m is not None:
                put(semantic_topic(fid), f_ns, lambda m=m, f_ns=f_ns, sensor=sensor: self._image(
                    f_ns, m.class_ids, "mono8", sensor.frame_id))
            im = v.instance_maps.get(fid)
            if im is not None:
                put(instance_topic(fid), f_ns, lambda im=im, f_ns=f_ns, sensor=sensor: self._image(
                    f_ns, im.ids, "mono16", sensor.frame_id))
        put(TOPIC_STATUS, cam_ns, lambda: self._status(v, cam_ns, live=live))
        return out

    def _put_tracks(self, put: Any, cam_ns: int, res: Any, has_poses: bool) -> None:
        """The visible-points boxes and the tracks (pipeline.sinks.track_msgs)."""
        from pipeline.sinks.track_msgs import TOPIC_OBJECTS_VISIBLE, TOPIC_TRACKS, tracks_message, visible_objects

        put(TOPIC_OBJECTS_VISIBLE, cam_ns, lambda: self._objects(cam_ns, visible_objects(res.objects)))
        frame = WORLD_FRAME if has_poses else BASE_FRAME
        put(TOPIC_TRACKS, cam_ns, lambda: tracks_message(self._ts, self._header(cam_ns, frame), res.tracks,
                                                         tuple(self.taxonomy.names)))

    # -- builders ----------------------------------------------------------------------------
    def _header(self, stamp_ns: int, frame_id: str) -> Any:
        return header(self._ts, stamp_ns, frame_id)

    def _transform(self, stamp_ns: int, parent: str, child: str, M: np.ndarray) -> Any:
        return transform_stamped(self._ts, stamp_ns, parent, child, M)

    def _image(self, stamp_ns: int, array: np.ndarray, encoding: str, frame_id: str | None = None) -> Any:
        h = array.shape[0]
        data = array.reshape(-1) if array.dtype == np.uint8 else array.astype("<u2").view(np.uint8).reshape(-1)
        return self._ts.types["sensor_msgs/msg/Image"](
            header=self._header(stamp_ns, frame_id or self._cam_frame), height=h, width=array.shape[1],
            encoding=encoding,
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
        header_ = self._header(stamp_ns, BASE_FRAME)
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
                header=header_, results=[hyp],
                bbox=T["vision_msgs/msg/BoundingBox3D"](center=pose, size=T["geometry_msgs/msg/Vector3"](
                    x=float(s[0]), y=float(s[1]), z=float(s[2]))),
                id=str(int(o.instance_id))))
        return T["vision_msgs/msg/Detection3DArray"](header=header_, detections=dets)

    def _lanes(self, stamp_ns: int, lanes: list) -> Any:
        T = self._ts.types
        out = []
        for i, lane in enumerate(lanes):
            pts = sample_lane(lane.coeffs, lane.x_min_m, lane.x_max_m)
            out.append(T["segfuse_msgs/msg/LaneBoundary"](
                lane_id=i, type=str(lane.type),
                points=[T["geometry_msgs/msg/Point"](x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in pts]))
        return T["segfuse_msgs/msg/LaneBoundaryArray"](header=self._header(stamp_ns, BASE_FRAME), boundaries=out)

    def _lane_lines(self, stamp_ns: int, lanes: list) -> Any:
        T = self._ts.types
        lines = [T["segfuse_msgs/msg/LaneLine"](coefficients=np.asarray(lane.coeffs, np.float64).reshape(4).copy(),
                                                x_min_m=float(lane.x_min_m), x_max_m=float(lane.x_max_m),
                                                type=str(lane.type), confidence=float(lane.confidence))
                 for lane in lanes]
        return T["segfuse_msgs/msg/LaneLineArray"](header=self._header(stamp_ns, BASE_FRAME), lines=lines)

    def _status(self, v: FrameView, cam_ns: int, *, live: bool) -> Any:
        res = v.fusion
        dropped = v.dropped
        latency_ms, wall_ns = -1.0, 0
        if live:
            wall_ns = time.time_ns()
            latency_ms = (time.monotonic_ns() - v.received_ns) / 1e6 if v.received_ns else -1.0
        return self._ts.types["segfuse_msgs/msg/FrameStatus"](
            header=self._header(cam_ns, self._cam_frame), frame=int(v.index), camera_seq=int(v.camera_seq),
            camera_stamp_ns=cam_ns, lidar_stamp_ns=-1 if v.sweep is None else int(v.sweep.stamp_ns),
            publish_stamp_ns=int(wall_ns), pipeline_latency_ms=float(latency_ms), frames_dropped=int(dropped),
            lidar_missing=v.sweep is None, fused=res is not None,
            ego_motion=bool(res is not None and res.ego_motion_applied))

    def _camera_info(self, stamp_ns: int, sensor: Any = None) -> Any:
        T = self._ts.types
        sensor = sensor if sensor is not None else self._cam
        m = sensor.model
        K = np.asarray(m.K, np.float64)
        dist = np.asarray(getattr(m, "dist", getattr(m, "D", np.zeros(5))), np.float64).reshape(-1)
        model = {"fisheye": "equidistant"}.get(m.kind, str(getattr(m, "distortion_model", "plumb_bob")))
        P = np.asarray(m.P, np.float64).reshape(3, 4) if hasattr(m, "P") else np.hstack([K, np.zeros((3, 1))])
        roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return T["sensor_msgs/msg/CameraInfo"](
            header=self._header(stamp_ns, sensor.frame_id), height=int(m.height), width=int(m.width),
            distortion_model=model, d=dist.copy(), k=K.reshape(9).copy(),
            r=np.eye(3).reshape(9), p=P.reshape(12), binning_x=0, binning_y=0, roi=roi)

    def _markers(self, stamp_ns: int, res: Any) -> Any:
        T = self._ts.types
        header_ = self._header(stamp_ns, BASE_FRAME)
        colors = self.taxonomy.colors_bgr

        def rgba(cid: int, a: float = 0.5) -> Any:
            b, g, r = (int(v) for v in colors[cid]) if cid < len(colors) else (255, 255, 255)
            return T["std_msgs/msg/ColorRGBA"](r=r / 255.0, g=g / 255.0, b=b / 255.0, a=a)

        def marker(ns: str, mid: int, mtype: int, pose: Any, scale: tuple, color: Any, *, points: list | None = None,
                   text: str = "") -> Any:
            return T["visualization_msgs/msg/Marker"](
                header=header_, ns=ns, id=mid, type=mtype, action=0, pose=pose,
                scale=T["geometry_msgs/msg/Vector3"](x=float(scale[0]), y=float(scale[1]), z=float(scale[2])),
                color=color, lifetime=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=200_000_000),
                frame_locked=False, points=points or [], colors=[], texture_resource="",
                texture=T["sensor_msgs/msg/CompressedImage"](header=header_, format="", data=np.zeros(0, np.uint8)),
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
