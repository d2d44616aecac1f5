"""``segfuse listen`` on loopback, in this process: ``--record DIR`` writes a rosbag2 directory
(metadata.yaml + MCAP storage) that rosbags' AnyReader opens, with the published CDR bytes, ROS
type names and message definitions; ``--record X.mcap`` still writes one bare MCAP file; the
ROS graph (rmw_zenoh liveliness tokens) is shown and written to ``--json``."""
from __future__ import annotations

import argparse
import json
import socket
import threading

import numpy as np
import pytest

from pipeline.errors import ConfigError

FRAMES = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listen_args(argv: list[str]) -> argparse.Namespace:
    from pipeline.listen_cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["listen", *argv])


def publish_in_thread(ep: str, ready: threading.Event, sent: dict) -> threading.Thread:
    """A reliable publisher listening on ``ep``: FRAMES x (status, semantic mask, lane lines)."""
    from pipeline.sinks.publisher import (TOPIC_FRAME_STATUS, TOPIC_LANE_LINES, PublisherConfig, ZenohPublisher)
    from pipeline.sinks.recorder import semantic_topic

    def run() -> None:
        pub = ZenohPublisher(PublisherConfig(enabled=True, listen=[ep], qos="reliable"), None, None,
                             camera_id="camera_front", lidar_id="lidar_top")
        sent["tokens"] = {"node": pub.node_token, **pub.tokens}
        ready.set()
        try:
            assert pub.wait_for_subscribers(15)
            T = pub._ts.types
            for frame in range(FRAMES):
                stamp = 1_700_000_000_000_000_000 + frame * 100_000_000
                msgs = {
                    TOPIC_FRAME_STATUS: T["segfuse_msgs/msg/FrameStatus"](
                        header=pub._header(stamp, "camera_front_optical"), frame=frame, camera_seq=frame,
                        camera_stamp_ns=stamp, lidar_stamp_ns=-1, publish_stamp_ns=0, pipeline_latency_ms=1.5,
                        frames_dropped=0, lidar_missing=True, fused=False, ego_motion=False),
                    semantic_topic("camera_front"): pub._image(stamp, np.full((4, 6), frame, np.uint8), "mono8"),
                    TOPIC_LANE_LINES: pub._lane_lines(stamp, [])}
                for topic, msg in msgs.items():
                    payload = bytes(pub._ts.serialize_cdr(msg, pub.topics[topic]))
                    pub.put_cdr(topic, payload)
                    sent.setdefault(topic, []).append(payload)
        finally:
            # stay up until the listener has gone, so it sees the tokens while it runs
            done.wait(20)
            pub.close()

    done = threading.Event()
    sent["done"] = done
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def run_listener(tmp_path, record: str, capsys) -> tuple[dict, str]:
    from pipeline.listen_cli import listen

    ep = f"tcp/127.0.0.1:{free_port()}"
    ready, sent = threading.Event(), {}
    thread = publish_in_thread(ep, ready, sent)
    assert ready.wait(30)
    try:
        rc = listen(listen_args(["--connect", ep, "--count", str(3 * FRAMES), "--duration", "30",
                                 "--record", record, "--json", str(tmp_path / "heard.json")]))
    finally:
        sent["done"].set()
        thread.join(30)
    out = capsys.readouterr().out
    assert rc == 0 and f"segfuse listen: {3 * FRAMES} samples, 0 malformed" in out, out
    return sent, out


def test_listen_records_a_rosbag2_directory_anyreader_opens(tmp_path, capsys):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    bag = tmp_path / "heard_bag"
    sent, out = run_listener(tmp_path, str(bag), capsys)
    assert (bag / "metadata.yaml").is_file() and list(bag.glob("*.mcap"))
    got: dict[str, list[bytes]] = {}
    # an empty type store: every type (ours included) comes from the bag's message definitions
    with AnyReader([bag], default_typestore=get_typestore(Stores.EMPTY)) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        qos = [q for c in reader.connections for q in c.ext.offered_qos_profiles]
        for conn, _, raw in reader.messages():
            got.setdefault(conn.topic, []).append(bytes(raw))
        status = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                  if c.topic == "/segfuse/status"]
    assert types == {"/segfuse/status": "segfuse_msgs/msg/FrameStatus",
                     "/segfuse/camera_front/semantic": "sensor_msgs/msg/Image",
                     "/segfuse/lane_lines": "segfuse_msgs/msg/LaneLineArray"}
    for topic, payloads in got.items():
        assert payloads == sent[topic], topic          # byte for byte, in order
    assert [s.frame for s in status] == list(range(FRAMES)) and status[0].pipeline_latency_ms == 1.5
    # offered QoS from the publisher's liveliness token: reliable, volatile, keep all
    from rosbags.interfaces import QosDurability, QosHistory, QosReliability
    assert len(qos) == 3 and all((q.reliability, q.durability, q.history) == (QosReliability.RELIABLE,
                                 QosDurability.VOLATILE, QosHistory.KEEP_ALL) for q in qos)
    meta = (bag / "metadata.yaml").read_text()
    assert "storage_identifier: mcap" in meta and f"message_count: {3 * FRAMES}" in meta

    # the ROS graph as listen saw it: lines for people, and the JSON
    assert "+ node /segfuse" in out
    assert "+ publisher /segfuse/status [segfuse_msgs/msg/FrameStatus] reliable volatile keep_all" in out
    graph = json.loads((tmp_path / "heard.json").read_text())["graph"]
    assert graph["nodes"] == ["/segfuse"]
    pubs = {p["topic"]: p for p in graph["publishers"]}
    assert len(pubs) == len(sent["tokens"]) - 1 and pubs["/segfuse/camera_front/semantic"]["msgtype"] == "sensor_msgs/msg/Image"
    assert pubs["/segfuse/status"]["token"] == sent["tokens"]["/segfuse/status"]

    # a recording never overwrites one
    with pytest.raises(ConfigError, match="already exists"):
        from pipeline.listen_cli import make_recorder
        from pipeline.msgs import make_typestore

        make_recorder(str(bag), make_typestore())


def test_listen_still_writes_a_bare_mcap_file_for_a_dot_mcap_path(tmp_path, capsys):
    from mcap.reader import make_reader

    sent, _ = run_listener(tmp_path, str(tmp_path / "heard.mcap"), capsys)
    got: dict[str, list[bytes]] = {}
    with open(tmp_path / "heard.mcap", "rb") as f:
        for schema, channel, message in make_reader(f).iter_messages():
            assert schema.encoding == "ros2msg" and channel.message_encoding == "cdr"
            got.setdefault(channel.topic, []).append(bytes(message.data))
    assert got == {k: v for k, v in sent.items() if k.startswith("/segfuse/")}
