"""Faults injected into real runs (issue 14), and what each run keeps.

Every test breaks a real ``segfuse run`` (corrupt bytes in a real drive, a full tmpfs, a SIGKILL of a
child process, a SIGSTOPped ``segfuse listen``, a contract-valid ONNX whose outputs are wrong, images
of different sizes, an existing output folder) and checks what was kept: the recording opens with
rosbags and with mcap's indexed reader (CRCs checked), holds exactly the frames completed before the
fault, and summary.json names the fault. docs/runtime.md, "Faults", has the table.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
SEGFUSE = [sys.executable, "-m", "pipeline.cli"]
FRAMES = 6
STATUS = "/segfuse/status"                   # segfuse_msgs/FrameStatus, one per recorded frame
STATUS_FIELDS = ("frame", "camera_seq", "camera_stamp_ns", "lidar_stamp_ns", "lidar_missing", "fused", "ego_motion")


@pytest.fixture(scope="module")
def drive(tmp_path_factory) -> Path:
    from pipeline.sim.simulate import simulate

    path = tmp_path_factory.mktemp("faults") / "drive"
    simulate(path, frames=FRAMES, seed=11, scale=0.25, progress=False)
    return path


def write_config(path: Path, drive: Path | str, out: Path, **changes) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["input"]["uri"] = str(drive)
    cfg["out"] = str(out)
    cfg["run"]["progress"] = False
    cfg["masks"] = "ground_truth"              # runtime mechanics on the oracle masks (fast)
    for name in ("deeplab", "maskrcnn"):
        cfg["engines"][name]["model"] = str(REPO / cfg["engines"][name]["model"])
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def recorded(recording: Path) -> dict[str, list[bytes]]:
    """Raw messages per topic, read twice: rosbags' AnyReader (metadata.yaml + the MCAP summary)
    and mcap's indexed reader with CRC checks; both must agree."""
    from mcap.reader import make_reader
    from rosbags.highlevel import AnyReader

    from pipeline.msgs import make_typestore

    by_rosbags: dict[str, list[bytes]] = {}
    with AnyReader([recording], default_typestore=make_typestore()) as reader:
        for conn, _, raw in reader.messages():
            by_rosbags.setdefault(conn.topic, []).append(bytes(raw))
    by_mcap: dict[str, list[bytes]] = {}
    (mcap_file,) = recording.glob("*.mcap")
    with mcap_file.open("rb") as f:
        r = make_reader(f, validate_crcs=True)
        summary = r.get_summary()
        assert summary is not None and summary.chunk_indexes, "no summary / chunk index"
        for _, channel, msg in r.iter_messages(log_time_order=True):
            by_mcap.setdefault(channel.topic, []).append(bytes(msg.data))
    assert {t: sorted(v) for t, v in by_rosbags.items()} == {t: sorted(v) for t, v in by_mcap.items()}
    assert (recording / "metadata.yaml").is_file()
    return by_mcap


def statuses(msgs: dict[str, list[bytes]]) -> list[dict]:
    from pipeline.msgs import make_typestore

    ts = make_typestore()
    out = []
    for raw in msgs.get(STATUS, []):
        m = ts.deserialize_cdr(raw, "segfuse_msgs/msg/FrameStatus")
        out.append({k: (bool(getattr(m, k)) if isinstance(getattr(m, k), (bool, np.bool_)) else int(getattr(m, k)))
                    for k in STATUS_FIELDS})
    return out


def video_frames(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture(scope="module")
def full_run(drive, tmp_path_factory) -> Path:
    """The uninterrupted run every fault is compared with."""
    tmp = tmp_path_factory.mktemp("full")
    cfg = write_config(tmp / "run.yaml", drive, tmp / "out")
    assert main(["run", str(cfg), "--no-progress"]) == 0
    return tmp / "out"


# --- 1. corrupt bytes in a drive: the chunk is skipped, counted, and named ------------------

def test_corrupt_chunk_in_the_drive_is_skipped_and_the_run_goes_on(drive, full_run, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (src,) = drive.glob("*.mcap")
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 1024] = np.random.default_rng(0).integers(0, 256, 1024, dtype=np.uint8).tobytes()
    (bad / src.name).write_bytes(bytes(data))
    (bad / "metadata.yaml").write_text((drive / "metadata.yaml").read_text())
    cfg = write_config(tmp_path / "run.yaml", bad, tmp_path / "out")
    assert main(["run", str(cfg), "--no-progress"]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["fault"] is None
    assert s["skipped_inputs"]["by_kind"] == {"chunk": 1}
    lost = s["skipped_inputs"]["first"][0]
    assert "/camera_front/image_raw" in lost and "log time" in lost and "corrupt MCAP chunk" in lost
    kept = recorded(tmp_path / "out" / "recording")
    full = recorded(full_run / "recording")
    st = statuses(kept)
    assert 0 < len(st) < FRAMES and len(st) == s["frames"]["recorded"] == s["frames"]["done"]
    # the frames that were kept are those of the undamaged run (frame numbers aside: they count
    # the frames that came in), their fused clouds the same bytes
    strip = [{k: v for k, v in x.items() if k not in ("frame", "camera_seq")} for x in statuses(full)]
    assert all({k: v for k, v in x.items() if k not in ("frame", "camera_seq")} in strip for x in st)
    assert set(kept["/segfuse/points"]) < set(full["/segfuse/points"])


def test_chunk_crcs_are_written_and_a_flipped_byte_is_detected(drive, full_run, tmp_path):
    from mcap.reader import make_reader
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader

    for f in (next(drive.glob("*.mcap")), next((full_run / "recording").glob("*.mcap"))):
        with f.open("rb") as h:
            crcs = [r.uncompressed_crc for r in StreamReader(h, emit_chunks=True).records if isinstance(r, Chunk)]
        assert crcs and all(crcs), f"{f}: a chunk without CRC"
    # flip one byte inside a chunk's records (an uncompressed copy, so that lz4's framing cannot
    # notice first): mcap's reader and our bag source both notice
    from pipeline.mcap_io import recover_bag

    src = next((full_run / "recording").glob("*.mcap"))
    plain = tmp_path / "plain"
    recover_bag(src, plain, compression="none")
    p = next(plain.glob("*.mcap"))
    raw = bytearray(p.read_bytes())
    i = raw.rfind(b"mono16") + 200               # a pixel of the last instance image (a topic the source reads)
    assert i > 0
    raw[i] ^= 0x01
    p.write_bytes(bytes(raw))
    with p.open("rb") as h, pytest.raises(Exception, match="(?i)crc"):
        list(make_reader(h, validate_crcs=True).iter_messages())
    from pipeline.sources.bag import BagSource
    from pipeline.sources.uri import parse_uri

    with BagSource(parse_uri(str(plain))) as bag:
        items = list(bag)
    assert bag.skipped and bag.skipped[0].what == "chunk" and "checksum" in bag.skipped[0].reason
    assert items


# --- 2. a full disk: the run ends, what was completed is kept --------------------------------

def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_disk_full_mid_run_keeps_every_completed_frame(drive, full_run, tmp_path):
    mnt = tmp_path / "small"
    mounted = _tmpfs(mnt, "12m")
    cfg = write_config(tmp_path / "run.yaml", drive, mnt / "out")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pre = None
    if not mounted:                               # no tmpfs: a per-file size limit in the child instead
        import resource

        def pre() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (6 << 20, 6 << 20))
    try:
        run = subprocess.run(SEGFUSE + ["run", str(cfg), "--no-progress"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=120, preexec_fn=pre)
        assert run.returncode == 1, run.stderr[-3000:]
        out = mnt / "out"
        s = json.loads((out / "summary.json").read_text())
        assert s["fault"]["kind"] == "disk_full" and s["fault"]["where"] == "recorder", s["fault"]
        assert "STOPPED BY   disk_full" in run.stdout
        kept = recorded(out / "recording")
        n = s["frames"]["recorded"]
        assert 1 <= n < FRAMES and len(kept[STATUS]) == n
        assert [x["frame"] for x in statuses(kept)] == list(range(n))
        assert kept[STATUS] == recorded(full_run / "recording")[STATUS][:n]       # the same bytes
        # the overlay runs beside the recorder: it holds every frame it had drawn when the run stopped
        assert video_frames(out / "overlay.mp4") == s["overlay_frames"] >= 1
        assert not list(out.glob(".recording.partial-*")) and not (out / ".segfuse-reserve").exists()
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)


# --- 3. SIGKILL: segfuse recover turns the partial into a valid recording ---------------------

def _complete_chunks(mcap_file: Path) -> int:
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader

    n = 0
    try:
        with mcap_file.open("rb") as f:
            for r in StreamReader(f, emit_chunks=True).records:
                n += isinstance(r, Chunk)
    except Exception:  # noqa: BLE001 - the file ends mid-record: that is the point
        pass
    return n


def test_sigkill_leaves_a_partial_that_recover_makes_valid(drive, full_run, tmp_path):
    out = tmp_path / "out"
    # 1 frame/s: time to kill mid-run; 2-frame overlay segments (the default is 10)
    cfg = write_config(tmp_path / "run.yaml", drive, out, run__rate=0, sinks={
        "recorder": {"enabled": True}, "overlay": {"enabled": True, "segment_frames": 2}})
    proc = subprocess.Popen(SEGFUSE + ["run", str(cfg), "--no-progress"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        chunks = 0
        while time.monotonic() < deadline and proc.poll() is None:
            files = list(out.glob(".recording.partial-*/recording/*.mcap"))
            if files and (chunks := _complete_chunks(files[0])) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = _complete_chunks(files[0])          # frames on disk when it died (one chunk per frame)
    assert done >= chunks >= 3 and done < FRAMES
    # the next run into the folder refuses and says what to do
    again = subprocess.run(SEGFUSE + ["run", str(cfg), "--no-progress"], cwd=REPO, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 2 and f"segfuse recover {out}" in again.stderr
    assert main(["recover", str(out)]) == 0
    kept = recorded(out / "recording")
    full = recorded(full_run / "recording")
    assert kept[STATUS] == full[STATUS][:done]                            # exactly the completed frames
    assert kept["/segfuse/points"] == full["/segfuse/points"][:done]
    assert kept["/tf_static"] == full["/tf_static"] and "/segfuse/run_info" in kept
    info = json.loads((out / "recovered.json").read_text())
    assert info["recording"]["frames"] == done and info["recording"]["lost_chunks"] == []
    assert info["overlay"]["frames"] >= 1 and video_frames(out / "overlay.mp4") == info["overlay"]["frames"]
    assert not list(out.glob(".recording.partial-*")) and not (out / ".overlay.segments").exists()


# --- 4. outputs are never overwritten silently -----------------------------------------------

def test_existing_output_folder_is_refused_unless_overwrite(drive, full_run, tmp_path, caplog):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(full_run, out)
    before = (out / "summary.json").read_bytes()
    cfg = write_config(tmp_path / "run.yaml", drive, out, run__frames=2, sinks={"recorder": {"enabled": True},
                                                                               "overlay": {"enabled": False}})
    assert main(["run", str(cfg), "--no-progress"]) == 2
    assert "refusing to overwrite" in caplog.text and "--overwrite" in caplog.text
    assert (out / "summary.json").read_bytes() == before and (out / "overlay.mp4").is_file()
    assert main(["run", str(cfg), "--no-progress", "--overwrite"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["frames"]["recorded"] == 2
    assert not (out / "overlay.mp4").exists()          # the previous run's overlay went with --overwrite
    assert len(recorded(out / "recording")[STATUS]) == 2
    # segfuse fuse refuses a non-empty --out the same way
    (tmp_path / "fused").mkdir()
    (tmp_path / "fused" / "objects.json").write_text("{}")
    assert main(["fuse", "--rig", "x", "--cloud", "y", "--semantic", "z", "--out", str(tmp_path / "fused")]) == 2


def test_unwritable_output_folder_is_refused_at_start(drive, tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.outputs import claim_out_dir

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        claim_out_dir(f, overwrite=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:                         # root writes anywhere: a read-only bind mount instead
        if subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True).returncode:
            pytest.skip("cannot make a read-only folder as root here")
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=False)
    else:
        ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write to the output folder"):
            claim_out_dir(ro / "out", overwrite=False)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=False)


# --- 5. frames of another size stay in the overlay --------------------------------------------

def test_overlay_keeps_frames_whose_size_differs(kitti_object, tmp_path):
    images = kitti_object / "image_2"
    cfg = write_config(tmp_path / "run.yaml", images, tmp_path / "out", masks="engines", run__frames=3,
                       input__fps=10)
    assert main(["run", str(cfg), "--no-progress"]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["frames"]["done"] == 3 and s["overlay_frames"] == 3 and s["overlay_resized"] >= 1
    assert video_frames(tmp_path / "out" / "overlay.mp4") == 3


# --- 6. model outputs outside the contract's meaning fail the frame, named and counted -------

def _constant_model(path: Path, kind: str, bad: str) -> Path:
    import onnx
    from onnx import TensorProto, helper

    F, I32 = TensorProto.FLOAT, TensorProto.INT32
    h, w = 64, 96
    if kind == "deeplab":
        outs = {"class_ids": (I32, [1, h, w], np.full((1, h, w), 77, np.int32))}
    else:
        boxes = np.array([[10, 10, 40, 30], [0, 0, 0, 0]], np.float32)
        if bad == "nan_box":
            boxes[0, 2] = np.nan
        outs = {"boxes": (F, [2, 4], boxes), "scores": (F, [2], np.array([0.9, 0.0], np.float32)),
                "labels": (I32, [2], np.array([3, 255], np.int32)),
                "masks": (F, [2, 28, 28], np.ones((2, 28, 28), np.float32))}
    nodes = [helper.make_node("Constant", [], [n], value=helper.make_tensor(f"v_{n}", t, s, v.ravel().tolist()))
             for n, (t, s, v) in outs.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", F, [1, 3, h, w])],
                              [helper.make_tensor_value_info(n, t, s) for n, (t, s, _) in outs.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("kind,bad,field", [("deeplab", "class_77", "outputs.class_ids"),
                                            ("maskrcnn", "nan_box", "outputs.boxes")])
def test_bad_model_outputs_fail_the_frame_with_the_model_named(drive, tmp_path, kind, bad, field):
    from pipeline.msgs import make_typestore

    cfg = yaml.safe_load(write_config(tmp_path / "base.yaml", drive, tmp_path / "out").read_text())
    bad_model = _constant_model(tmp_path / f"{kind}_bad.onnx", kind, bad)
    cfg["masks"] = "engines"
    cfg["engines"][kind]["model"] = str(bad_model)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "run.yaml"), "--no-progress", "--frames", "3"]) == 1   # nothing came out
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["frames"]["failed"] == {"postprocess": 3} and s["frames"]["recorded"] == 0
    assert s["fault"]["kind"] == "no_frames" and str(bad_model) in s["fault"]["message"]
    assert all(str(bad_model) in f and field in f for f in s["failures"]), s["failures"]
    kept = recorded(tmp_path / "out" / "recording")
    assert STATUS not in kept and "/segfuse/points" not in kept          # nothing unchecked was recorded
    assert make_typestore() is not None


# --- 7. a frozen Zenoh subscriber never holds the run up --------------------------------------

def test_a_sigstopped_listener_does_not_hang_or_fail_the_run(drive, tmp_path):
    """The listener connects, then freezes (SIGSTOP) once frames flow: its TCP link stays up and
    nothing reads it. Zenoh's close then waits ~10 s and raises "close operation timed out"; the
    run must still end on time with exit 0, its recording and summary.json."""
    import socket

    from pipeline.sinks.publisher import CLOSE_TIMEOUT_S

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        ep = f"tcp/127.0.0.1:{sock.getsockname()[1]}"
    listener = subprocess.Popen(SEGFUSE + ["listen", "--listen", ep, "--duration", "120", "--quiet"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []
    try:
        assert "ready" in listener.stdout.readline()
        cfg = write_config(tmp_path / "run.yaml", drive, tmp_path / "out", run__rate=1.0,
                           sinks={"recorder": {"enabled": True}, "overlay": {"enabled": False},
                                  "publisher": {"enabled": True, "connect": [ep], "qos": "latest",
                                                "wait_subscribers_s": 5}})
        run = subprocess.Popen(SEGFUSE + ["run", str(cfg), "--no-progress"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        for line in run.stdout:
            lines.append((time.monotonic(), line))
            if "first frame out" in line:
                listener.send_signal(signal.SIGSTOP)
        rc = run.wait(60)
        t_end = time.monotonic()
    finally:
        listener.send_signal(signal.SIGCONT)
        listener.kill()
        listener.wait(10)
    text = "".join(line for _, line in lines)
    assert rc == 0, text[-3000:]
    assert "ZError" not in text and "Traceback" not in text
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["frames"]["recorded"] == FRAMES and s["fault"] is None
    t_recorded = next(t for t, line in lines if "recorded" in line and "frames" in line)
    assert t_end - t_recorded < CLOSE_TIMEOUT_S + 4.0, f"{t_end - t_recorded:.1f} s from the recording's close to exit"


# --- 7. a stop before the poses are complete: the frame is kept, not failed -----------------

def test_a_frame_flushed_before_its_poses_is_fused_without_ego_motion(drive):
    """What a graceful stop does to the last accepted frame: the source stops before the poses
    covering its sweep arrived, the sync's flush hands it out. It used to carry the partial poses
    and fail in fusion ("query time ... lies outside the poses"); now it is fused without ego-motion
    compensation (``ego_motion: false``) and counted."""
    from pipeline.config import load_taxonomy
    from pipeline.fusion.config import FusionConfig
    from pipeline.sources.base import PoseInput
    from pipeline.sources.bag import BagSource
    from pipeline.sources.uri import parse_uri
    from pipeline.stages import Fuse
    from pipeline.sync import SyncConfig, Synchronizer
    from pipeline.types import Masks

    with BagSource(parse_uri(str(drive))) as bag:
        items = list(bag)
        rig = bag.rig
    last_cam = max(i for i, it in enumerate(items) if type(it).__name__ == "CameraInput")
    kept = [it for i, it in enumerate(items) if i <= last_cam or not isinstance(it, PoseInput)]
    sync = Synchronizer(SyncConfig(lidar_offset_ms=50), has_lidar=True, has_poses=True, live=False)
    frames = [f for it in kept for f, _ in sync.push(it)]
    frames += [f for f, _ in sync.flush()]
    assert len(frames) == FRAMES
    fuse = Fuse(rig, FusionConfig(), load_taxonomy())
    results = [fuse(f, Masks(semantic={}, instances={}, instance_maps={})) for f in frames]
    assert all(r is not None for r in results)
    assert results[0].ego_motion_applied and not results[-1].ego_motion_applied
    assert sync.stats.ego_motion_skipped >= 1


# --- 8. smaller items -----------------------------------------------------------------------

def test_non_finite_sync_tolerance_and_rate_are_refused(drive, tmp_path, caplog):
    for key, value in (("sync__tolerance_ms", float("nan")), ("sync__tolerance_ms", float("inf"))):
        cfg = write_config(tmp_path / "run.yaml", drive, tmp_path / "out", **{key: value})
        caplog.clear()
        assert main(["run", str(cfg), "--no-progress"]) == 2
        assert "sync.tolerance_ms" in caplog.text and "finite" in caplog.text
    cfg = write_config(tmp_path / "run.yaml", drive, tmp_path / "out")
    caplog.clear()
    assert main(["run", str(cfg), "--no-progress", "--rate", "nan"]) == 2
    assert "--rate" in caplog.text and "finite" in caplog.text
    assert not (tmp_path / "out").exists()


def _nan_sweep_copy(src: Path, dst: Path, index: int) -> None:
    """Copy the drive, every point of sweep ``index`` set to NaN (a LiDAR with no return at all)."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer

    from pipeline.msgs import make_typestore

    ts = make_typestore()
    with AnyReader([src], default_typestore=ts) as r:
        w = Writer(dst, version=8, storage_plugin=StoragePlugin.MCAP)
        w.open()
        conns, k = {}, 0
        for c, t, raw in r.messages():
            if c.topic not in conns:
                conns[c.topic] = w.add_connection(c.topic, c.msgtype, typestore=ts)
            if c.topic == "/lidar_top/points":
                if k == index:
                    msg = r.deserialize(raw, c.msgtype)
                    data = np.asarray(msg.data, np.uint8).reshape(-1, msg.point_step).copy()
                    data[:, :12] = np.full((data.shape[0], 3), np.nan, np.float32).view(np.uint8)
                    msg.data = data.reshape(-1)
                    raw = ts.serialize_cdr(msg, c.msgtype)
                k += 1
            w.write(conns[c.topic], t, raw)
        w.close()


def test_an_all_nan_sweep_is_skipped_and_its_frame_goes_camera_only(drive, tmp_path):
    _nan_sweep_copy(drive, tmp_path / "nan", 2)
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "nan", tmp_path / "out")
    assert main(["run", str(cfg), "--no-progress"]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["skipped_inputs"]["by_kind"] == {"cloud": 1} and "NaN" in s["skipped_inputs"]["first"][0]
    st = statuses(recorded(tmp_path / "out" / "recording"))
    assert len(st) == FRAMES and [x["frame"] for x in st if not x["fused"]] == [2]
    assert [x["frame"] for x in st if x["lidar_missing"]] == [2]


def test_fuse_refuses_an_all_nan_or_empty_cloud_naming_it(drive, tmp_path, caplog):
    import cv2

    from calibration.io import load_rig

    rig = load_rig(drive)
    cam = rig.cameras[0]
    sem = tmp_path / "sem.png"
    cv2.imwrite(str(sem), np.zeros((cam.height, cam.width), np.uint8))
    for name, pts in (("nan.npy", np.full((50, 4), np.nan, np.float32)), ("empty.npy", np.zeros((0, 4), np.float32))):
        np.save(tmp_path / name, pts)
        out = tmp_path / f"out_{name}"
        caplog.clear()
        assert main(["fuse", "--rig", str(drive), "--cloud", str(tmp_path / name), "--semantic", str(sem),
                     "--out", str(out)]) == 2
        assert name in caplog.text and "--cloud" in caplog.text and "no point with finite" in caplog.text
        assert not list(out.glob("*")), "a partial output was left"


def test_a_rig_whose_image_size_matches_no_frame_fails_the_run(drive, tmp_path):
    from calibration.io import load_rig
    from calibration.io_rig_yaml import dump_rig_yaml

    rig = yaml.safe_load(dump_rig_yaml(load_rig(drive)))
    rig["cameras"][0]["width"] += 8                          # every frame is 8 px narrower than the rig says
    (tmp_path / "rig.yaml").write_text(yaml.safe_dump(rig))
    cfg = write_config(tmp_path / "run.yaml", drive, tmp_path / "out",
                       input={"uri": str(drive), "calibration": str(tmp_path / "rig.yaml")})
    assert main(["run", str(cfg), "--no-progress"]) == 1
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["frames"]["done"] == 0 and s["fault"]["kind"] == "no_frames"
    assert "the calibration says" in s["fault"]["message"]


def test_sigterm_before_the_run_starts_leaves_no_partial(drive, tmp_path):
    """A SIGTERM while the run is being built (here: as soon as it is built, before the warm-up)
    removes the half-made outputs instead of killing the process with them."""
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", drive, out)
    code = ("import os, signal, sys\n"
            "from pipeline.run_config import load_run_config\n"
            "from pipeline.runner import run_pipeline\n"
            "try:\n"
            f"    run_pipeline(load_run_config({str(cfg)!r}), on_built=lambda run: os.kill(os.getpid(), signal.SIGTERM))\n"
            "except KeyboardInterrupt:\n"
            "    sys.exit(130)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 130, r.stderr[-2000:]
    assert not out.exists() or not list(out.iterdir()), list(out.iterdir())


# --- 9. determinism: the same seed gives the same bytes ---------------------------------------

def test_same_seed_gives_byte_identical_drives(tmp_path):
    from pipeline.sim.simulate import simulate

    for name in ("a", "b"):
        simulate(tmp_path / name, frames=2, seed=4, scale=0.2, progress=False, workers=1)
    a, b = recorded(tmp_path / "a"), recorded(tmp_path / "b")
    assert a.keys() == b.keys() and "/gt/lidar_top/labels" in a
    for topic in a:
        assert a[topic] == b[topic], topic
    # the labels' padding byte (point_step 4: class u8 at 0, instance u16 at 2) is zero
    from pipeline.msgs import make_typestore

    msg = make_typestore().deserialize_cdr(a["/gt/lidar_top/labels"][0], "sensor_msgs/msg/PointCloud2")
    data = np.asarray(msg.data, np.uint8).reshape(-1, msg.point_step)
    assert msg.point_step == 4 and not data[:, 1].any()
