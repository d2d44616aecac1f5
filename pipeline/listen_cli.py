"""``segfuse listen``: subscribe to segfuse's Zenoh topics, show what arrives, optionally record it.

The live table (every second): per topic the count, the rate, the latency from the sensor
stamp (header) and from the publisher's put (attachment source timestamp), and the mean size.
The ROS graph of the domain is followed through rmw_zenoh's liveliness tokens (``@ros2_lv/...``,
pipeline.zenoh_keys): nodes and publishers are shown as they come and go, with their ROS topic
names, types and QoS.

``--record DIR`` writes a rosbag2 directory (metadata.yaml + MCAP storage, written by rosbags'
rosbag2 Writer: the raw CDR payloads as they came, with their ROS type names and message
definitions; timestamps are the receive times, as ``ros2 bag record`` writes them), which
``ros2 bag`` and rosbags' AnyReader open; ``--record OUT.mcap`` (a path ending in .mcap) writes
one bare MCAP file instead (log time = header stamp), for Foxglove. ``--json FILE`` writes, at
exit, per topic the key expression, counts and every attachment (sequence number, source
timestamp, GID), and the graph seen. Samples are queued without bound, so the recording loses
nothing; malformed samples are reported and skipped.
"""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("listen", help="subscribe to a run's Zenoh topics: live table, MCAP recording",
                       description="Subscribe to segfuse's topics over Zenoh (rmw_zenoh key layout, CDR).")
    p.add_argument("--topic", action="append", default=[],
                   help="topic to show, e.g. /segfuse/points (repeatable; default: every topic of the domain)")
    p.add_argument("--record", metavar="PATH",
                   help="record the samples to a new rosbag2 directory (MCAP storage); a PATH ending in "
                        ".mcap writes one bare MCAP file instead")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --record PATH")
    p.add_argument("--connect", action="append", default=[], help="Zenoh endpoint to connect to (repeatable)")
    p.add_argument("--listen", action="append", default=[], help="Zenoh endpoint to listen on (repeatable)")
    p.add_argument("--mode", default="peer", choices=["peer", "client"], help="Zenoh mode (default peer)")
    p.add_argument("--config", help="a Zenoh JSON5 config file (the options above override it)")
    p.add_argument("--shared-memory", action="store_true",
                   help="enable Zenoh shared memory (same-machine publishers with shared_memory: true)")
    p.add_argument("--domain-id", type=int, default=0, help="ROS domain id (default 0)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0: until Ctrl-C)")
    p.add_argument("--idle", type=float, default=0.0,
                   help="stop once nothing arrived for S seconds after the first sample (0: never)")
    p.add_argument("--count", type=int, default=0, help="stop after N samples (0: no limit)")
    p.add_argument("--json", help="write the per-topic counts and attachments to this JSON file at exit")
    p.add_argument("--quiet", action="store_true", help="no live table")
    p.set_defaults(func=listen)


class McapSink:
    """Raw CDR samples into one MCAP file (ros2msg schemas from our type store)."""

    def __init__(self, path: str, typestore) -> None:
        from mcap.writer import Writer

        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "wb")
        self._w = Writer(self._f)
        self._w.start(profile="ros2", library="segfuse listen")
        self._ts = typestore
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}

    def write(self, topic: str, msgtype: str, log_ns: int, payload: bytes) -> None:
        cid = self._channels.get(topic)
        if cid is None:
            sid = self._schemas.get(msgtype)
            if sid is None:
                text, _ = self._ts.generate_msgdef(msgtype, ros_version=2)
                sid = self._w.register_schema(name=msgtype, encoding="ros2msg", data=text.encode())
                self._schemas[msgtype] = sid
            cid = self._w.register_channel(topic=topic, message_encoding="cdr", schema_id=sid)
            self._channels[topic] = cid
        self._w.add_message(channel_id=cid, log_time=int(log_ns), data=payload, publish_time=int(log_ns))

    def close(self) -> None:
        self._w.finish()
        self._f.close()


class Rosbag2Sink:
    """Raw CDR samples into a new rosbag2 directory (rosbags' Writer, MCAP storage, metadata.yaml)."""

    def __init__(self, path: str, typestore) -> None:
        from pathlib import Path

        from rosbags.rosbag2 import StoragePlugin, Writer

        from pipeline.errors import ConfigError

        target = Path(path)
        if target.exists():
            raise ConfigError("already exists: a rosbag2 recording is a new directory", path=path, field="--record")
        target.parent.mkdir(parents=True, exist_ok=True)
        self._w = Writer(target, version=8, storage_plugin=StoragePlugin.MCAP)
        self._w.open()
        from pipeline.mcap_io import configure_chunks

        configure_chunks(self._w, "none")          # each chunk's CRC-32
        self._ts = typestore
        self._conns: dict[str, object] = {}

    def write(self, topic: str, msgtype: str, log_ns: int, payload: bytes, qos: list | tuple = ()) -> None:
        """``qos``: the publishers' announced QoS (zenoh_keys.RosQos), for offered_qos_profiles."""
        conn = self._conns.get(topic)
        if conn is None:
            conn = self._conns[topic] = self._w.add_connection(topic, msgtype, typestore=self._ts,
                                                               offered_qos_profiles=[rosbags_qos(q) for q in qos])
        self._w.write(conn, int(log_ns), payload)

    def close(self) -> None:
        self._w.close()


def rosbags_qos(q):
    """A zenoh_keys.RosQos as rosbags' Qos (the enum values are rmw/types.h's in both)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    def dur(d):
        return QosTime(9223372036, 854775807) if d is None else QosTime(int(d[0]), int(d[1]))

    return Qos(QosHistory(q.history), int(q.depth), QosReliability(q.reliability), QosDurability(q.durability),
               dur(q.deadline), dur(q.lifespan), QosLiveliness(q.liveliness), dur(q.liveliness_lease), False)


def make_recorder(path: str, typestore, *, overwrite: bool = False):
    """``path``.mcap: one bare MCAP file; anything else: a rosbag2 directory. An existing ``path``
    is refused unless ``overwrite`` (then removed, with a warning)."""
    import shutil
    from pathlib import Path

    from pipeline.errors import ConfigError

    target = Path(path)
    if target.exists():
        if not overwrite:
            raise ConfigError("already exists: refusing to overwrite it (--overwrite)", path=path, field="--record")
        log.warning("--overwrite: replacing %s", target)
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return McapSink(path, typestore) if str(path).endswith(".mcap") else Rosbag2Sink(path, typestore)


class GraphView:
    """The domain's ROS graph from rmw_zenoh liveliness tokens: nodes and message publishers."""

    def __init__(self) -> None:
        self.alive: dict[str, object] = {}        # key expression -> GraphEntity
        self.seen: dict[str, object] = {}

    def update(self, sign: str, key: str) -> str | None:
        """Apply one token event; a line for people (nodes and publishers), or None."""
        from pipeline.zenoh_keys import parse_liveliness_token

        try:
            ent = parse_liveliness_token(key)
        except Exception as exc:                   # another rmw_zenoh version's layout
            log.debug("ignored liveliness token %s: %s", key, exc)
            return None
        if sign == "+":
            self.alive[key] = self.seen[key] = ent
        else:
            self.alive.pop(key, None)
        if ent.kind == "NN":
            return f"{sign} node {ent.node}"
        if ent.kind == "MP":
            return f"{sign} publisher {ent.topic} [{ent.msgtype}] {ent.qos.describe()} (node {ent.node})"
        return None

    def publisher_qos(self, topic: str) -> list:
        """The QoS of the live publishers of ``topic`` (one per distinct QoS)."""
        out = []
        for e in self.alive.values():
            if e.kind == "MP" and e.topic == topic and e.qos not in out:
                out.append(e.qos)
        return out

    def to_json(self) -> dict:
        nodes = sorted({e.node for e in self.seen.values()})
        pubs = [{"topic": e.topic, "msgtype": e.msgtype, "type_hash": e.type_hash, "qos": e.qos.describe(),
                 "node": e.node, "zid": e.zid, "entity_id": e.entity_id, "alive": k in self.alive, "token": k}
                for k, e in sorted(self.seen.items()) if e.kind == "MP"]
        return {"nodes": nodes, "publishers": pubs}


def declare_history_subscriber(session, key: str, callback):
    """A Zenoh advanced subscriber that also asks late for the cached (latched) samples of
    publishers that come up after it (``/tf_static``, run info; rmw_zenoh's transient local)."""
    import zenoh.ext

    return zenoh.ext.declare_advanced_subscriber(
        session, key, callback, history=zenoh.ext.HistoryConfig(detect_late_publishers=True, max_samples=1))


def schema_lines(heard: dict) -> list[str]:
    """The output schema (pipeline.sinks.schema) against what was heard: one line per topic."""
    import re

    from pipeline.sinks.schema import TOPICS

    lines = []
    for spec in TOPICS:
        pat = re.compile("^" + re.escape(spec.name).replace(re.escape("{cam}"), "[^/]+") + "$")
        got = sorted(t for t in heard if pat.match(t))
        types = {heard[t]["msgtype"] for t in got}
        mark = "ok" if got and types == {spec.msgtype} else ("TYPE " + ",".join(sorted(types)) if got else "-")
        lines.append(f"  {spec.name:<30} {spec.msgtype:<36} {mark:<4} {', '.join(got) if got else '(' + spec.when + ')'}")
    return lines


def listen(args: argparse.Namespace) -> int:
    import json
    import queue
    import signal
    import sys
    import threading
    import time

    import zenoh

    from pipeline.errors import ConfigError
    from pipeline.planner_api import SampleDecoder
    from pipeline.zenoh_keys import zenoh_config
    from pipeline.zenoh_keys import liveliness_selector

    for ep in args.connect + args.listen:
        if "/" not in ep:
            raise ConfigError(f"a Zenoh endpoint like tcp/127.0.0.1:7447, got {ep!r}", field="--connect/--listen")
    decoder = SampleDecoder()
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    conf = zenoh_config(mode=args.mode, connect=args.connect, listen=args.listen, config_file=args.config,
                        shared_memory=args.shared_memory, field_prefix="--")
    try:
        session = zenoh.open(conf)
    except Exception as exc:                       # zenoh's ZError: a bad or busy endpoint
        raise ConfigError(f"cannot open a Zenoh session: {exc}", field="--connect/--listen") from exc

    def on_sample(sample) -> None:                 # zenoh's thread: copy out, decode on ours
        att = sample.attachment
        inbox.put((str(sample.key_expr), sample.payload.to_bytes(), None if att is None else att.to_bytes(),
                   time.time_ns()))

    tokens: queue.SimpleQueue = queue.SimpleQueue()

    def on_token(sample) -> None:                  # zenoh's thread: the graph is kept on ours
        tokens.put(("+" if sample.kind == zenoh.SampleKind.PUT else "-", str(sample.key_expr)))

    graph = GraphView()
    sub = lv_sub = sink = None
    try:
        sink = make_recorder(args.record, decoder.ts, overwrite=args.overwrite) if args.record else None
        lv_sub = session.liveliness().declare_subscriber(liveliness_selector(args.domain_id), on_token, history=True)
        sub = declare_history_subscriber(session, f"{args.domain_id}/**", on_sample)
    except BaseException:
        for h in (lv_sub, sub):
            if h is not None:
                h.undeclare()
        if sink is not None:
            sink.close()
        session.close()
        raise
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    stats: dict[str, dict] = {}
    malformed: list[str] = []
    total = 0
    t0 = last_rx = time.monotonic()
    last_table = t0
    sys.stdout.write(f"segfuse listen: ready on domain {args.domain_id} "
                     f"(connect {args.connect or '-'}, listen {args.listen or '-'})\n")
    sys.stdout.flush()
    try:
        while not stop.is_set():
            now = time.monotonic()
            if args.duration and now - t0 >= args.duration:
                break
            if args.idle and total and now - last_rx >= args.idle:
                break
            if args.count and total >= args.count:
                break
            while not tokens.empty():
                line = graph.update(*tokens.get_nowait())
                if line is not None and not args.quiet:
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
            if not args.quiet and now - last_table >= 1.0:
                sys.stdout.write(_table(stats, now) + "\n")
                sys.stdout.flush()
                last_table = now
            try:
                key, payload, att, rx_ns = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            last_rx = time.monotonic()
            try:
                d = decoder.decode(key, payload, att, numpy=False)
            except Exception as exc:
                malformed.append(f"{key}: {exc}")
                log.warning("skipped a malformed sample on %s: %s", key, exc)
                continue
            if args.topic and d.topic not in args.topic:
                continue
            total += 1
            s = stats.setdefault(d.topic, {"key": key, "msgtype": d.msgtype, "count": 0, "bytes": 0, "first": last_rx,
                                           "sensor_lat_ms": 0.0, "put_lat_ms": 0.0, "attachments": []})
            s["count"] += 1
            s["bytes"] += d.size
            s["last"] = last_rx
            s["sensor_lat_ms"] = (rx_ns - d.stamp_ns) / 1e6
            s["put_lat_ms"] = (rx_ns - d.source_timestamp_ns) / 1e6
            s["attachments"].append([d.sequence_number, d.source_timestamp_ns, att[17:33].hex()])
            if isinstance(sink, Rosbag2Sink):
                sink.write(d.topic, d.msgtype, rx_ns, payload, graph.publisher_qos(d.topic))
            elif sink is not None:
                sink.write(d.topic, d.msgtype, d.stamp_ns, payload)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        sub.undeclare()
        lv_sub.undeclare()
        session.close()
        if sink is not None:
            sink.close()
    while not tokens.empty():                      # what came in while closing
        line = graph.update(*tokens.get_nowait())
        if line is not None and not args.quiet:
            sys.stdout.write(line + "\n")
    if not args.quiet:
        sys.stdout.write(_table(stats, time.monotonic()) + "\n")
        sys.stdout.write("output schema (docs/publishing.md): topic, type, heard\n" + "\n".join(schema_lines(stats))
                         + "\n")
    sys.stdout.write(f"segfuse listen: {total} samples, {len(malformed)} malformed"
                     + (f", recorded to {args.record}" if args.record else "") + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"total": total, "malformed": malformed,
                       "topics": {k: {kk: vv for kk, vv in v.items() if kk not in ("first", "last")}
                                  for k, v in stats.items()},
                       "graph": graph.to_json()}, f, indent=1)
    return 0


def _table(stats: dict, now: float) -> str:
    lines = [f"{'topic':<34}{'count':>7}{'rate Hz':>9}{'lat sensor ms':>15}{'lat put ms':>12}{'size kB':>10}"]
    for topic, s in sorted(stats.items()):
        span = s.get("last", now) - s["first"]
        rate = (s["count"] - 1) / span if s["count"] > 1 and span > 0 else 0.0
        lines.append(f"{topic:<34}{s['count']:>7}{rate:>9.1f}{s['sensor_lat_ms']:>15.1f}{s['put_lat_ms']:>12.2f}"
                     f"{s['bytes'] / max(s['count'], 1) / 1e3:>10.1f}")
    return "\n".join(lines)
