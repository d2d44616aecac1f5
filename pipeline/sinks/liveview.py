"""Live view sink: the run's results on a Foxglove WebSocket server (``foxglove-sdk``), for a
person to watch while the car drives (open ``ws://127.0.0.1:8765`` in Foxglove, with
``configs/foxglove_layout.json``).

Channels: every topic of the output schema (pipeline.sinks.schema) with its ROS 2 schema
(``ros2msg``) and the very CDR bytes the recorder and the Zenoh publisher carry, plus the
live-view-only channels drawn with Foxglove's own schemas (``/live/scene`` boxes, labels and lane
strips, ``/live/points`` the cloud coloured by class, ``/live/{cam}/blended`` the camera with the
semantic mask blended in, ``/live/transforms``). Latched topics (``/tf_static``, run info) are
sent again to every client that subscribes to them.

At most ``max_rate_hz`` frames a second are sent (10: what a person watching needs; the others
are skipped and counted in ``skipped_rate``). Never stalls the pipeline: the runner declares it a
lossy sink (``pipeline.graph``: ``Stage(..., lossy=queue_frames)``), so the graph hands it results
through a queue of ``queue_frames``, the newest winning and older ones dropped and counted
(``GraphStats.sink_dropped``), on a thread of the graph's; ``write()`` builds and sends the
messages only for channels some client subscribed to (nothing is built while nobody watches). The SDK's ``log`` never blocks either: each client has
its own outbox of ``backlog`` messages and the oldest data message is dropped when it is full
(foxglove-sdk ``message_backlog_size``; the SDK logs "outbox for client ... full", which this
sink counts in ``client_backlog_full``; the SDK does not say how many messages it dropped).

Binding: ``host`` 127.0.0.1 by default. Any other host needs ``allow_remote: true``; the SDK's
server has no client authentication, so the documented secure way to watch from another machine
is an SSH tunnel to the loopback port (docs/publishing.md, "Security"); ``tls_cert``/``tls_key``
make it ``wss://`` (encrypted, still unauthenticated).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import setting
from pipeline.errors import ConfigError
from pipeline.sinks.messages import RosMessages, frame_view, sample_lane
from pipeline.sinks.schema import BASE_FRAME, WORLD_FRAME
from pipeline.types import FrameResult

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SUBPROTOCOL = "foxglove.sdk.v1"
STOP_WAIT_S = 2.0
LOSSY_LOGGER = "foxglove.websocket.connected_client.send_lossy"     # where foxglove-sdk reports a full outbox


@dataclass
class LiveViewConfig:
    """``sinks.liveview`` of a run config (docs/publishing.md, "Live view")."""

    enabled: bool = setting(False, doc="serve the results to Foxglove over a WebSocket (foxglove-sdk)")
    host: str = setting("127.0.0.1", doc="bind address; anything but loopback needs allow_remote (the server "
                        "authenticates nobody)")
    port: int = setting(8765, min=0, max=65535, doc="TCP port (0: any free port, logged)")
    queue_frames: int = setting(2, unit="frames", min=1, doc="results waiting for the live view (the graph's "
                                "lossy-sink queue); the oldest is dropped (counted) when full")
    backlog: int = setting(256, unit="messages", min=1, doc="per-client outbox (foxglove-sdk "
                           "message_backlog_size); the oldest data message is dropped when full")
    allow_remote: bool = setting(False, doc="allow a non-loopback host (anyone who reaches it sees the stream)")
    tls_cert: str | None = setting(None, doc="PEM certificate: wss:// (with tls_key)")
    tls_key: str | None = setting(None, doc="PEM PKCS#8 private key of tls_cert")
    blend_alpha: float = setting(0.5, min=0, max=1, doc="weight of the class colours in /live/{cam}/blended")
    wait_clients_s: float = setting(0.0, unit="s", min=0, doc="at start, wait (bounded) until a client "
                                    "subscribed to every channel")
    max_rate_hz: float = setting(10.0, unit="Hz", min=0, doc="frames sent per second at most (a person "
                                 "watching); the others are skipped (counted); 0: every frame")

    def check(self, *, path: Any, prefix: str = "") -> None:
        if self.host not in LOOPBACK_HOSTS and not self.allow_remote:
            raise ConfigError(f"{self.host!r} is not loopback: the live view authenticates nobody, so binding "
                              "another address needs allow_remote: true (or watch through an SSH tunnel to "
                              "127.0.0.1)", path=path, field=prefix + "host")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together", path=path, field=prefix + "tls_cert")
        for k in ("tls_cert", "tls_key"):
            f = getattr(self, k)
            if f is not None and not Path(f).is_file():
                raise ConfigError("file not found", path=f, field=prefix + k)


def liveview_config_from_dict(d: dict[str, Any] | None, *, path: str = "<config>",
                              prefix: str = "sinks.liveview.") -> LiveViewConfig:
    from pipeline.config import parse_section

    return parse_section(LiveViewConfig, d or {}, path=path, prefix=prefix)


class _BacklogCounter(logging.Handler):
    """Counts foxglove-sdk's "outbox for client ... full" log records (a client's backlog overflowed)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "outbox" in record.getMessage() and "full" in record.getMessage():
            self.count += 1


class LiveView(RosMessages):
    """``write(work)`` per frame (never blocks), ``close()`` once (``abort()`` = close)."""

    def __init__(self, cfg: LiveViewConfig, rig: Any, taxonomy: Any, *, camera_id: str, lidar_id: str | None,
                 has_poses: bool = False, replay: bool = True, camera_image: bool = False,
                 run_info: str = "{}") -> None:
        import foxglove
        from foxglove import Channel, Schema
        from foxglove.channels import (FrameTransformsChannel, PointCloudChannel, RawImageChannel,
                                       SceneUpdateChannel)

        self.cfg = cfg
        self._init_messages(rig, taxonomy, camera_id=camera_id, lidar_id=lidar_id, has_poses=has_poses,
                            replay=replay, camera_image=camera_image, run_info=run_info)
        self._ctx = foxglove.Context()
        self._subs: dict[int, set[int]] = {}          # channel id -> subscribed client ids
        self._sub_lock = threading.Lock()
        self._latched: dict[str, tuple[bytes, int]] = {}
        self.channels: dict[str, Any] = {}
        for topic, spec in self.schema.items():
            text, _ = self._ts.generate_msgdef(spec.msgtype, ros_version=2)
            self.channels[topic] = Channel(topic, message_encoding="cdr", context=self._ctx,
                                           schema=Schema(name=spec.msgtype, encoding="ros2msg", data=text.encode()))
        self.extras: dict[str, Any] = {
            "/live/transforms": FrameTransformsChannel("/live/transforms", context=self._ctx),
            f"/live/{camera_id}/blended": RawImageChannel(f"/live/{camera_id}/blended", context=self._ctx)}
        if lidar_id is not None:
            self.extras["/live/scene"] = SceneUpdateChannel("/live/scene", context=self._ctx)
            self.extras["/live/points"] = PointCloudChannel("/live/points", context=self._ctx)
        self._rgb_unlabeled_grey = self._colors_rgb()
        self._rgb_unlabeled_grey[255] = 128
        self._lut_bgr = np.ascontiguousarray(self._colors_rgb()[:, ::-1]).reshape(256, 1, 3)
        self._by_id = {c.id(): t for t, c in [*self.channels.items(), *self.extras.items()]}
        self._id_of = {t: i for i, t in self._by_id.items()}
        self._counter = _BacklogCounter()
        lossy = logging.getLogger(LOSSY_LOGGER)
        if not lossy.isEnabledFor(logging.INFO):     # the SDK only reports overflows at INFO: keep them coming
            lossy.setLevel(logging.INFO)
        logging.getLogger("foxglove").addHandler(self._counter)
        tls = {}
        if cfg.tls_cert:
            tls = {"tls_cert": Path(cfg.tls_cert).read_bytes(), "tls_key": Path(cfg.tls_key).read_bytes()}
        try:
            self.server = foxglove.start_server(name="segfuse", host=cfg.host, port=cfg.port, context=self._ctx,
                                                server_listener=self, message_backlog_size=cfg.backlog, **tls)
        except Exception as exc:            # port in use, bad address, bad certificate
            logging.getLogger("foxglove").removeHandler(self._counter)
            raise ConfigError(f"cannot start the live view on {cfg.host}:{cfg.port}: {exc}",
                              field="sinks.liveview") from exc
        self.port = int(self.server.port)
        self.url = f"{'wss' if tls else 'ws'}://{cfg.host}:{self.port}"
        self._state = "open"
        self._started = False
        self.frames = 0
        self.sent_frames = 0
        self.dropped_frames = 0                        # set by the runner from the graph's count at the end
        self.skipped_rate = 0
        self._last_accept = -1e9
        self.errors = 0
        self.build_ns = 0                              # wall time building and logging messages
        self.cpu_ns = 0                                # ... and its CPU time (the cost to the machine)
        log.info("live view listening on %s (Foxglove: open connection -> Foxglove WebSocket -> %s; layout "
                 "configs/foxglove_layout.json)", self.url, self.url)
        if cfg.wait_clients_s > 0 and not self.wait_for_clients(cfg.wait_clients_s):
            log.warning("live view: no client subscribed to every channel within %.1f s", cfg.wait_clients_s)
        if cfg.host not in LOOPBACK_HOSTS:
            log.warning("live view bound to %s: anyone who reaches %s:%d sees the stream (no authentication)",
                        cfg.host, cfg.host, self.port)

    @property
    def client_backlog_full(self) -> int:
        return self._counter.count

    # -- foxglove ServerListener -------------------------------------------------------------
    # No foxglove-sdk call is made while holding _sub_lock: the SDK calls these listeners holding a
    # lock of its own, so an SDK call under ours (a channel's id(), say) deadlocks against them.
    def on_subscribe(self, client: Any, channel: Any) -> None:
        cid, kid = channel.id, client.id
        with self._sub_lock:
            self._subs.setdefault(cid, set()).add(kid)
        topic = self._by_id.get(cid)
        latched = self._latched.get(topic)
        if latched is not None:              # "latched": the newcomer gets it (everyone else again)
            self.channels[topic].log(latched[0], log_time=latched[1])

    def on_unsubscribe(self, client: Any, channel: Any) -> None:
        cid, kid = channel.id, client.id
        with self._sub_lock:
            self._subs.get(cid, set()).discard(kid)

    def wait_for_clients(self, timeout_s: float) -> bool:
        """Wait (bounded) until every channel has a subscribed client; True when they all do."""
        deadline = time.monotonic() + timeout_s
        ids = list(self._by_id)
        while time.monotonic() < deadline:
            with self._sub_lock:
                if all(self._subs.get(i) for i in ids):
                    return True
            time.sleep(0.02)
        return False

    def _watched(self, topic: str) -> bool:
        cid = self._id_of[topic]
        with self._sub_lock:
            return bool(self._subs.get(cid))

    # -- the pipeline's side (on the graph's lossy-sink thread) --------------------------------
    def write(self, result: FrameResult) -> None:
        """Send one frame to the clients (at most ``max_rate_hz``); a failure is counted, never raised."""
        if self._state != "open":
            return
        self.frames += 1
        now = time.monotonic()
        if self.cfg.max_rate_hz > 0 and now - self._last_accept < 1.0 / self.cfg.max_rate_hz:
            self.skipped_rate += 1                 # faster than a person needs: not a drop
            return
        self._last_accept = now
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        try:
            self._send(frame_view(result))
            self.sent_frames += 1
        except Exception as exc:                   # a live-view failure never fails the run
            self.errors += 1
            log.warning("live view: frame %d not sent: %s", result.index, exc)
        self.build_ns += time.perf_counter_ns() - t0
        self.cpu_ns += time.thread_time_ns() - c0

    def _send(self, v: Any) -> None:
        if not self._started:
            self._started = True
            for topic, msgtype, stamp, msg in self.start_messages(self.first_stamp(v)):
                data = bytes(self._ts.serialize_cdr(msg, msgtype))
                self._latched[topic] = (data, stamp)
                self.channels[topic].log(data, log_time=stamp)
        for topic, _, stamp, data in self.frame_cdr(v, live=True, want=self._watched):
            self.channels[topic].log(data, log_time=stamp)
        cam_ns = int(v.camera.stamp_ns)
        if self._watched("/live/transforms"):
            self.extras["/live/transforms"].log(self._fox_transforms(v, cam_ns), log_time=cam_ns)
        blended = f"/live/{v.camera.camera_id}/blended"
        if blended in self.extras and self._watched(blended):
            self.extras[blended].log(self._fox_blended(v, cam_ns), log_time=cam_ns)
        res = v.fusion
        if res is not None and v.sweep is not None and "/live/scene" in self.extras:
            if self._watched("/live/scene"):
                self.extras["/live/scene"].log(self._fox_scene(res, cam_ns), log_time=cam_ns)
            if self._watched("/live/points"):
                sweep_ns = int(v.sweep.stamp_ns)
                self.extras["/live/points"].log(self._fox_points(res.cloud, sweep_ns), log_time=sweep_ns)

    # -- Foxglove schemas ----------------------------------------------------------------------
    @staticmethod
    def _stamp(ns: int) -> Any:
        from foxglove.messages import Timestamp

        return Timestamp(int(ns) // 1_000_000_000, int(ns) % 1_000_000_000)

    def _fox_transforms(self, v: Any, cam_ns: int) -> Any:
        from foxglove.messages import FrameTransform, FrameTransforms, Quaternion, Vector3

        tfs = self.static_transforms(cam_ns)
        if v.T_world_from_base is not None:
            tfs.append(self._transform(cam_ns, WORLD_FRAME, BASE_FRAME, v.T_world_from_base))
        out = []
        for tf in tfs:
            t, q = tf.transform.translation, tf.transform.rotation
            out.append(FrameTransform(timestamp=self._stamp(cam_ns), parent_frame_id=tf.header.frame_id,
                                      child_frame_id=tf.child_frame_id, translation=Vector3(x=t.x, y=t.y, z=t.z),
                                      rotation=Quaternion(x=q.x, y=q.y, z=q.z, w=q.w)))
        return FrameTransforms(transforms=out)

    def _colors_rgb(self) -> np.ndarray:
        lut = np.zeros((256, 3), np.uint8)
        bgr = np.asarray(self.taxonomy.colors_bgr, np.uint8).reshape(-1, 3)
        lut[:len(bgr)] = bgr[:, ::-1]
        return lut

    def _fox_blended(self, v: Any, cam_ns: int) -> Any:
        import cv2
        from foxglove.messages import RawImage

        img = np.ascontiguousarray(v.camera.image)
        sem = v.semantic.get(v.camera.camera_id)
        if sem is not None and sem.class_ids.shape[:2] == img.shape[:2]:
            ids = np.ascontiguousarray(sem.class_ids, np.uint8)
            colour = cv2.LUT(cv2.merge([ids, ids, ids]), self._lut_bgr)      # class colours, BGR like the image
            a = self.cfg.blend_alpha
            out = cv2.addWeighted(img, 1.0 - a, colour, a, 0.0)
            np.copyto(out, img, where=(ids == 255)[:, :, None])             # unlabelled pixels: the image
            img = out
        h, w = img.shape[:2]
        return RawImage(timestamp=self._stamp(cam_ns), frame_id=self._cam_frame, width=w, height=h, encoding="bgr8",
                        step=3 * w, data=img.tobytes())

    def _fox_points(self, cloud: Any, stamp_ns: int) -> Any:
        from foxglove.messages import PackedElementField, PackedElementFieldNumericType, PointCloud, Pose, \
            Quaternion, Vector3

        n = int(cloud.points.shape[0])
        rec = np.empty((n, 16), np.uint8)                     # x, y, z float32, then r, g, b, a
        rec[:, :12] = np.ascontiguousarray(cloud.points[:, :3], np.float32).view(np.uint8).reshape(n, 12)
        rec[:, 12:15] = np.take(self._rgb_unlabeled_grey, np.asarray(cloud.class_id, np.uint8), axis=0)
        rec[:, 15] = 255
        F, U = PackedElementFieldNumericType.Float32, PackedElementFieldNumericType.Uint8
        fields = [PackedElementField(name=nm, offset=off, type=t) for nm, off, t in
                  (("x", 0, F), ("y", 4, F), ("z", 8, F), ("red", 12, U), ("green", 13, U), ("blue", 14, U),
                   ("alpha", 15, U))]
        return PointCloud(timestamp=self._stamp(stamp_ns), frame_id=self._lidar_frame,
                          pose=Pose(position=Vector3(x=0.0, y=0.0, z=0.0), orientation=Quaternion(w=1.0)),
                          point_stride=16, fields=fields, data=rec.data.tobytes())

    def _fox_scene(self, res: Any, stamp_ns: int) -> Any:
        from foxglove.messages import (Color, CubePrimitive, LinePrimitive, LinePrimitiveLineType, Point3, Pose,
                                       Quaternion, SceneEntity, SceneEntityDeletion, SceneEntityDeletionType,
                                       SceneUpdate, TextPrimitive, Vector3)

        lut = self._colors_rgb()
        ts = self._stamp(stamp_ns)

        def colour(cid: int, a: float) -> Any:
            r, g, b = (int(c) for c in lut[int(cid)])
            return Color(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=a)

        def pose(x: float, y: float, z: float, yaw: float) -> Any:
            return Pose(position=Vector3(x=float(x), y=float(y), z=float(z)),
                        orientation=Quaternion(x=0.0, y=0.0, z=float(np.sin(0.5 * yaw)), w=float(np.cos(0.5 * yaw))))

        entities = []
        for o in res.objects:
            c, s = np.asarray(o.box_center, np.float64), np.asarray(o.box_size, np.float64)
            name = self.taxonomy.names[int(o.class_id)]
            entities.append(SceneEntity(
                timestamp=ts, frame_id=BASE_FRAME, id=f"object/{int(o.instance_id)}",
                cubes=[CubePrimitive(pose=pose(c[0], c[1], c[2], float(o.yaw)),
                                     size=Vector3(x=float(s[0]), y=float(s[1]), z=float(s[2])),
                                     color=colour(o.class_id, 0.5))],
                texts=[TextPrimitive(pose=pose(c[0], c[1], c[2] + 0.5 * s[2] + 0.6, 0.0), billboard=True,
                                     font_size=14.0, scale_invariant=True, color=colour(o.class_id, 1.0),
                                     text=f"{name} {o.range_m:.0f} m")]))
        for k, lane in enumerate(res.lanes):
            pts = sample_lane(lane.coeffs, lane.x_min_m, lane.x_max_m)
            entities.append(SceneEntity(
                timestamp=ts, frame_id=BASE_FRAME, id=f"lane/{k}",
                lines=[LinePrimitive(type=LinePrimitiveLineType.LineStrip, thickness=0.15,
                                     points=[Point3(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in pts],
                                     color=Color(r=1.0, g=1.0, b=1.0, a=1.0))]))
        return SceneUpdate(deletions=[SceneEntityDeletion(timestamp=ts, type=SceneEntityDeletionType.All)],
                           entities=entities)

    # -- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        if self._state != "open":
            return
        self._state = "closed"
        # the SDK's stop() waits for every client's close handshake: a frozen viewer would hold the
        # end of the run for ~40 s, so it stops on a thread of its own and the run goes on
        stopper = threading.Thread(target=self.server.stop, name="segfuse-liveview-stop", daemon=True)
        stopper.start()
        stopper.join(STOP_WAIT_S)
        if stopper.is_alive():
            log.warning("live view: a client did not close within %.0f s; not waiting for it", STOP_WAIT_S)
        logging.getLogger("foxglove").removeHandler(self._counter)
        n = max(self.sent_frames, 1)
        log.info("live view: %d frames in, %d sent, %d skipped (max_rate_hz), %d dropped (queue full), %d client "
                 "backlog overflows, %d errors; per frame sent %.1f ms CPU, %.1f ms wall", self.frames,
                 self.sent_frames, self.skipped_rate, self.dropped_frames, self.client_backlog_full, self.errors,
                 self.cpu_ns / n / 1e6, self.build_ns / n / 1e6)

    abort = close

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "frames": self.frames, "sent": self.sent_frames, "skipped_rate": self.skipped_rate,
                "dropped": self.dropped_frames,
                "client_backlog_full": self.client_backlog_full, "errors": self.errors,
                "cpu_ms_per_frame": self.cpu_ns / max(self.sent_frames, 1) / 1e6,
                "wall_ms_per_frame": self.build_ns / max(self.sent_frames, 1) / 1e6}


__all__ = ["LiveView", "LiveViewConfig", "liveview_config_from_dict", "SUBPROTOCOL"]
