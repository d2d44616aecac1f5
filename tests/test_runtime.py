"""The runtime end to end on short synthetic drives: run + eval, determinism, the live policy,
SIGTERM mid-drive, faults skipped and counted, refusals at start."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
FRAMES = 10


@pytest.fixture(scope="session")
def drive(tmp_path_factory) -> Path:
    from pipeline.sim.simulate import simulate

    path = tmp_path_factory.mktemp("runtime") / "drive"
    simulate(path, frames=FRAMES, seed=3, scale=0.4, progress=False)
    return path


def write_config(path: Path, drive: Path, out: Path, **changes) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["input"]["uri"] = str(drive)
    cfg["out"] = str(out)
    cfg["run"]["progress"] = False
    # runtime mechanics with the drive's ground-truth masks (the oracle: fast on small drives);
    # the default models through the same runtime: tests/test_default_models.py
    cfg["masks"] = "ground_truth"
    cfg["sinks"]["overlay"]["enabled"] = False
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def replayed(drive, tmp_path_factory) -> Path:
    """One replay of the drive through the CLI, with the overlay video on."""
    tmp = tmp_path_factory.mktemp("replay")
    cfg = write_config(tmp / "run.yaml", drive, tmp / "out", sinks={"recorder": {"enabled": True},
                                                                    "overlay": {"enabled": True}})
    assert main(["run", str(cfg), "--no-progress"]) == 0
    return tmp / "out"


def read_messages(recording: Path, topic: str) -> list:
    from rosbags.highlevel import AnyReader

    from pipeline.msgs import make_typestore

    with AnyReader([recording], default_typestore=make_typestore()) as r:
        conns = [c for c in r.connections if c.topic == topic]
        return [r.deserialize(raw, c.msgtype) for c, _, raw in r.messages(connections=conns)]


def test_replay_records_every_frame_and_eval_scores_it(replayed, drive, tmp_path, capsys):
    from pipeline.sinks.recorder import CLOUD_DTYPE

    summary = json.loads((replayed / "summary.json").read_text())
    assert summary["frames"] == {"in": FRAMES, "accepted": FRAMES, "done": FRAMES, "dropped": 0, "failed": {},
                                 "recorded": FRAMES, "fused_clouds": FRAMES}
    assert summary["sync"]["paired"] == FRAMES and summary["sync"]["lidar_missed"] == 0
    assert summary["oracle"] and "ORACLE" in summary["masks_label"]
    assert {"source", "sync", "masks", "fuse", "sinks.record", "sinks.overlay"} <= set(summary["stages_ms"])
    assert (replayed / "overlay.mp4").stat().st_size > 0 and (replayed / "overlay_first.png").is_file()
    rec = replayed / "recording"
    clouds = read_messages(rec, "/segfuse/points")
    assert [f.name for f in clouds[0].fields] == list(CLOUD_DTYPE.names)
    info = json.loads(read_messages(rec, "/segfuse/run_info")[0].data)
    assert info["oracle"] is True
    # input stamps preserved: the clouds carry the drive's sweep stamps
    from pipeline.drive.io import open_drive

    with open_drive(drive) as d:
        sweeps = [f.lidar.stamp_ns for f in d.frames()]
    assert [c.header.stamp.sec * 10**9 + c.header.stamp.nanosec for c in clouds] == sweeps
    assert len(read_messages(rec, "/segfuse/objects")) == FRAMES

    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--drive", str(rec), "--truth", str(drive), "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "point class accuracy" in printed and "oracle" in printed
    m = json.loads(out_json.read_text())
    assert m["frames"]["evaluated"] == FRAMES
    assert m["points"]["class_accuracy"] > 0.95
    assert m["points"]["coverage"] > 0.8
    assert m["instances"]["precision"] > 0.9 and m["instances"]["recall"] > 0.85
    assert m["objects"]["matched"] > 0 and m["objects"]["centroid_to_box_m"]["median"] < 0.1
    assert m["objects"]["recall"] > 0.6 and m["objects"]["centroid_within_0_3m"] > 0.8


def test_eval_refuses_a_drive_that_is_not_a_recording(drive, capsys):
    assert main(["eval", "--drive", str(drive), "--truth", str(drive)]) == 2


def test_replay_twice_gives_identical_recordings(replayed, drive, tmp_path):
    cfg = write_config(tmp_path / "run.yaml", drive, tmp_path / "out")
    assert main(["run", str(cfg), "--no-progress"]) == 0
    a, b = replayed / "recording", tmp_path / "out" / "recording"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for p in a.iterdir():
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name


def test_live_policy_drops_old_frames_and_keeps_latency_bounded(drive, tmp_path):
    """The source reads the drive as fast as it can (rate 0): faster than fusion, so frames pile
    up; the live policy drops the older ones, counts them, and keeps the frames in flight (so
    the latency, at most that many slowest-stage times) bounded. The newest frame always wins."""
    from pipeline.run_config import load_run_config
    from pipeline.runner import run_pipeline

    cfg = load_run_config(write_config(tmp_path / "run.yaml", drive, tmp_path / "out",
                                       run={"policy": "live", "rate": 0, "progress": False}))
    s = run_pipeline(cfg)
    f = s["frames"]
    assert f["in"] == FRAMES
    assert f["dropped"] > 0 and f["done"] + f["dropped"] == FRAMES and f["recorded"] == f["done"]
    assert s["max_in_flight"] <= s["capacity"]
    status = read_messages(tmp_path / "out" / "recording", "/segfuse/status")     # segfuse_msgs/FrameStatus
    assert status[-1].camera_seq == FRAMES - 1                     # the newest frame got through
    assert [st.camera_seq for st in status] == sorted(st.camera_seq for st in status)
    assert 0 < status[-1].frames_dropped <= f["dropped"]            # the graph's count, as it was then


def test_sigterm_mid_drive_drains_and_closes_a_valid_recording(drive, tmp_path):
    from mcap.reader import make_reader

    cfg = write_config(tmp_path / "run.yaml", drive, tmp_path / "out", run={"rate": 0.1, "progress": False})
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--no-progress"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stderr:                       # at 0.1x speed a frame comes every second
            if "first frame out" in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    f = summary["frames"]
    assert summary["stopped_by"] == "signal"
    assert 1 <= f["done"] < FRAMES
    assert f["recorded"] == f["accepted"] == f["done"]            # nothing accepted was lost
    mcap = tmp_path / "out" / "recording" / "recording.mcap"
    with open(mcap, "rb") as fh:
        reader = make_reader(fh)
        assert reader.get_summary() is not None                   # closed properly: summary and index written
        topics = [ch.topic for _, ch, _ in reader.iter_messages(topics=["/segfuse/points"])]
    assert len(topics) == f["done"]
    assert not list((tmp_path / "out").glob(".recording.partial-*"))


def _corrupt_copy(src: Path, dst: Path) -> None:
    """Copy the drive's bag, breaking image 2 (data cut short), cloud 4 (truncated) and adding a
    message of a type no image topic can hold."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    from pipeline.msgs import make_typestore

    ts = make_typestore()
    with AnyReader([src], default_typestore=ts) as r:
        w = Writer(dst, version=8, storage_plugin=StoragePlugin.MCAP)
        w.open()
        conns = {}
        seen = {"/camera_front/image_raw": 0, "/lidar_top/points": 0}
        for c, t, raw in r.messages():
            if c.topic not in conns:
                conns[c.topic] = w.add_connection(c.topic, c.msgtype, typestore=ts)
            if c.topic in seen:
                k = seen[c.topic]
                seen[c.topic] += 1
                if (c.topic, k) in (("/camera_front/image_raw", 2), ("/lidar_top/points", 4)):
                    msg = r.deserialize(raw, c.msgtype)
                    msg.data = msg.data[: len(msg.data) // 3]
                    raw = ts.serialize_cdr(msg, c.msgtype)
                if (c.topic, k) == ("/camera_front/image_raw", 1):
                    odd = w.add_connection(c.topic, "std_msgs/msg/String", typestore=ts)
                    w.write(odd, t, ts.serialize_cdr(ts.types["std_msgs/msg/String"](data="?"), "std_msgs/msg/String"))
            w.write(conns[c.topic], t, raw)
        w.close()


def test_corrupt_image_truncated_cloud_and_unknown_type_are_skipped_counted_and_reported(drive, tmp_path, capsys):
    bad = tmp_path / "bad"
    _corrupt_copy(drive, bad)
    cfg = write_config(tmp_path / "run.yaml", bad, tmp_path / "out")
    assert main(["run", str(cfg), "--no-progress"]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["skipped_inputs"]["by_kind"] == {"message": 1, "image": 1, "cloud": 1}
    assert s["frames"]["done"] == FRAMES - 1                         # image 2 is gone
    assert s["sync"]["lidar_missed"] == 1 and s["sync"]["sweeps_unused"] == 1   # frame 4 went camera-only
    assert s["frames"]["fused_clouds"] == FRAMES - 2
    assert s["source_dropped"] == {}                                 # a recorded drive drops nothing
    printed = capsys.readouterr().out
    assert "3 skipped" in printed and "LiDAR missed 1" in printed and "dropped by" not in printed
    from pipeline.runner import render_summary

    shown = render_summary(dict(s, source_dropped={"zenoh://rslidar": 7}))   # as a live Zenoh LiDAR reports it
    assert "3 skipped (message 1, image 1, cloud 1); 7 dropped by zenoh://rslidar (queue full)" in shown
    status = read_messages(tmp_path / "out" / "recording", "/segfuse/status")
    assert [st.camera_seq for st in status if st.lidar_missing] == [4]
    assert [st.camera_seq for st in status] == [k for k in range(FRAMES) if k != 2]


def test_kitti_raw_drive_with_a_truncated_scan(tmp_path):
    from pipeline.run_config import load_run_config
    from pipeline.runner import run_pipeline
    from pipeline.sim.simulate import simulate

    path = tmp_path / "kitti"
    simulate(path, frames=3, seed=4, scale=0.3, fmt="kitti-raw", progress=False)
    scan = path / "velodyne_points" / "data" / "0000000001.bin"
    scan.write_bytes(scan.read_bytes()[:-6])
    cfg = load_run_config(write_config(tmp_path / "run.yaml", path, tmp_path / "out"))
    s = run_pipeline(cfg)
    assert s["skipped_inputs"]["total"] == 1 and "0000000001.bin" in s["skipped_inputs"]["first"][0]
    assert s["frames"]["done"] == 2 and s["frames"]["fused_clouds"] == 2


def test_refused_at_start_missing_model_bad_calibration_no_ground_truth(drive, tmp_path, caplog):
    cfg = write_config(tmp_path / "a.yaml", drive, tmp_path / "out", masks="engines",
                       engines={"deeplab": {"model": str(tmp_path / "nope.onnx")},
                                "maskrcnn": {"model": str(tmp_path / "nope2.onnx")}})
    assert main(["run", str(cfg), "--no-progress"]) == 2
    assert "engines.deeplab.model" in caplog.text and "nope.onnx not found" in caplog.text
    assert not (tmp_path / "out" / "recording").exists()

    rig = yaml.safe_load((REPO / "calibration" / "examples" / "rig_example.yaml").read_text())
    rig["cameras"][0]["T_base_from_cam"]["matrix"][0][0] = 2.0          # not a rotation
    (tmp_path / "bad_rig.yaml").write_text(yaml.safe_dump(rig))
    cfg = write_config(tmp_path / "b.yaml", drive, tmp_path / "out",
                       input={"uri": str(drive), "calibration": str(tmp_path / "bad_rig.yaml")})
    caplog.clear()
    assert main(["run", str(cfg), "--no-progress"]) == 2
    assert "bad_rig.yaml" in caplog.text

    import cv2

    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "0.png"), np.zeros((8, 8, 3), np.uint8))
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "imgs", tmp_path / "out")
    caplog.clear()
    assert main(["run", str(cfg), "--no-progress"]) == 2
    assert "masks: ground_truth needs an input with ground-truth masks" in caplog.text


def test_sqlite_rosbag2_and_ros1_copies_of_the_drive_give_the_same_fused_clouds(replayed, drive, tmp_path):
    """Other storages and ROS 1 bags (converted with rosbags) replay through the same bag source
    and calibration-from-bag path; the fused clouds match the MCAP replay's exactly."""
    from rosbags.convert import convert
    from rosbags.typesys import Stores, get_typestore

    from pipeline.msgs import make_typestore

    sqlite, ros1 = tmp_path / "sqlite", tmp_path / "drive.bag"
    convert([drive], sqlite, "sqlite3", 8, None, "file", make_typestore(), None, [], [], [], [])
    convert([drive], ros1, None, 2, None, "file", make_typestore(), get_typestore(Stores.ROS1_NOETIC),
            ["/gt/objects", "/gt/lanes", "/gt/lidar_top/labels", "/segfuse/drive_meta"], [], [], [])
    want = [bytes(m.data) for m in read_messages(replayed / "recording", "/segfuse/points")]
    for name, bag in (("sqlite", sqlite), ("ros1", ros1)):
        cfg = write_config(tmp_path / f"{name}.yaml", bag, tmp_path / name / "out")
        assert main(["run", str(cfg), "--no-progress"]) == 0
        got = [bytes(m.data) for m in read_messages(tmp_path / name / "out" / "recording", "/segfuse/points")]
        assert got == want, name


def test_bag_topic_mapping_is_checked_at_start(drive):
    from pipeline.errors import ConfigError
    from pipeline.sources.bag import BagSource
    from pipeline.sources.uri import parse_uri

    uri = parse_uri(str(drive))
    src = BagSource(uri, topics={"image": "/camera_front/image_raw", "points": "/lidar_top/points",
                                 "semantic": "/gt/camera_front/semantic"}, want_truth=True)
    try:
        assert (src.camera_id, src.lidar_id) == ("camera_front", "lidar_top")
        assert src.topics["instance"] == "/gt/camera_front/instance" and src.info.has_truth
        first = next(i for i in src if hasattr(i, "semantic_truth"))
        assert first.semantic_truth.shape == first.frame.image.shape[:2]
    finally:
        src.close()
    with pytest.raises(ConfigError) as e:
        BagSource(uri, topics={"image": "/front/image"}, config_path="x.yaml")
    assert (e.value.path, e.value.field) == ("x.yaml", "input.topics.image")
    with pytest.raises(ConfigError, match="holds sensor_msgs/msg/PointCloud2"):
        BagSource(uri, topics={"image": "/lidar_top/points"})


def test_overlay_decimation_draws_every_nth_frame_and_says_so(drive, tmp_path, capsys):
    """sinks.overlay.every_n_frames: the video holds every Nth frame at 1/N of the rate, and the
    summary (summary.json and the printed one) reports the decimation."""
    import cv2

    from pipeline.run_config import load_run_config
    from pipeline.runner import render_summary, run_pipeline

    cfg = load_run_config(write_config(tmp_path / "run.yaml", drive, tmp_path / "out",
                                       sinks={"recorder": {"enabled": False},
                                              "overlay": {"enabled": True, "fps": 10.0, "every_n_frames": 3}}))
    s = run_pipeline(cfg)
    drawn = -(-FRAMES // 3)
    assert s["overlay_decimation"] == {"every_n_frames": 3, "drawn": drawn, "skipped": FRAMES - drawn}
    cap = cv2.VideoCapture(s["overlay"])
    assert round(cap.get(cv2.CAP_PROP_FPS), 2) == pytest.approx(10 / 3, abs=0.01)
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == drawn
    cap.release()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["overlay_decimation"]["every_n_frames"] == 3
    assert "decimated: 1 frame in 3 drawn" in render_summary(s)


def test_synthetic_only_note_is_for_real_inputs_only(drive, kitti_object):
    """The committed models on a segfuse sim drive: no note; on a real folder: the note."""
    from pipeline.model_notes import SYNTHETIC_ONLY_NOTE, synthetic_only_note
    from pipeline.run_config import load_run_config
    from pipeline.sources.dataset import DatasetSource
    from pipeline.sources.drive import DriveSource
    from pipeline.sources.uri import parse_uri

    cfg = load_run_config(REPO / "configs" / "demo.yaml")            # masks: engines, the committed models
    with DriveSource(parse_uri(str(drive))) as sim_src:
        assert synthetic_only_note(cfg, sim_src) is None
    real = DatasetSource(parse_uri(str(kitti_object)))
    assert synthetic_only_note(cfg, real) == SYNTHETIC_ONLY_NOTE
    cfg.masks = "ground_truth"
    assert synthetic_only_note(cfg, real) is None
