"""Publisher sink: the run's results over Zenoh, as ROS 2 messages an rmw_zenoh node can take.

Every message is CDR (rosbags ``serialize_cdr``), built by the same code as the recorder's
(:class:`pipeline.sinks.messages.RosMessages`), on the topics of the output schema
(pipeline.sinks.schema; the table in docs/publishing.md), put on the rmw_zenoh key expression of
its topic with the rmw_zenoh attachment (pipeline.zenoh_keys). Latched topics (``/tf_static``,
``/segfuse/run_info``) are announced transient local and put through a Zenoh advanced publisher
with a one-sample cache (as rmw_zenoh does for transient local), so a subscriber that comes
late still gets them (with history; ``segfuse listen`` and the planner API ask for it).

Listening: with no ``listen`` endpoints (and none in ``config_file``) the session listens on
``tcp/127.0.0.1:0`` only (Zenoh's own default is every interface); where it listens is logged
at start. Off the host: TLS endpoints with certificates (mutual TLS) and Zenoh access control
in ``config_file`` (docs/publishing.md, "Security").

QoS: ``latest`` (default) puts with congestion control DROP, so a slow or vanished subscriber
never stalls the pipeline thread; ``reliable`` puts with BLOCK (for recorders: nothing is lost,
and a slow recorder slows the pipeline). ``shared_memory: true`` enables Zenoh's shared-memory
transport and puts payloads from a shared-memory pool (same-machine subscribers read in place).

ROS graph: like an rmw_zenoh node, the sink declares Zenoh liveliness tokens (pipeline.zenoh_keys,
docs/publishing.md): one NN token for the node ``/segfuse`` (node id 0) and one MP token per
topic publisher (entity ids 1..N in the table's order) announcing topic, type, type hash and QoS
(``latest``: best effort, keep last 1; ``reliable``: reliable, keep all), so ``ros2 node list`` /
``ros2 topic list`` on rmw_zenoh show them; ``close()`` undeclares them. Each publisher's GID
(in every attachment) is rmw_zenoh's GID of its token: XXH3-128 of the key expression.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from pipeline.config import setting
from pipeline.errors import ConfigError
from pipeline.sinks.messages import (  # noqa: F401  (re-exported)
    TOPIC_LANE_LINES, TOPIC_OBJECTS, TOPIC_POINTS, TOPIC_STATUS, RosMessages, frame_view)
from pipeline.zenoh_keys import LOOPBACK_LISTEN, MODES, listen_endpoints, zenoh_config  # noqa: F401

log = logging.getLogger(__name__)

TOPIC_FRAME_STATUS = TOPIC_STATUS
T_CLOUD = "sensor_msgs/msg/PointCloud2"
T_IMAGE = "sensor_msgs/msg/Image"
T_OBJECTS = "vision_msgs/msg/Detection3DArray"
T_LANES = "segfuse_msgs/msg/LaneLineArray"
T_STATUS = "segfuse_msgs/msg/FrameStatus"
QOS = ("latest", "reliable")
CLOSE_TIMEOUT_S = 2.0          # the longest close() waits for Zenoh to close the session
NODE_NAME = "segfuse"          # the ROS node the tokens announce: /segfuse
NODE_NAMESPACE = "/"


def _endpoints(value: Any, *, path: Any, field: str) -> list[str]:
    from pipeline.config import parse_value

    eps = parse_value(list[str], value, path=path, name=field)
    for ep in eps:
        if "/" not in ep:
            raise ConfigError(f"a Zenoh endpoint like tcp/127.0.0.1:7447, got {ep!r}", path=path, field=field)
    return eps


@dataclass
class PublisherConfig:
    """``sinks.publisher`` of a run config (docs/publishing.md)."""

    enabled: bool = setting(False, doc="publish the results over Zenoh as ROS 2 messages (rmw_zenoh layout)")
    mode: str = setting("peer", choices=MODES, doc="the Zenoh session's mode")
    connect: list[str] = setting(factory=list, parse=_endpoints, doc="endpoints to connect to, e.g. "
                                 "tcp/127.0.0.1:7447")
    listen: list[str] = setting(factory=list, parse=_endpoints, doc="endpoints to listen on; none (here and in "
                                "config_file): tcp/127.0.0.1:0, loopback only")
    config_file: str | None = setting(None, doc="a Zenoh JSON5 config file; the keys here override it")
    domain_id: int = setting(0, min=0, max=232, doc="the ROS domain id in every key expression")
    qos: str = setting("latest", choices=QOS, doc="latest: drop for slow subscribers (never stalls); reliable: "
                       "block (nothing lost)")
    shared_memory: bool = setting(False, doc="Zenoh shared-memory transport; payloads from a shared-memory pool")
    shm_pool_mb: int = setting(64, unit="MiB", min=1, doc="size of the shared-memory pool")
    wait_subscribers_s: float = setting(0.0, unit="s", min=0, doc="at start, wait up to this long for a subscriber")
    multicast_scouting: bool = setting(False, doc="find peers by UDP multicast scouting")


def publisher_config_from_dict(d: dict[str, Any] | None, *, path: str = "<config>",
                               prefix: str = "sinks.publisher.") -> PublisherConfig:
    from pipeline.config import parse_section

    return parse_section(PublisherConfig, d, path=path, prefix=prefix)


def session_config(cfg: PublisherConfig) -> Any:
    """The zenoh.Config a publisher opens its session with."""
    return zenoh_config(mode=cfg.mode, connect=cfg.connect, listen=cfg.listen, config_file=cfg.config_file,
                        shared_memory=cfg.shared_memory, multicast_scouting=cfg.multicast_scouting)


class ZenohPublisher(RosMessages):
    """``write(result)`` per frame (a pipeline.types.FrameResult) from one thread, ``close()`` once
    (``abort()`` = close)."""

    def __init__(self, cfg: PublisherConfig, rig: Any, taxonomy: Any, *, camera_id: str, lidar_id: str | None,
                 has_poses: bool = False, replay: bool = True, camera_image: bool = False,
                 run_info: str = "{}") -> None:
        import zenoh
        import zenoh.ext

        from pipeline.zenoh_keys import LATCHED_QOS, PUBLISHER_QOS, gid_of, node_token, publisher_token, topic_key, type_hash

        self.cfg = cfg
        self._init_messages(rig, taxonomy, camera_id=camera_id, lidar_id=lidar_id, has_poses=has_poses,
                            replay=replay, camera_image=camera_image, run_info=run_info)
        conf = session_config(cfg)
        try:
            self.session = zenoh.open(conf)
        except Exception as exc:
            raise ConfigError(f"cannot open a Zenoh session: {exc}", field="sinks.publisher") from exc
        self.listening = listen_endpoints(conf, cfg.mode) if cfg.mode != "client" else []
        cc = zenoh.CongestionControl.BLOCK if cfg.qos == "reliable" else zenoh.CongestionControl.DROP
        self.congestion_control = cc
        self.keys: dict[str, str] = {}
        self._pubs: dict[str, Any] = {}
        self._gids: dict[str, bytes] = {}
        self._seq: dict[str, int] = {}
        # liveliness tokens: the node (id 0) first, then one per publisher (entity ids 1..N, unique
        # in this session, as rmw_zenoh numbers a context's entities)
        self.zid = str(self.session.zid())
        self.node_token = node_token(cfg.domain_id, self.zid, 0, NODE_NAME, namespace=NODE_NAMESPACE)
        self.tokens: dict[str, str] = {}
        self._lv: list[Any] = []
        self._declare_token(self.node_token)
        for entity_id, (topic, spec) in enumerate(self.schema.items(), start=1):
            msgtype = spec.msgtype
            thash = type_hash(self._ts, msgtype)
            key = topic_key(cfg.domain_id, topic, msgtype, thash)
            self.keys[topic] = key
            if spec.qos == "latched":       # transient local: cached for late subscribers, never dropped
                self._pubs[topic] = zenoh.ext.declare_advanced_publisher(
                    self.session, key, congestion_control=zenoh.CongestionControl.BLOCK,
                    reliability=zenoh.Reliability.RELIABLE, cache=zenoh.ext.CacheConfig(1), publisher_detection=True)
                qos = LATCHED_QOS
            else:
                self._pubs[topic] = self.session.declare_publisher(key, congestion_control=cc,
                                                                   reliability=zenoh.Reliability.RELIABLE)
                qos = PUBLISHER_QOS[cfg.qos]
            self.tokens[topic] = publisher_token(cfg.domain_id, self.zid, 0, entity_id, NODE_NAME, topic, msgtype,
                                                 thash, qos, namespace=NODE_NAMESPACE)
            # the GID in every attachment is the one rmw_zenoh gives this entity: XXH3-128 of its token
            self._gids[topic] = gid_of(self.tokens[topic])
            self._seq[topic] = 0
            self._declare_token(self.tokens[topic])
        self._shm = None
        self.shm_pool_bytes = cfg.shm_pool_mb * 1024 * 1024 if cfg.shared_memory else 0
        if cfg.shared_memory:
            try:
                from zenoh.shm import ShmProvider

                self._shm = ShmProvider.default_backend(cfg.shm_pool_mb * 1024 * 1024)
            except Exception as exc:     # not built with shared memory: plain buffers
                log.warning("shared memory unavailable (%s): publishing from plain buffers", exc)
        self._lock = threading.Lock()
        self._state = "open"
        self._started = False
        self.frames = 0
        self.samples = 0
        self.bytes = 0
        self.errors = 0
        log.info("Zenoh publisher (%s) listening on %s, connecting to %s", cfg.mode,
                 ", ".join(self.listening) or "nothing", ", ".join(cfg.connect) or "nothing")
        if cfg.wait_subscribers_s > 0:
            self.wait_for_subscribers(cfg.wait_subscribers_s)
        log.info("publishing on Zenoh (%s, qos %s%s): %s", cfg.mode, cfg.qos, ", shared memory" if self._shm else "",
                 ", ".join(sorted(self.keys.values())))

    def _declare_token(self, key: str) -> None:
        try:
            self._lv.append(self.session.liveliness().declare_token(key))
        except Exception as exc:          # data still flows; only the ROS graph misses the entity
            log.warning("cannot declare the liveliness token %s: %s", key, exc)

    def wait_for_subscribers(self, timeout_s: float) -> bool:
        """Wait (bounded) until every topic has a matching subscriber; True when they all do."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(p.matching_status.matching for t, p in self._pubs.items() if self.schema[t].qos != "latched"):
                return True
            time.sleep(0.02)
        return False

    # -- putting ----------------------------------------------------------------------------
    def put_cdr(self, topic: str, payload: bytes | memoryview, *, stamp_ns: int | None = None) -> None:
        """Put one serialized message on ``topic`` with the rmw_zenoh attachment."""
        from pipeline.zenoh_keys import encode_attachment

        self._seq[topic] += 1
        att = encode_attachment(self._seq[topic], time.time_ns() if stamp_ns is None else stamp_ns, self._gids[topic])
        data: Any = bytes(payload)
        if self._shm is not None:
            try:
                from zenoh.shm import BlockOn, GarbageCollect

                buf = self._shm.alloc(len(data), BlockOn(GarbageCollect()) if self.cfg.qos == "reliable"
                                      else GarbageCollect())
                buf[:] = data
                data = buf
            except Exception as exc:      # pool exhausted (latest mode): fall back to a copy
                log.debug("shm alloc failed: %s", exc)
        self._pubs[topic].put(data, attachment=att)
        self.samples += 1
        self.bytes += len(payload)

    def _publish(self, topic: str, msg: Any, stamp_ns: int | None = None) -> None:
        self.put_cdr(topic, self._ts.serialize_cdr(msg, self.topics[topic]))

    def write(self, work: Any) -> None:
        """Publish one frame's results (the output schema's topics); errors are counted, never raised."""
        if self._state != "open":
            return
        try:
            with self._lock:
                self._write(work)
        except Exception as exc:          # a publishing failure must not fail the run or the recording
            self.errors += 1
            log.warning("publisher: frame %s not published: %s", getattr(work, "index", "?"), exc)

    def _write(self, work: Any) -> None:
        v = frame_view(work)
        if not self._started:
            self._started = True
            for topic, _, _, msg in self.start_messages(self.first_stamp(v)):
                self._publish(topic, msg)
        for topic, _, _, data in self.frame_cdr(v, live=True):
            self.put_cdr(topic, data)
        self.frames += 1

    # -- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Leave the graph and close the session, in at most CLOSE_TIMEOUT_S: a stuck subscriber
        (a stopped process whose TCP link is still up) makes Zenoh's close wait and then fail with
        "close operation timed out"; that is logged, never raised, and the run ends on time."""
        if self._state != "open":
            return
        self._state = "closed"

        def shut() -> None:
            with self._lock:
                # leave the ROS graph first (publishers, then the node), as rmw_zenoh does on shutdown
                for handle in [*reversed(self._lv), *self._pubs.values()]:
                    try:
                        handle.undeclare()
                    except Exception as exc:
                        log.debug("undeclare: %s", exc)
                self._lv.clear()
                self.session.close()

        errors: list[BaseException] = []

        def run() -> None:
            try:
                shut()
            except Exception as exc:  # noqa: BLE001 - zenoh.ZError and friends: logged below
                errors.append(exc)

        t = threading.Thread(target=run, name="segfuse-zenoh-close", daemon=True)
        t.start()
        t.join(CLOSE_TIMEOUT_S)
        if t.is_alive():
            _STUCK_CLOSES.append(t)
            log.warning("publisher: the Zenoh session did not close within %.0f s (a subscriber is not reading); "
                        "left to close in the background", CLOSE_TIMEOUT_S)
        elif errors:
            log.warning("publisher: closing the Zenoh session failed: %s", errors[0])
        log.info("published %d frames (%d samples, %.1f MB, %d errors)", self.frames, self.samples, self.bytes / 1e6,
                 self.errors)

    abort = close


_STUCK_CLOSES: list[threading.Thread] = []


def exit_if_close_stuck(code: int) -> None:
    """End the process now (exit ``code``) if a Zenoh session is still closing in the background:
    zenoh's close waits ~10 s on a stuck peer and then raises, and a session still closing when the
    interpreter shuts down aborts the process. Called by the CLI after the outputs are written."""
    if any(t.is_alive() for t in _STUCK_CLOSES):
        import os
        import sys

        log.warning("exiting without waiting for the Zenoh session to close")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
