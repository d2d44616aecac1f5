"""Independent clients for the live-output tests: a plain Zenoh subscriber (no segfuse code on
the receiving side), a ``websockets`` client speaking Foxglove's WebSocket protocol
(subprotocol ``foxglove.sdk.v1``), and decoders that are not ours: ROS 2's own typesupport
(``rclpy.serialization``) for the types the ros-* wheels ship, ``mcap-ros2-support`` for the rest,
Google's protobuf runtime for Foxglove's own schemas."""
from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import threading
import time
from pathlib import Path

# types the ros-* wheels in the venv ship (ROS 2 typesupport decodes them)
RCLPY_PACKAGES = ("sensor_msgs", "std_msgs", "geometry_msgs", "visualization_msgs", "rosgraph_msgs",
                  "builtin_interfaces")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ZenohHeard:
    """A raw zenoh subscriber (advanced, with history, so latched samples come too) on ``key``,
    listening on ``listen``: (key expression, payload) per sample, in order."""

    def __init__(self, listen: list[str] | None = None, connect: list[str] | None = None, key: str = "0/**",
                 config: dict | None = None) -> None:
        import zenoh
        import zenoh.ext

        conf = zenoh.Config()
        conf.insert_json5("mode", '"peer"')
        conf.insert_json5("scouting/multicast/enabled", "false")
        conf.insert_json5("timestamping/enabled", "true")
        conf.insert_json5("listen/endpoints", json.dumps(listen or []))
        conf.insert_json5("connect/endpoints", json.dumps(connect or []))
        for k, v in (config or {}).items():
            conf.insert_json5(k, json.dumps(v))
        self.samples: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.session = zenoh.open(conf)
        self.sub = zenoh.ext.declare_advanced_subscriber(
            self.session, key, self._on, history=zenoh.ext.HistoryConfig(detect_late_publishers=True))

    def _on(self, sample) -> None:
        with self._lock:
            self.samples.append((str(sample.key_expr), sample.payload.to_bytes()))

    def by_topic(self) -> dict[str, tuple[str, list[bytes]]]:
        """{topic: (ROS type, [payload...])} from the rmw_zenoh key expressions."""
        out: dict[str, tuple[str, list[bytes]]] = {}
        with self._lock:
            for key, payload in self.samples:
                parts = key.split("/")
                pkg, kind, _, name = parts[-2].split("::")
                topic = "/" + "/".join(parts[1:-2])
                out.setdefault(topic, (f"{pkg}/{kind}/{name[:-1]}", []))[1].append(payload)
        return out

    def close(self) -> None:
        self.sub.undeclare()
        self.session.close()


class FoxgloveClient:
    """Connects (retrying) to ws://host:port with subprotocol foxglove.sdk.v1, subscribes to
    every advertised channel, and collects message data until the server closes, or, with
    ``freeze=True``, subscribes and then never reads again (a stuck viewer)."""

    def __init__(self, port: int, *, freeze: bool = False, timeout_s: float = 60.0, host: str = "127.0.0.1") -> None:
        self.port, self.freeze, self.timeout_s, self.host = port, freeze, timeout_s, host
        self.channels: dict[int, dict] = {}
        self.messages: list[tuple[int, int, bytes]] = []          # (channel id, log time, payload)
        self.subprotocol = None
        self.server_info: dict = {}
        self.subscribed = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()

    async def _main(self) -> None:
        import websockets

        try:
            deadline = time.monotonic() + self.timeout_s
            while True:
                try:
                    ws = await websockets.connect(f"ws://{self.host}:{self.port}", subprotocols=["foxglove.sdk.v1"],
                                                  max_size=None, max_queue=4 if self.freeze else 4096)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            self.subprotocol = ws.subprotocol
            sub_of: dict[int, int] = {}
            async with ws:
                while True:
                    m = await ws.recv()
                    if isinstance(m, str):
                        j = json.loads(m)
                        if j["op"] == "serverInfo":
                            self.server_info = j
                        elif j["op"] == "advertise":
                            subs = []
                            for c in j["channels"]:
                                self.channels[c["id"]] = c
                                sid = len(sub_of) + 1
                                sub_of[sid] = c["id"]
                                subs.append({"id": sid, "channelId": c["id"]})
                            await ws.send(json.dumps({"op": "subscribe", "subscriptions": subs}))
                            self.subscribed.set()
                            if self.freeze:
                                await asyncio.sleep(self.timeout_s)       # never read again
                                return
                    elif m[0] == 1:                                       # message data
                        sid, log_time = struct.unpack_from("<IQ", m, 1)
                        self.messages.append((sub_of[sid], log_time, bytes(m[13:])))
        except Exception as exc:
            from websockets.exceptions import ConnectionClosed

            if not isinstance(exc, ConnectionClosed):
                self.error = exc

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def by_topic(self) -> dict[str, tuple[dict, list[bytes]]]:
        out: dict[str, tuple[dict, list[bytes]]] = {}
        for cid, _, payload in self.messages:
            c = self.channels[cid]
            out.setdefault(c["topic"], (c, []))[1].append(payload)
        return out


# --- decoders that are not ours ---------------------------------------------------------------

def rclpy_class(msgtype: str):
    """The ROS 2 Python message class of ``msgtype`` when the wheels ship it, else None."""
    import importlib

    pkg, _, name = msgtype.split("/")
    if pkg not in RCLPY_PACKAGES:
        return None
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def decode_cdr(msgtype: str, msgdef: str, payload: bytes):
    """(decoder name, message): rclpy.serialization for shipped types, mcap-ros2-support otherwise."""
    cls = rclpy_class(msgtype)
    if cls is not None:
        from rclpy.serialization import deserialize_message

        return "rclpy", deserialize_message(payload, cls)
    from mcap.records import Schema
    from mcap_ros2.decoder import DecoderFactory

    decoder = DecoderFactory().decoder_for("cdr", Schema(id=1, name=msgtype, encoding="ros2msg",
                                                         data=msgdef.encode()))
    return "mcap_ros2", decoder(payload)


def decode_protobuf(channel: dict, payload: bytes):
    """A Foxglove-schema message with Google's protobuf runtime, from the channel's advertised
    FileDescriptorSet."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fds = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(channel["schema"]))
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(channel["schemaName"]))
    return cls.FromString(payload)


# --- a small sim drive and a run config with the given sinks, shared by the live-output tests ----

LIVE_FRAMES = 3


def live_drive(path: Path) -> Path:
    """A 3-frame, small-scale sim drive (seed 5) at ``path``, made once."""
    from pipeline.sim.simulate import simulate

    if not path.exists():
        simulate(path, frames=LIVE_FRAMES, seed=5, scale=0.3, progress=False, workers=1)
    return path


def run_config(tmp: Path, drive: Path, sinks: dict, **run) -> Path:
    """configs/demo.yaml on ``drive`` with oracle masks, no overlay, the given sinks and run keys."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    demo = yaml.safe_load((repo / "configs/demo.yaml").read_text())
    demo["input"]["uri"] = str(drive)
    demo["masks"] = "ground_truth"
    demo["sinks"]["overlay"]["enabled"] = False
    demo["sinks"].update(sinks)
    demo["out"] = str(tmp / "out")
    demo["run"]["progress"] = False
    demo["run"].update(run)
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(demo))
    return path
