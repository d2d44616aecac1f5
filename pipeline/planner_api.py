"""Subscribing to segfuse's results from Python: typed numpy arrays in a few lines.

    from pipeline.planner_api import FusedSubscriber

    with FusedSubscriber(listen=["tcp/127.0.0.1:7447"]) as sub:     # or connect=[...]
        cloud = sub.latest("points", timeout_s=1.0)                 # Decoded or None
        xyz = np.stack([cloud.data["x"], cloud.data["y"], cloud.data["z"]], 1)

Each topic keeps only its newest sample by default (``depth=1``: a planner never works on stale
data, and a slow planner never holds the publisher up); ``depth=N`` keeps a FIFO of N. A sample
that does not decode (wrong type, truncated CDR, bad attachment) is logged, counted in
``malformed`` and skipped. Heavy imports (zenoh, rosbags) happen in the constructor.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InputDataError

log = logging.getLogger(__name__)

# short name -> topic (camera topics take the camera id)
SHORT_TOPICS = {"points": "/segfuse/points", "objects": "/segfuse/objects", "lane_lines": "/segfuse/lane_lines",
                "lanes": "/segfuse/lanes", "markers": "/segfuse/markers", "status": "/segfuse/status",
                "run_info": "/segfuse/run_info", "tf": "/tf", "tf_static": "/tf_static", "clock": "/clock",
                "semantic": "/segfuse/{cam}/semantic", "instance": "/segfuse/{cam}/instance",
                "camera_info": "/segfuse/{cam}/camera_info"}


@dataclass
class Decoded:
    topic: str
    msgtype: str
    stamp_ns: int            # header stamp (sensor time)
    data: Any                # numpy array (cloud: structured; images: 2D), or dict of arrays / list of dicts
    msg: Any                 # the rosbags message object
    sequence_number: int
    source_timestamp_ns: int  # publisher's wall clock at put
    received_ns: int         # our wall clock at arrival
    size: int                # payload bytes


def _stamp(msg: Any) -> int:
    h = getattr(msg, "header", None)
    return 0 if h is None else int(h.stamp.sec) * 1_000_000_000 + int(h.stamp.nanosec)


def to_numpy(msgtype: str, msg: Any) -> Any:
    """The message's content as numpy: PointCloud2 -> structured array (its fields), Image ->
    (H, W) uint8/uint16, Detection3DArray -> list of dicts, LaneLineArray -> dict of arrays,
    FrameStatus -> dict."""
    if msgtype == "sensor_msgs/msg/PointCloud2":
        sizes = {1: "i1", 2: "u1", 3: "<i2", 4: "<u2", 5: "<i4", 6: "<u4", 7: "<f4", 8: "<f8"}
        dt = np.dtype({"names": [f.name for f in msg.fields], "formats": [sizes[f.datatype] for f in msg.fields],
                       "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
        return np.frombuffer(np.asarray(msg.data, np.uint8).tobytes(), dt, count=msg.width * msg.height)
    if msgtype == "sensor_msgs/msg/Image":
        kind = {"mono8": np.uint8, "mono16": np.dtype("<u2")}.get(msg.encoding)
        if kind is None:
            raise InputDataError(f"unsupported image encoding {msg.encoding!r}", field="encoding")
        return np.frombuffer(np.asarray(msg.data, np.uint8).tobytes(), kind).reshape(msg.height, msg.width)
    if msgtype == "vision_msgs/msg/Detection3DArray":
        out = []
        for d in msg.detections:
            c, s = d.bbox.center.position, d.bbox.size
            q = d.bbox.center.orientation
            hyp = d.results[0].hypothesis if d.results else None
            out.append({"id": d.id, "class": hyp.class_id if hyp else "", "score": hyp.score if hyp else 0.0,
                        "center": np.array([c.x, c.y, c.z]), "size": np.array([s.x, s.y, s.z]),
                        "yaw": 2.0 * float(np.arctan2(q.z, q.w))})
        return out
    if msgtype == "segfuse_msgs/msg/LaneLineArray":
        n = len(msg.lines)
        return {"coefficients": np.array([ln.coefficients for ln in msg.lines], np.float64).reshape(n, 4),
                "x_range_m": np.array([[ln.x_min_m, ln.x_max_m] for ln in msg.lines], np.float64).reshape(n, 2),
                "type": [ln.type for ln in msg.lines],
                "confidence": np.array([ln.confidence for ln in msg.lines], np.float32)}
    if msgtype == "segfuse_msgs/msg/FrameStatus":
        return {k: getattr(msg, k) for k in ("frame", "camera_seq", "camera_stamp_ns", "lidar_stamp_ns",
                                             "publish_stamp_ns", "pipeline_latency_ms", "frames_dropped",
                                             "lidar_missing", "fused", "ego_motion")}
    return msg


class SampleDecoder:
    """Key expression + payload + attachment -> :class:`Decoded` (raises InputDataError)."""

    def __init__(self) -> None:
        from pipeline.msgs import make_typestore

        self.ts = make_typestore()

    def decode(self, key: str, payload: bytes, attachment: bytes | None, *, numpy: bool = True) -> Decoded:
        from pipeline.zenoh_keys import decode_attachment, parse_topic_key, type_hash

        _, topic, msgtype, thash = parse_topic_key(key)
        if msgtype not in self.ts.fielddefs:
            raise InputDataError(f"unknown type {msgtype}", field="key_expr")
        if thash != type_hash(self.ts, msgtype):
            raise InputDataError(f"type hash {thash} is not ours for {msgtype}", field="key_expr")
        seq, src_ns, _ = decode_attachment(attachment)
        try:
            msg = self.ts.deserialize_cdr(payload, msgtype)
            data = to_numpy(msgtype, msg) if numpy else None
        except InputDataError:
            raise
        except Exception as exc:       # truncated / garbled CDR
            raise InputDataError(f"cannot decode {msgtype}: {exc}", field="payload") from exc
        return Decoded(topic, msgtype, _stamp(msg), data, msg, seq, src_ns, time.time_ns(), len(payload))


class FusedSubscriber:
    """Subscribe to segfuse's topics (all under ``/segfuse`` on ``domain_id``)."""

    def __init__(self, *, connect: list[str] | None = None, listen: list[str] | None = None, mode: str = "peer",
                 config_file: str | None = None, domain_id: int = 0, camera_id: str = "camera_front",
                 depth: int = 1, shared_memory: bool = False) -> None:
        import zenoh

        from pipeline.zenoh_keys import zenoh_config

        self.camera_id = camera_id
        self.decoder = SampleDecoder()
        self.malformed = 0
        self.received = 0
        self._queues: dict[str, deque] = {}
        self._depth = max(1, int(depth))
        self._cond = threading.Condition()
        conf = zenoh_config(mode=mode, connect=connect, listen=listen, config_file=config_file,
                            shared_memory=shared_memory, field_prefix="subscriber.")
        try:
            self.session = zenoh.open(conf)
        except Exception as exc:       # zenoh's ZError: a bad or busy endpoint
            from pipeline.errors import ConfigError

            raise ConfigError(f"cannot open a Zenoh session: {exc}", field="subscriber.connect/listen") from exc
        from pipeline.listen_cli import declare_history_subscriber

        # every topic of the domain (the schema has /tf, /tf_static, /clock besides /segfuse/...),
        # with the latched ones' cached samples from publishers that were up first
        self._sub = declare_history_subscriber(self.session, f"{int(domain_id)}/**", self._on_sample)

    def _on_sample(self, sample: Any) -> None:
        try:
            att = sample.attachment
            d = self.decoder.decode(str(sample.key_expr), sample.payload.to_bytes(),
                                    None if att is None else att.to_bytes())
        except Exception as exc:
            self.malformed += 1
            log.warning("skipped a malformed sample on %s: %s", sample.key_expr, exc)
            return
        with self._cond:
            q = self._queues.setdefault(d.topic, deque(maxlen=self._depth))
            q.append(d)
            self.received += 1
            self._cond.notify_all()

    def topic(self, name: str) -> str:
        return SHORT_TOPICS.get(name, name).format(cam=self.camera_id)

    def latest(self, name: str, timeout_s: float = 0.0) -> Decoded | None:
        """The newest sample of a topic (short name or full topic), waiting up to ``timeout_s``;
        it is taken: the next call returns a newer one or None."""
        topic = self.topic(name)
        with self._cond:
            self._cond.wait_for(lambda: bool(self._queues.get(topic)), timeout=timeout_s)
            q = self._queues.get(topic)
            if not q:
                return None
            d = q[-1]
            q.clear()
            return d

    def take(self, name: str, timeout_s: float = 0.0) -> Decoded | None:
        """The oldest queued sample of a topic (with ``depth`` > 1: in order)."""
        topic = self.topic(name)
        with self._cond:
            self._cond.wait_for(lambda: bool(self._queues.get(topic)), timeout=timeout_s)
            q = self._queues.get(topic)
            return q.popleft() if q else None

    def close(self) -> None:
        try:
            self._sub.undeclare()
        finally:
            self.session.close()

    def __enter__(self) -> "FusedSubscriber":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
