"""Live LiDAR over Zenoh: ROS 2 ``sensor_msgs/msg/PointCloud2`` as CDR, as rmw_zenoh and
zenoh-bridge-ros2dds publish it.

``zenoh://KEY_EXPR`` subscribes to a key expression (wildcards allowed), e.g.
``zenoh://0/velodyne_points/**`` (rmw_zenoh: ``<domain>/<topic>/<DDS type>/<type hash>``, see
pipeline.zenoh_keys) or ``zenoh://velodyne_points`` (zenoh-bridge-ros2dds). Query parameters:
``connect`` / ``listen`` (endpoints, comma-separated, e.g. ``?connect=tcp/127.0.0.1:7447``),
``mode`` (peer | client | router; default peer), ``config_file`` (a Zenoh JSON5 config),
``multicast_scouting`` (0/1; default 0), ``depth`` (samples queued; default 2) and ``lidar_id``
(the rig LiDAR; default the rig's only LiDAR).

Each sample is decoded with the rosbags typestore (pipeline.msgs.make_typestore) and turned into
the same ``LidarInput`` the bag source yields: stamp from the header, points (x, y, z,
intensity) in the LiDAR frame, per-point time offsets when the cloud has a time field. Samples
wait in a bounded queue: when it is full the oldest goes (newest wins) and is counted in
``dropped``. A sample that cannot be read (not CDR, a type other than PointCloud2, no x/y/z) is
skipped, counted and reported like other sources' skipped inputs; the run goes on.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from pipeline.errors import ConfigError, InputDataError
from pipeline.sources.base import LidarInput, Source, SourceInfo, SourceItem
from pipeline.sources.uri import SourceURI
from pipeline.types import LidarSweep

log = logging.getLogger(__name__)

POINT_CLOUD2 = "sensor_msgs/msg/PointCloud2"
POLL_S = 0.1                      # how often a waiting iterator looks at stop()


def _endpoints(value: str | None) -> list[str]:
    return [e.strip() for e in (value or "").split(",") if e.strip()]


class ZenohLidarSource(Source):
    def __init__(self, uri: SourceURI, *, rig: Any = None) -> None:
        super().__init__()
        import zenoh

        from pipeline.msgs import make_typestore
        from pipeline.zenoh_keys import MODES, zenoh_config

        self.key_expr = uri.location
        if not self.key_expr:
            raise ConfigError("a zenoh:// LiDAR needs a key expression, e.g. zenoh://0/velodyne_points/**",
                              path=uri.raw, field="input.lidar")
        p = uri.params
        mode = p.get("mode", "peer")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}", path=uri.raw,
                              field="input.lidar")
        try:
            depth = int(p.get("depth", 2))
        except ValueError:
            depth = 0
        if depth < 1:
            raise ConfigError(f"depth must be a positive integer, got {p.get('depth')!r}", path=uri.raw,
                              field="input.lidar")
        self.rig = rig
        lidars = list(getattr(rig, "lidars", None) or [])
        self.lidar_id = p.get("lidar_id") or (lidars[0].name if len(lidars) == 1 else "lidar")
        self._forced_lidar = bool(p.get("lidar_id"))
        self.camera_id = None
        self.received = 0
        self._queue: deque[tuple[str, bytes, int]] = deque()
        self._depth = depth
        self._cond = threading.Condition()
        self._seq = 0
        self._ts = make_typestore()
        self._closed = False
        self.info = SourceInfo(name=f"zenoh {self.key_expr}", uri=uri.raw, kind="zenoh", live=True,
                               has_lidar=True, extra={"key_expr": self.key_expr, "depth": depth})
        conf = zenoh_config(mode=mode, connect=_endpoints(p.get("connect")), listen=_endpoints(p.get("listen")),
                            config_file=p.get("config_file"),
                            multicast_scouting=p.get("multicast_scouting", "0").lower() in ("1", "true", "yes"),
                            field_prefix="input.lidar.")
        try:
            self._session = zenoh.open(conf)
        except Exception as exc:       # zenoh's ZError: a bad or busy endpoint
            raise ConfigError(f"cannot open a Zenoh session: {exc}", path=uri.raw, field="input.lidar") from exc
        try:
            self._sub = self._session.declare_subscriber(self.key_expr, self._on_sample)
        except Exception as exc:       # an invalid key expression
            self._session.close()
            raise ConfigError(f"cannot subscribe to {self.key_expr!r}: {exc}", path=uri.raw,
                              field="input.lidar") from exc
        log.info("LiDAR %s from zenoh %s", self.lidar_id, self.key_expr)

    # zenoh's callback thread: queue the raw sample only; decoding happens on the reading thread
    def _on_sample(self, sample: Any) -> None:
        try:
            item = (str(sample.key_expr), sample.payload.to_bytes(), time.monotonic_ns())
        except Exception as exc:       # nothing readable in the sample at all
            item = (str(getattr(sample, "key_expr", self.key_expr)), b"", time.monotonic_ns())
            log.debug("unreadable sample: %s", exc)
        with self._cond:
            if len(self._queue) >= self._depth:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(item)
            self.received += 1
            self._cond.notify_all()

    def _items(self) -> Iterator[SourceItem]:
        while not self.stopped and not self._closed:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self.stopped or self._closed, timeout=POLL_S)
                if not self._queue:
                    continue
                key, payload, received = self._queue.popleft()
            try:
                sweep = self._decode(key, payload)
            except InputDataError as exc:
                self.skip("cloud", key, exc.message)
                continue
            self._seq += 1
            yield LidarInput(sweep, self._seq - 1, received_ns=received)

    def _decode(self, key: str, payload: bytes) -> LidarSweep:
        from pipeline.sources.bag import _stamp_ns, cloud_points
        from pipeline.zenoh_keys import parse_topic_key

        try:
            msgtype = parse_topic_key(key)[2]
        except InputDataError:         # not an rmw_zenoh key (zenoh-bridge-ros2dds): take it as a cloud
            msgtype = POINT_CLOUD2
        if msgtype != POINT_CLOUD2:
            raise InputDataError(f"a {msgtype} sample, not a {POINT_CLOUD2}", field=key)
        try:
            msg = self._ts.deserialize_cdr(payload, POINT_CLOUD2)
        except Exception as exc:       # truncated / garbled CDR: rosbags has no common error base
            raise InputDataError(f"cannot decode {POINT_CLOUD2}: {exc}", field=key) from exc
        try:
            pts, t_off = cloud_points(msg, self.info.uri, key)
        except InputDataError:
            raise
        except Exception as exc:       # a cloud whose fields and data do not fit together
            raise InputDataError(f"unreadable PointCloud2: {exc}", field=key) from exc
        return LidarSweep(self.lidar_for_frame(str(msg.header.frame_id), key), _stamp_ns(msg.header), pts, t_off)

    def lidar_for_frame(self, frame_id: str, key: str = "") -> str:
        """The rig LiDAR a cloud stamped in ``header.frame_id`` belongs to (ROS: the cloud's points
        are in that frame): the LiDAR whose frame id or name it is. ``?lidar_id=`` forces one; an
        empty frame id, or no rig, takes the default. A frame the rig has no LiDAR for is refused
        (fusing it with another sensor's extrinsic would be silently wrong)."""
        if self._forced_lidar or not frame_id or self.rig is None:
            return self.lidar_id
        for lid in self.rig.lidars:
            if frame_id in (lid.frame_id, lid.name):
                return lid.name
        raise InputDataError(f"header.frame_id {frame_id!r} is no LiDAR of the rig (frames: "
                             f"{', '.join(lid.frame_id for lid in self.rig.lidars)}); set ?lidar_id= to force one",
                             field=key or "header.frame_id")

    def stop(self) -> None:
        super().stop()
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._cond.notify_all()
        try:
            self._sub.undeclare()
        finally:
            self._session.close()
