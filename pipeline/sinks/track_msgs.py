"""Tracks as vision_msgs/Detection3DArray (``/segfuse/tracks``), and back.

One Detection3D per confirmed track (pipeline.tracking), header frame ``world`` (``base_link``
when the input has no ego poses):

- ``id``: the track id (stable over the track's life);
- ``bbox``: the smoothed box (centre, yaw, length/width/height) in that frame;
- ``results[0]``: class name and score; its pose is the centre with the position covariance
  (x, y block of the 6x6 row-major matrix, m^2);
- ``results[1]``: class_id ``"velocity"``, score = the track's age (s); pose.position = (vx, vy, 0)
  in m/s, covariance x, y block = the velocity covariance, (m/s)^2;
- ``results[2]``: class_id ``"last_seen"``, score = consecutive frames without a detection
  (0: detected this frame, > 0: coasting); pose.position.x = the last detection's stamp (s),
  pose.position.y = the hits (frames with a detection), pose.position.z = the fused object's
  instance id of this frame's detection (-1: coasting).

The objects' box of visible points goes as ``/segfuse/objects_visible`` (same layout as
``/segfuse/objects``), the baseline ``segfuse eval`` prints beside the amodal boxes.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

TOPIC_TRACKS = "/segfuse/tracks"
TOPIC_OBJECTS_VISIBLE = "/segfuse/objects_visible"


def visible_objects(objects: list) -> list:
    """The objects with their box of visible points in place of the amodal box."""
    return [replace(o, box_center=o.visible_center, box_size=o.visible_size) for o in objects
            if o.visible_center is not None]


def tracks_message(ts: Any, header: Any, tracks: list, class_names: tuple[str, ...]) -> Any:
    T = ts.types

    def pose(x: float, y: float, z: float, yaw: float = 0.0) -> Any:
        return T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](x=float(x), y=float(y), z=float(z)),
            orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=math.sin(0.5 * yaw), w=math.cos(0.5 * yaw)))

    def result(cls: str, score: float, p: Any, cov2: np.ndarray | None = None) -> Any:
        cov = np.zeros((6, 6))
        if cov2 is not None:
            cov[:2, :2] = cov2
        return T["vision_msgs/msg/ObjectHypothesisWithPose"](
            hypothesis=T["vision_msgs/msg/ObjectHypothesis"](class_id=cls, score=float(score)),
            pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=p, covariance=cov.reshape(36)))

    dets = []
    for t in tracks:
        c, s = np.asarray(t.center, np.float64), np.asarray(t.size, np.float64)
        name = class_names[t.class_id] if t.class_id < len(class_names) else str(t.class_id)
        results = [result(name, t.score, pose(c[0], c[1], c[2], t.yaw), t.position_cov),
                   result("velocity", t.age_s, pose(t.velocity[0], t.velocity[1], 0.0), t.velocity_cov),
                   result("last_seen", float(t.misses), pose(t.last_seen_ns / 1e9, float(t.hits), float(t.instance_id)))]
        dets.append(T["vision_msgs/msg/Detection3D"](
            header=header, results=results,
            bbox=T["vision_msgs/msg/BoundingBox3D"](center=pose(c[0], c[1], c[2], t.yaw), size=T["geometry_msgs/msg/Vector3"](
                x=float(s[0]), y=float(s[1]), z=float(s[2]))),
            id=str(int(t.track_id))))
    return T["vision_msgs/msg/Detection3DArray"](header=header, detections=dets)


def read_tracks_message(msg: Any) -> list[dict[str, Any]]:
    """The tracks of a ``/segfuse/tracks`` message as dicts (the evaluation's reader)."""
    out = []
    for d in msg.detections:
        r = d.results
        c, s, q = d.bbox.center.position, d.bbox.size, d.bbox.center.orientation
        v = r[1].pose.pose.position
        ls = r[2].pose.pose.position
        out.append({"track_id": int(d.id), "class": r[0].hypothesis.class_id, "score": float(r[0].hypothesis.score),
                    "frame_id": d.header.frame_id, "center": np.array([c.x, c.y, c.z]),
                    "size": np.array([s.x, s.y, s.z]), "yaw": 2.0 * math.atan2(q.z, q.w),
                    "velocity": np.array([v.x, v.y]), "age_s": float(r[1].hypothesis.score),
                    "velocity_cov": np.asarray(r[1].pose.covariance, np.float64).reshape(6, 6)[:2, :2],
                    "misses": int(round(r[2].hypothesis.score)), "last_seen_s": float(ls.x), "hits": int(round(ls.y)),
                    "instance_id": int(round(ls.z))})
    return out
