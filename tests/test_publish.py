"""Publishing over Zenoh (issue 7): rmw_zenoh key expressions and attachments, RIHS01 type
hashes, and the pipeline publishing on loopback to `segfuse listen` in another process.

Reference for the layout: ros2/rmw_zenoh docs/design.md, "Topic and Service name mapping to
Zenoh key expressions" (``<domain_id>/<fully_qualified_name>/<type_name>/<type_hash>``, with the
``chatter`` examples checked below) and "Publishers" (attachment: int64 LE sequence number,
int64 LE source timestamp, 1 byte GID length = 16, 16 bytes GID).
"""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ConfigError, InputDataError

REPO = Path(__file__).resolve().parents[1]
SEGFUSE = [sys.executable, "-m", "pipeline.cli"]
STRING_HASH = "RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- key expressions, attachments, type hashes ----------------------------------------------

def test_key_expressions_match_the_rmw_zenoh_design_examples():
    from pipeline.zenoh_keys import dds_type_name, parse_topic_key, topic_key

    assert dds_type_name("sensor_msgs/msg/PointCloud2") == "sensor_msgs::msg::dds_::PointCloud2_"
    # design.md: `chatter` topic, ROS_DOMAIN_ID=0, and with the /robot1 namespace
    assert topic_key(0, "/chatter", "std_msgs/msg/String", STRING_HASH) == \
        "0/chatter/std_msgs::msg::dds_::String_/" + STRING_HASH
    assert topic_key(0, "/robot1/chatter", "std_msgs/msg/String", STRING_HASH) == \
        "0/robot1/chatter/std_msgs::msg::dds_::String_/" + STRING_HASH
    assert parse_topic_key("7/segfuse/camera_front/semantic/sensor_msgs::msg::dds_::Image_/RIHS01_ab") == \
        (7, "/segfuse/camera_front/semantic", "sensor_msgs/msg/Image", "RIHS01_ab")
    for bad in ("chatter", "/a//b", "/a/"):
        with pytest.raises(InputDataError):
            topic_key(0, bad, "std_msgs/msg/String", STRING_HASH)
    with pytest.raises(InputDataError):
        parse_topic_key("segfuse/points")


def test_attachment_is_the_33_byte_rmw_zenoh_layout():
    from pipeline.zenoh_keys import decode_attachment, encode_attachment

    gid = bytes(range(16))
    att = encode_attachment(42, 1_700_000_000_123_456_789, gid)
    assert len(att) == 33
    assert struct.unpack("<q", att[:8])[0] == 42 and struct.unpack("<q", att[8:16])[0] == 1_700_000_000_123_456_789
    assert att[16] == 16 and att[17:] == gid
    assert decode_attachment(att) == (42, 1_700_000_000_123_456_789, gid)
    for bad in (None, att[:-1], att[:16] + b"\x08" + att[17:]):
        with pytest.raises(InputDataError):
            decode_attachment(bad)


def test_rihs01_hashes_equal_the_published_ros2_hashes():
    from pipeline.msgs import make_typestore
    from pipeline.zenoh_keys import type_hash

    ts = make_typestore()
    # std_msgs/String: rmw_zenoh docs/design.md examples; Time and Point: rosidl-generated
    # *__description.c EXPECTED_HASH tables of ROS 2 builds
    assert type_hash(ts, "std_msgs/msg/String") == STRING_HASH
    assert type_hash(ts, "builtin_interfaces/msg/Time") == \
        "RIHS01_b106235e25a4c5ed35098aa0a61a3ee9c9b18d197f398b0e4206cea9acf9c197"
    assert type_hash(ts, "geometry_msgs/msg/Point") == \
        "RIHS01_6963084842a9b04494d6b2941d11444708d892da2f4b09843b9c43f42a7f6881"
    assert type_hash(ts, "geometry_msgs/msg/Vector3").startswith(
        "RIHS01_cc12fe83e4c02719f1ce8070bfd14aecd40f75a96696a6")
    # our own messages hash from their .msg files: distinct, and they change when a field does
    ours = {t: type_hash(ts, t) for t in ("segfuse_msgs/msg/LaneLine", "segfuse_msgs/msg/LaneLineArray",
                                          "segfuse_msgs/msg/FrameStatus")}
    assert len(set(ours.values())) == 3
    from rosbags.typesys import get_types_from_msg

    text = (REPO / "pipeline/msgs/segfuse_msgs/msg/LaneLine.msg").read_text().replace("float32 confidence",
                                                                                        "float64 confidence")
    ts2 = make_typestore()
    ts2.fielddefs.pop("segfuse_msgs/msg/LaneLine")
    ts2.register(get_types_from_msg(text, "segfuse_msgs/msg/LaneLine"))
    assert type_hash(ts2, "segfuse_msgs/msg/LaneLine") != ours["segfuse_msgs/msg/LaneLine"]


def test_publisher_config_is_off_by_default_and_errors_name_the_key(tmp_path):
    from pipeline.run_config import parse_run_config
    from pipeline.sinks.publisher import publisher_config_from_dict

    assert parse_run_config({"masks": "ground_truth"}).sinks.publisher.enabled is False
    cfg = publisher_config_from_dict({"enabled": True, "connect": ["tcp/127.0.0.1:7447"], "qos": "reliable"})
    assert cfg.mode == "peer" and cfg.qos == "reliable" and cfg.shared_memory is False
    for bad, key in (({"mode": "broker"}, "mode"), ({"qos": "fast"}, "qos"), ({"connect": ["localhost"]}, "connect"),
                     ({"domain_id": 999}, "domain_id"), ({"bogus": 1}, "bogus")):
        with pytest.raises(ConfigError) as e:
            parse_run_config({"masks": "ground_truth", "sinks": {"publisher": bad}}, tmp_path / "run.yaml")
        assert f"sinks.publisher.{key}" in str(e.value)


# --- the pipeline publishing, a subscriber in another process ----------------------------------

@pytest.fixture(scope="module")
def drive(tmp_path_factory) -> Path:
    from pipeline.sim.simulate import simulate

    path = tmp_path_factory.mktemp("pubdrive") / "drive"
    simulate(path, frames=3, seed=5, scale=0.3, progress=False, workers=1)
    return path


def run_config(tmp: Path, drive: Path, publisher: dict) -> Path:
    import yaml

    demo = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    demo["input"]["uri"] = str(drive)
    demo["masks"] = "ground_truth"            # publishing mechanics on the oracle masks (small drive)
    demo["sinks"]["overlay"]["enabled"] = False
    demo["sinks"]["publisher"] = publisher
    demo["out"] = str(tmp / "out")
    demo["run"]["progress"] = False
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(demo))
    return path


def start_listener(args: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(SEGFUSE + ["listen", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    line = proc.stdout.readline()
    assert "ready" in line, line
    return proc


def schema_counts(frames: int = 3) -> tuple[dict[str, str], int]:
    """The run's topics ({topic: type}) and how many samples it puts for ``frames`` fused frames."""
    from pipeline.sinks.schema import topics_for

    topics = topics_for("camera_front", has_poses=True, replay=True)
    return ({t: s.msgtype for t, s in topics.items()},
            sum(1 if s.qos == "latched" else frames for s in topics.values()))


def test_pipeline_publishes_every_result_to_a_listener_in_another_process(drive, tmp_path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from pipeline.msgs import make_typestore, register_msgs
    from pipeline.zenoh_keys import topic_key, type_hash

    want_topics, count = schema_counts()
    ep = f"tcp/127.0.0.1:{free_port()}"
    # --count: every sample of 3 frames (the drive pairs every frame with its sweep)
    listener = start_listener(["--listen", ep, "--count", str(count), "--idle", "15", "--duration", "60",
                               "--record", str(tmp_path / "heard_bag"), "--json", str(tmp_path / "heard.json")])
    try:
        cfg = run_config(tmp_path, drive, {"enabled": True, "connect": [ep], "qos": "reliable",
                                           "wait_subscribers_s": 10})
        run = subprocess.run(SEGFUSE + ["run", str(cfg), "--no-progress"], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr[-2000:]
        out, _ = listener.communicate(timeout=75)
    finally:
        if listener.poll() is None:
            listener.kill()
    assert listener.returncode == 0, out
    assert "0 malformed" in out
    # the listener shows the output schema, every topic heard with its type
    assert "output schema (docs/publishing.md)" in out
    for topic, msgtype in want_topics.items():
        assert any(msgtype in line and " ok " in line for line in out.splitlines()), (topic, out[-3000:])

    ts = make_typestore()

    def read_bag(path):
        msgs: dict[str, list[bytes]] = {}
        with AnyReader([path], default_typestore=ts) as reader:
            types = {c.topic: c.msgtype for c in reader.connections}
            for conn, _, raw in reader.messages():
                msgs.setdefault(conn.topic, []).append(bytes(raw))
        return types, msgs

    # segfuse listen's rosbag2 has the run's own recording's topics and types
    rec_types, recorded = read_bag(tmp_path / "out" / "recording")
    heard_types, heard_raw = read_bag(tmp_path / "heard_bag")
    assert heard_types == rec_types == want_topics
    heard = {t: [(heard_types[t], p) for p in ps] for t, ps in heard_raw.items()}
    for topic in want_topics:         # reliable mode: every message, byte for byte what the recorder wrote
        if topic in ("/segfuse/status", "/segfuse/run_info"):
            continue                  # status: the live sinks add wall-clock fields
        assert [p for _, p in heard[topic]] == recorded[topic], topic

    # the payloads deserialise with rosbags' own Humble type store (plus our .msg files) to exactly what was put
    plain = get_typestore(Stores.ROS2_HUMBLE)
    register_msgs(plain)
    for topic, samples in heard.items():
        for msgtype, payload in samples:
            msg = plain.deserialize_cdr(payload, msgtype)
            assert bytes(plain.serialize_cdr(msg, msgtype)) == payload
    cloud = plain.deserialize_cdr(heard["/segfuse/points"][0][1], "sensor_msgs/msg/PointCloud2")
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "intensity", "class_id", "flags", "instance_id", "score"]
    img = plain.deserialize_cdr(heard["/segfuse/camera_front/instance"][0][1], "sensor_msgs/msg/Image")
    assert img.encoding == "mono16" and img.step == 2 * img.width

    # lane lines: the cubics give the recorder's sampled boundaries
    for (_, lp), rp in zip(heard["/segfuse/lane_lines"], recorded["/segfuse/lanes"]):
        lines = plain.deserialize_cdr(lp, "segfuse_msgs/msg/LaneLineArray").lines
        bounds = ts.deserialize_cdr(rp, "segfuse_msgs/msg/LaneBoundaryArray").boundaries
        assert len(lines) == len(bounds)
        for line, b in zip(lines, bounds):
            pts = np.array([[p.x, p.y] for p in b.points])
            assert line.x_min_m == pytest.approx(pts[0, 0]) and line.x_max_m == pytest.approx(pts[-1, 0])
            np.testing.assert_allclose(np.polyval(line.coefficients[::-1], pts[:, 0]), pts[:, 1], atol=1e-9)
            assert 0.0 <= line.confidence <= 1.0 and line.type == b.type
    # status: one type everywhere; the recording's has no wall-clock value, the live one has
    for (_, sp), rp in zip(heard["/segfuse/status"], recorded["/segfuse/status"]):
        st = plain.deserialize_cdr(sp, "segfuse_msgs/msg/FrameStatus")
        want = ts.deserialize_cdr(rp, "segfuse_msgs/msg/FrameStatus")
        fields = ("frame", "camera_seq", "camera_stamp_ns", "lidar_stamp_ns", "lidar_missing", "fused", "ego_motion")
        assert [getattr(st, f) for f in fields] == [getattr(want, f) for f in fields]
        assert st.pipeline_latency_ms > 0 and st.publish_stamp_ns > 0 and st.frames_dropped == 0
        assert want.pipeline_latency_ms == -1.0 and want.publish_stamp_ns == 0

    # key expressions and attachments as rmw_zenoh lays them out
    report = json.loads((tmp_path / "heard.json").read_text())
    assert set(report["topics"]) == set(heard)
    for topic, t in report["topics"].items():
        assert t["key"] == topic_key(0, topic, t["msgtype"], type_hash(ts, t["msgtype"]))
        seqs = [a[0] for a in t["attachments"]]
        stamps = [a[1] for a in t["attachments"]]
        gids = {a[2] for a in t["attachments"]}
        assert seqs == list(range(1, len(recorded[topic]) + 1)) and stamps == sorted(stamps)
        assert len(gids) == 1 and len(gids.pop()) == 32


def test_planner_api_gives_typed_arrays_equal_to_the_recording(drive, tmp_path):
    from rosbags.highlevel import AnyReader

    from pipeline.msgs import make_typestore
    from pipeline.planner_api import FusedSubscriber, to_numpy

    ep = f"tcp/127.0.0.1:{free_port()}"
    with FusedSubscriber(listen=[ep], depth=10) as sub:
        cfg = run_config(tmp_path, drive, {"enabled": True, "connect": [ep], "qos": "reliable",
                                           "wait_subscribers_s": 10})
        run = subprocess.run(SEGFUSE + ["run", str(cfg), "--no-progress"], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr[-2000:]
        clouds = [sub.take("points", timeout_s=10) for _ in range(3)]
        masks = [sub.take("semantic", timeout_s=10) for _ in range(3)]
        status = sub.take("status", timeout_s=10)
        assert sub.malformed == 0
    ts = make_typestore()
    with AnyReader([tmp_path / "out" / "recording"], default_typestore=ts) as reader:
        rec = {c.topic: [to_numpy(c.msgtype, reader.deserialize(raw, c.msgtype))
                         for c2, _, raw in reader.messages(connections=[c])] for c in reader.connections
               if c.topic in ("/segfuse/points", "/segfuse/camera_front/semantic")}
    for got, want in zip(clouds, rec["/segfuse/points"]):
        assert got is not None and got.data.dtype.names == want.dtype.names
        np.testing.assert_array_equal(got.data, want)
        assert got.data["x"].dtype == np.float32 and got.data["instance_id"].dtype == np.int32
    for got, want in zip(masks, rec["/segfuse/camera_front/semantic"]):
        assert got.data.dtype == np.uint8 and got.data.shape == want.shape
        np.testing.assert_array_equal(got.data, want)
    assert status.data["frame"] == 0 and status.data["fused"] is True


def test_a_subscriber_leaving_mid_run_costs_neither_the_run_nor_the_recording(drive, tmp_path):
    ep = f"tcp/127.0.0.1:{free_port()}"
    listener = start_listener(["--listen", ep, "--count", "1", "--duration", "60", "--quiet"])   # leaves after 1
    try:
        cfg = run_config(tmp_path, drive, {"enabled": True, "connect": [ep], "qos": "latest",
                                           "wait_subscribers_s": 10})
        run = subprocess.run(SEGFUSE + ["run", str(cfg), "--no-progress"], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
        out, _ = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
    assert run.returncode == 0, run.stderr[-2000:]
    assert "segfuse listen: 1 samples" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames"]["recorded"] == 3 and summary["frames"]["fused_clouds"] == 3
    assert f"published 3 frames ({schema_counts()[1]} samples" in run.stderr and "0 errors" in run.stderr
