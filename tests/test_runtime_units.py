"""Runtime pieces on their own: the sync rule, source URIs, the run config, the graph's order,
failure and shutdown handling, camera-only sources (image folder, video file)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ConfigError, InputDataError
from pipeline.run_config import load_run_config, parse_run_config
from pipeline.sync import SyncConfig
from pipeline.sources.base import CameraInput, LidarInput, PoseInput
from pipeline.sources.uri import parse_uri
from pipeline.sync import Synchronizer
from pipeline.types import CameraFrame, LidarSweep

MS = 1_000_000
REPO = Path(__file__).resolve().parents[1]


def cam(seq: int, stamp_ns: int) -> CameraInput:
    return CameraInput(CameraFrame("cam", stamp_ns, np.zeros((4, 6, 3), np.uint8)), seq)


def sweep(seq: int, stamp_ns: int, lidar_id: str = "lidar") -> LidarInput:
    return LidarInput(LidarSweep(lidar_id, stamp_ns, np.zeros((3, 4), np.float32)), seq)


def poses(stamps_ms: list[int]) -> PoseInput:
    s = np.array(stamps_ms, np.int64) * MS
    return PoseInput(s, np.tile(np.eye(4), (len(s), 1, 1)), int(s[-1]))


# --- sync --------------------------------------------------------------------------------------

def test_sync_pairs_with_offsets_and_counts_a_missing_sweep():
    sync = Synchronizer(SyncConfig(tolerance_ms=20, lidar_offset_ms=50), has_lidar=True, has_poses=False, live=False)
    out = []
    for i in range(5):
        if i != 2:                                       # sweep 2 never arrives
            out += sync.push(sweep(i, i * 100 * MS))
        out += sync.push(cam(i, i * 100 * MS + 50 * MS))
    out += sync.flush()
    frames = [f for f, _ in out]
    assert [f.camera_seq for f in frames] == [0, 1, 2, 3, 4]
    assert [f.lidar is None for f in frames] == [False, False, True, False, False]
    assert [f.lidar.stamp_ns // MS for f in frames if f.lidar] == [0, 100, 300, 400]
    s = sync.stats
    assert (s.paired, s.camera_only, s.lidar_missed, s.sweeps_unused, s.max_pair_dt_ns) == (4, 1, 1, 0, 0)
    assert [f.frame_index for f in frames] == [0, 1, 2, 3, 4]


def test_sync_hands_each_frame_back_with_the_token_its_camera_came_with():
    sync = Synchronizer(SyncConfig(tolerance_ms=20), has_lidar=True, has_poses=False, live=False)
    out = sync.push(sweep(0, 0))
    out += sync.push(cam(0, 5 * MS), 0, "first")
    out += sync.push(sweep(1, 100 * MS))
    out += sync.push(cam(1, 100 * MS), 0, "second")
    out += sync.flush()
    assert [(f.camera_seq, t) for f, t in out] == [(0, "first"), (1, "second")]


def test_sync_replay_waits_for_data_while_live_gives_up_after_the_timeout():
    cfg = SyncConfig(tolerance_ms=20, lidar_timeout_ms=150)
    replay = Synchronizer(cfg, has_lidar=True, has_poses=False, live=False)
    assert replay.push(cam(0, 1000 * MS), now_ns=0) == []
    assert replay.poll(now_ns=10_000 * MS) == []         # replay never gives up on the clock
    ((w, _),) = replay.push(sweep(0, 1010 * MS))         # a sweep past the frame decides it at once
    assert w.lidar.stamp_ns == 1010 * MS

    live = Synchronizer(cfg, has_lidar=True, has_poses=False, live=True)
    assert live.push(cam(0, 1000 * MS), now_ns=0) == []
    assert live.poll(now_ns=100 * MS) == []              # still within the timeout
    ((w, _),) = live.poll(now_ns=151 * MS)
    assert w.lidar is None and live.stats.lidar_missed == 1
    assert live.push(sweep(0, 1005 * MS), now_ns=160 * MS) == []   # the late sweep: nobody takes it
    live.push(cam(1, 1100 * MS), now_ns=170 * MS)
    live.flush()
    assert live.stats.sweeps_unused == 1


def test_sync_waits_for_a_nearer_sweep_and_per_sensor_offsets_win():
    sync = Synchronizer(SyncConfig(tolerance_ms=30, lidar_offset_ms=0, offsets_ms={"lidar": 50}), has_lidar=True,
                        has_poses=False, live=False)
    sync.push(sweep(0, 0))                               # shifted 50 ms: 20 ms from the frame at 70
    assert sync.push(cam(0, 70 * MS)) == []              # a later sweep might be nearer
    ((w, _),) = sync.push(sweep(1, 30 * MS))             # shifted 80 ms: 10 ms away, and nothing can beat it
    assert w.lidar.stamp_ns == 30 * MS
    sync.flush()
    assert sync.stats.sweeps_unused == 1


def test_sync_attaches_the_poses_of_the_sweep_once_they_are_complete():
    sync = Synchronizer(SyncConfig(tolerance_ms=20, lidar_offset_ms=50), has_lidar=True, has_poses=True, live=False)
    sync.push(poses([0, 10, 20, 30, 40, 50]))
    sync.push(sweep(0, 0))
    assert sync.push(cam(0, 50 * MS)) == []              # needs poses up to sweep end + margin (110 ms)
    assert sync.push(poses([60, 70, 80, 90, 100])) == []
    ((w, _),) = sync.push(poses([110, 120]))
    assert w.poses.stamps_ns.tolist() == [s * MS for s in range(0, 111, 10)]
    assert np.allclose(w.T_world_from_base, np.eye(4))


# --- URIs and config ------------------------------------------------------------------------------

def test_uris_are_parsed_and_paths_classified(tmp_path):
    assert parse_uri("v4l2:///dev/video0").location == "/dev/video0"
    csi = parse_uri("csi://1?width=1280&height=720")
    assert (csi.kind, csi.location, csi.params["width"], csi.live) == ("csi", "1", "1280", True)
    assert parse_uri("rtsp://10.0.0.2:8554/cam").kind == "rtsp"
    assert parse_uri("zenoh://lidar/points").location == "lidar/points"
    with pytest.raises(ConfigError, match="unknown URI scheme"):
        parse_uri("ftp://x/y")
    with pytest.raises(InputDataError, match="not found"):
        parse_uri(str(tmp_path / "nope"))
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "000.png").write_bytes(b"")
    assert parse_uri(str(tmp_path / "imgs")).kind == "images"
    (tmp_path / "bag").mkdir()
    (tmp_path / "bag" / "metadata.yaml").write_text("x")
    assert parse_uri(f"file://{tmp_path / 'bag'}").kind == "rosbag2"
    (tmp_path / "a.bag").write_bytes(b"")
    assert parse_uri(str(tmp_path / "a.bag")).kind == "ros1"
    (tmp_path / "drive.partial-12").mkdir()
    with pytest.raises(InputDataError, match="unfinished"):
        parse_uri(str(tmp_path / "drive.partial-12"))


def test_shipped_configs_load():
    for name in ("demo.yaml", "kitti.yaml", "jetson_trt.yaml"):
        cfg = load_run_config(REPO / "configs" / name)
        assert cfg.out
    demo = load_run_config(REPO / "configs" / "demo.yaml")
    assert demo.masks == "engines" and demo.engines.deeplab.model.name.endswith(".onnx")
    jetson = load_run_config(REPO / "configs" / "jetson_trt.yaml")
    assert jetson.run.policy == "live" and jetson.engines.maskrcnn.backend == "tensorrt"


@pytest.mark.parametrize("data, field", [
    ({"inputs": {}}, "inputs"),
    ({"run": {"policy": "fast"}}, "run.policy"),
    ({"run": {"rate": -1}}, "run.rate"),
    ({"sync": {"tolerance": 3}}, "sync.tolerance"),
    ({"masks": "engines", "engines": {"deeplab": {"model": "a.onnx"}}}, "engines.maskrcnn"),
    ({"engines": {"deeplab": {"model": "a.onnx", "backend": "tvm"}}}, "engines.deeplab.backend"),
    ({"fusion": {"min_depth_m": 0}}, "fusion.min_depth_m"),
    ({"sinks": {"overlay": {"mask_alpha": 2}}}, "sinks.overlay.mask_alpha"),
])
def test_config_errors_name_the_file_and_key(data, field):
    with pytest.raises(ConfigError) as e:
        parse_run_config(data, "my.yaml")
    assert e.value.path == "my.yaml" and e.value.field == field


# --- graph -------------------------------------------------------------------------------------

def _image_folder(path: Path, n: int, bad: tuple[int, ...] = ()) -> Path:
    import cv2

    path.mkdir()
    for i in range(n):
        f = path / f"{i:04d}.png"
        if i in bad:
            f.write_bytes(b"not a png")
        else:
            cv2.imwrite(str(f), np.full((8, 12, 3), i, np.uint8))
    return path


def _graph(folder: Path, stages, mode: str = "replay", sinks=(), **policy):
    from pipeline.graph import Graph, Policy
    from pipeline.sources.camera import OpenCVCameraSource

    src = OpenCVCameraSource(parse_uri(str(folder)), camera_id="cam", fps=10)
    sync = Synchronizer(SyncConfig(), has_lidar=False, has_poses=False, live=mode == "live")
    return src, Graph([src], sync, stages, Policy(mode, **policy), sinks=sinks)


@dataclass(frozen=True)
class Mark:
    value: int


@dataclass(frozen=True)
class Marks:
    a: int
    b: int


def test_graph_keeps_order_through_parallel_branches_and_counts_failures_and_skips(tmp_path):
    import threading
    import time

    from pipeline.graph import Parallel, Stage
    from pipeline.types import FrameResult, SyncedFrame

    folder = _image_folder(tmp_path / "imgs", 12, bad=(3,))
    seen: list[int] = []
    results: list[FrameResult] = []
    threads: dict[str, set[str]] = {"a": set(), "b": set()}

    def branch(name: str, delay_on_even: float):
        def fn(frame: SyncedFrame) -> Mark:
            threads[name].add(threading.current_thread().name)
            if frame.camera_seq % 2 == 0:
                time.sleep(delay_on_even)                 # the branches finish out of step
            return Mark(int(frame.camera.image[0, 0, 0]))
        return fn

    def check(frame: SyncedFrame, marks: Marks) -> None:
        if frame.camera_seq == 7:
            raise InputDataError("frame seven is bad", field="test")
        assert marks.a == marks.b == frame.camera_seq
        seen.append(frame.camera_seq)

    infer = Parallel("infer", [Stage("a", branch("a", 0.02), (SyncedFrame,), Mark),
                               Stage("b", branch("b", 0.0), (SyncedFrame,), Mark)],
                     Marks, lambda parts: Marks(parts[0].value, parts[1].value))
    src, g = _graph(folder, [infer, Stage("check", check, (SyncedFrame, Marks))], queue_depth=2,
                    sinks=[Stage("sink", results.append, (FrameResult,))])
    g.start()
    assert g.wait(30)
    g.raise_error()
    assert seen == [0, 1, 2, 4, 5, 6, 8, 9, 10, 11]                  # in order; 3 unreadable, 7 failed
    assert g.stats.failed == {"check": 1} and "frame seven" in g.stats.failures[0]
    assert [s.what for s in src.skipped] == ["image"]
    assert threads["a"] != threads["b"]                                # two branch threads
    assert set(g.stage_traces[0].stages) >= {"sync", "infer.a", "infer.b", "check", "sink"}
    # the sink saw each finished frame once, frozen, with the graph's counters at that moment
    assert [r.frame.camera_seq for r in results] == seen
    done = [r.counters.done for r in results]                          # the counters when each was made:
    assert done == sorted(done) and done[-1] <= len(seen) - 1            # never ahead of the frames themselves
    assert all(r.counters.failed <= 1 for r in results)
    assert all(r.received_ns > 0 and r.fusion is None for r in results)
    with pytest.raises(AttributeError):
        results[0].index = 5                                            # type: ignore[misc]


def test_graph_refuses_wiring_that_does_not_type_check(tmp_path):
    from pipeline.graph import Graph, Policy, Stage
    from pipeline.types import FrameResult, Masks, SyncedFrame

    sync = Synchronizer(SyncConfig(), has_lidar=False, has_poses=False, live=False)
    with pytest.raises(ValueError, match="takes Masks, which no stage before it gives"):
        Graph([object()], sync, [Stage("fuse", lambda f, m: None, (SyncedFrame, Masks))], Policy())
    with pytest.raises(ValueError, match="sink 'rec' must take"):
        Graph([object()], sync, [], Policy(), sinks=[Stage("rec", lambda f: None, (SyncedFrame,))])
    # a stage that gives the wrong type stops the run and names itself
    folder = _image_folder(tmp_path / "imgs", 3)
    _, g = _graph(folder, [Stage("masks", lambda f: "not masks", (SyncedFrame,), Masks)],
                  sinks=[Stage("sink", lambda r: None, (FrameResult,))])
    g.start()
    assert g.wait(30)
    with pytest.raises(TypeError, match="stage masks must give Masks, gave str"):
        g.raise_error()


def test_graph_stops_on_a_bug_and_re_raises_it(tmp_path):
    from pipeline.graph import Stage

    folder = _image_folder(tmp_path / "imgs", 6)

    def buggy(frame):
        if frame.camera_seq == 2:
            raise ZeroDivisionError("a bug")

    _, g = _graph(folder, [Stage("buggy", buggy)])
    g.start()
    assert g.wait(30)
    with pytest.raises(ZeroDivisionError):
        g.raise_error()


def test_graph_frame_budget_and_graceful_stop(tmp_path):
    from pipeline.graph import Stage

    folder = _image_folder(tmp_path / "imgs", 10)
    done: list[int] = []
    src, g = _graph(folder, [Stage("s", lambda f: done.append(f.camera_seq) and None)], frames=4)
    g.start()
    assert g.wait(30)
    assert done == [0, 1, 2, 3] and g.stats.stopped_by == "frames"


def test_video_file_source_gives_stamped_frames(tmp_path):
    import cv2

    from pipeline.sources.camera import OpenCVCameraSource

    path = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (32, 16))
    for i in range(5):
        vw.write(np.full((16, 32, 3), 40 * i, np.uint8))
    vw.release()
    src = OpenCVCameraSource(parse_uri(str(path)), camera_id="cam")
    items = list(src)
    src.close()
    assert src.info.kind == "video" and not src.info.live
    assert [i.seq for i in items] == [0, 1, 2, 3, 4]
    assert [i.stamp_ns // MS for i in items] == [0, 50, 100, 150, 200]
    assert items[0].frame.image.shape == (16, 32, 3)


def test_live_lidar_over_zenoh_opens_next_to_a_camera_and_needs_calibration(tmp_path):
    from pipeline.errors import CalibrationError
    from pipeline.sources import InputConfig
    from pipeline.sources import open_sources
    from pipeline.sources.zenoh_lidar import ZenohLidarSource

    folder = _image_folder(tmp_path / "imgs", 2)
    lidar = "zenoh://0/lidar/points?listen=tcp/127.0.0.1:0"
    with pytest.raises(CalibrationError, match="needs calibration"):
        open_sources(InputConfig(uri=str(folder), lidar=lidar))
    opened = open_sources(InputConfig(uri=str(folder), camera_id="camera_front", lidar=lidar,
                                      calibration=str(REPO / "calibration" / "examples" / "rig_example.yaml")))
    try:
        assert isinstance(opened.sources[1], ZenohLidarSource) and opened.lidar_id == "lidar_top"
    finally:
        opened.close()
    with pytest.raises(ConfigError, match="input.lidar"):
        open_sources(InputConfig(uri="zenoh://lidar/points"))
