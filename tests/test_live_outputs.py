"""Live outputs (issue 20): one output schema on every sink, checked from the outside.

``segfuse run`` with the recorder, Zenoh and the Foxglove live view all on; an independent Zenoh
subscriber and a ``websockets`` client speaking ``foxglove.sdk.v1`` listen. Every sink must carry
the same topics with the same types, every message must decode with decoders that are not ours
(ROS 2's own typesupport through rclpy, mcap-ros2-support, protobuf), and TF must connect every
frame a message uses to base_link.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from live_clients import LIVE_FRAMES, FoxgloveClient, ZenohHeard, decode_cdr, decode_protobuf, free_port, live_drive, run_config

REPO = Path(__file__).resolve().parents[1]
SEGFUSE = [sys.executable, "-m", "pipeline.cli"]
FRAMES = LIVE_FRAMES


@pytest.fixture(scope="module")
def drive(tmp_path_factory) -> Path:
    return live_drive(tmp_path_factory.mktemp("livedrive") / "drive")


def read_recording(path: Path) -> dict[str, tuple[str, str, list[bytes]]]:
    """{topic: (type, message definition, [payload...])}, read with the mcap library."""
    from mcap.reader import make_reader

    out: dict[str, tuple[str, str, list[bytes]]] = {}
    (mcap,) = sorted(path.glob("*.mcap"))
    with open(mcap, "rb") as f:
        for schema, channel, message in make_reader(f).iter_messages():
            out.setdefault(channel.topic, (schema.name, schema.data.decode(), []))[2].append(bytes(message.data))
    return out


def frames_used(msg, acc: set[str]) -> None:
    """Every header.frame_id in a decoded message (any decoder), recursively."""
    if hasattr(msg, "frame_id") and isinstance(getattr(msg, "frame_id"), str) and hasattr(msg, "stamp"):
        if msg.frame_id:
            acc.add(msg.frame_id)
    for name in (getattr(msg, "__slots__", None) or list(getattr(msg, "__dict__", {}))):
        v = getattr(msg, name.lstrip("_"), None) if isinstance(name, str) else None
        if isinstance(v, (list, tuple)):
            for x in v:
                if hasattr(x, "__slots__") or hasattr(x, "__dict__"):
                    frames_used(x, acc)
        elif v is not None and (hasattr(v, "__slots__") or hasattr(v, "__dict__")) and not isinstance(v, (str, bytes)):
            frames_used(v, acc)


def tf_edges(msgs) -> dict[str, str]:
    """child -> parent from decoded TFMessages."""
    return {t.child_frame_id: t.header.frame_id for m in msgs for t in m.transforms}


def reaches_base(frame: str, parent: dict[str, str]) -> bool:
    """True when ``frame`` and base_link are in one TF tree (either is an ancestor of the other)."""
    def chain(f: str) -> list[str]:
        out = [f]
        while out[-1] in parent and len(out) < 20:
            out.append(parent[out[-1]])
        return out

    return "base_link" in chain(frame) or frame in chain("base_link")


@pytest.mark.slow
def test_recorder_zenoh_and_live_view_carry_one_schema_that_real_decoders_read(drive, tmp_path):
    from pipeline.sinks.schema import LIVE_VIEW_EXTRAS, topics_for

    zport, wport = free_port(), free_port()
    heard = ZenohHeard(listen=[f"tcp/127.0.0.1:{zport}"])
    fox = FoxgloveClient(wport, timeout_s=90)
    try:
        cfg = run_config(tmp_path, drive, {
            "publisher": {"enabled": True, "connect": [f"tcp/127.0.0.1:{zport}"], "qos": "reliable",
                          "wait_subscribers_s": 15},
            "liveview": {"enabled": True, "port": wport, "wait_clients_s": 30, "queue_frames": 16,
                         "max_rate_hz": 0}})
        run = subprocess.run(SEGFUSE + ["run", str(cfg), "--no-progress"], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
        assert f"live view listening on ws://127.0.0.1:{wport}" in run.stderr
        fox.join(30)
        import time
        time.sleep(0.5)                                  # the last Zenoh samples in flight
    finally:
        heard.close()
    assert fox.error is None, fox.error
    assert fox.subprotocol == "foxglove.sdk.v1"

    recorded = read_recording(tmp_path / "out" / "recording")
    zenoh = heard.by_topic()
    live = fox.by_topic()
    expected = topics_for("camera_front", has_poses=True, replay=True)
    extras = {t.topic("camera_front"): t.msgtype for t in LIVE_VIEW_EXTRAS}

    # --- one set of topics and types in all three ---------------------------------------------
    want = {t: s.msgtype for t, s in expected.items()}
    assert {t: v[0] for t, v in recorded.items()} == want
    assert {t: v[0] for t, v in zenoh.items()} == want
    live_ros = {t: c["schemaName"] for t, (c, _) in live.items() if c["encoding"] == "cdr"}
    assert live_ros == want
    assert {t: c["schemaName"] for t, (c, _) in live.items() if c["encoding"] != "cdr"} == extras
    for t, (c, _) in live.items():
        assert c["schemaEncoding"] == ("ros2msg" if c["encoding"] == "cdr" else "protobuf"), t

    # --- the same messages: per-frame topics once per frame, latched once; same bytes ----------
    for topic, (msgtype, _, payloads) in recorded.items():
        n = 1 if expected[topic].qos == "latched" else FRAMES
        assert len(payloads) == n, topic
        assert len(zenoh[topic][1]) == n, topic
        assert len(live[topic][1]) >= n, topic               # latched ones are re-sent on subscribe
        if topic not in ("/segfuse/status", "/segfuse/run_info"):     # status: live sinks add wall-clock fields
            assert zenoh[topic][1] == payloads, topic
            assert live[topic][1][-n:] == payloads, topic

    # --- every message decodes with decoders that are not ours ---------------------------------
    by_decoder: dict[str, set[str]] = {"rclpy": set(), "mcap_ros2": set()}
    decoded: dict[str, list] = {}
    for topic, (msgtype, msgdef, payloads) in recorded.items():
        for source in (payloads, zenoh[topic][1], live[topic][1]):
            for p in source:
                name, msg = decode_cdr(msgtype, msgdef, p)
                by_decoder[name].add(msgtype)
                if source is zenoh[topic][1]:
                    decoded.setdefault(topic, []).append(msg)
    assert {"sensor_msgs/msg/PointCloud2", "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo",
            "visualization_msgs/msg/MarkerArray", "std_msgs/msg/String", "rosgraph_msgs/msg/Clock"} <= \
        by_decoder["rclpy"]
    assert by_decoder["mcap_ros2"] == {"tf2_msgs/msg/TFMessage", "vision_msgs/msg/Detection3DArray",
                                       "segfuse_msgs/msg/LaneBoundaryArray", "segfuse_msgs/msg/LaneLineArray",
                                       "segfuse_msgs/msg/FrameStatus"}
    cloud = decoded["/segfuse/points"][0]
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "intensity", "class_id", "flags", "instance_id", "score"]
    assert cloud.width > 1000
    status = decoded["/segfuse/status"]
    assert [s.frame for s in status] == list(range(FRAMES))
    assert all(s.publish_stamp_ns > 0 and s.pipeline_latency_ms > 0 and s.fused for s in status)
    clock = decoded["/clock"]
    assert [c.clock.sec * 10**9 + c.clock.nanosec for c in clock] == [s.camera_stamp_ns for s in status]
    for topic, (c, payloads) in live.items():
        if c["encoding"] == "protobuf":
            for p in payloads:
                decode_protobuf(c, p)
    pc = decode_protobuf(live["/live/points"][0], live["/live/points"][1][0])
    assert pc.point_stride == 16 and len(pc.data) == 16 * cloud.width
    scene = decode_protobuf(live["/live/scene"][0], live["/live/scene"][1][0])
    assert len(scene.entities) == len(decoded["/segfuse/objects"][0].detections) + \
        len(decoded["/segfuse/lane_lines"][0].lines)

    # --- TF connects every frame used by every message to base_link ----------------------------
    parent = tf_edges(decoded["/tf_static"] + decoded["/tf"])
    used: set[str] = set()
    for topic, msgs in decoded.items():
        for m in msgs:
            frames_used(m, used)
    assert {"base_link", "world", "camera_front_optical", "lidar_top"} <= used | {"base_link"}, used
    for frame in used:
        assert reaches_base(frame, parent), (frame, parent)
    fox_tf = decode_protobuf(live["/live/transforms"][0], live["/live/transforms"][1][0])
    assert {(t.parent_frame_id, t.child_frame_id) for t in fox_tf.transforms} == \
        {(p, c) for c, p in parent.items()}


@pytest.mark.slow
def test_a_frozen_viewer_never_stalls_the_pipeline_and_its_drops_are_counted(drive, tmp_path):
    """A viewer that subscribes to everything and then never reads: the SDK's per-client outbox
    (backlog 4 messages) overflows and drops, the live view still sends every frame the graph's
    lossy-sink queue gives it, the run finishes and records everything. (The throughput against a run without a
    viewer is measured side by side in ``python -m benchmarks publish``, not asserted here.)"""
    import json

    port = free_port()
    frozen = FoxgloveClient(port, freeze=True, timeout_s=120)
    cfg = run_config(tmp_path, drive, {"liveview": {"enabled": True, "port": port, "wait_clients_s": 30,
                                                    "backlog": 4, "queue_frames": 1, "max_rate_hz": 0}})
    run = subprocess.run(SEGFUSE + ["run", str(cfg), "--no-progress"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert frozen.subscribed.is_set() and frozen.error is None
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    lv = s["liveview"]
    assert s["frames"]["done"] == s["frames"]["recorded"] == FRAMES
    # the graph's lossy-sink queue drops what the live view has no time for (counted); what reaches
    # the live view is all sent (max_rate_hz 0)
    assert lv["frames"] + lv["dropped"] == FRAMES and lv["sent"] == lv["frames"] and lv["errors"] == 0
    assert lv["skipped_rate"] == 0
    assert lv["client_backlog_full"] >= 1                   # the frozen client's outbox overflowed, counted
    assert "outbox for client" in run.stderr and "client backlog overflows" in run.stderr
