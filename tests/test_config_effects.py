"""Every documented config key has an effect: for each key of the schema (docs/runtime.md's
reference), a non-default value changes something observable, on real data through real code.

``EFFECTS`` maps each key to (value, extra settings the key needs, probe). A probe runs the piece
of segfuse that reads the key (the sync, fusion on a real synthetic frame, the engine, the
postprocess, the graph, a whole run) and returns what can be observed; the test asserts the
value changes that observation. ``test_every_key_has_an_effect_check`` fails when a key is added
to the schema without an entry here: a key nobody can show an effect for goes.

TensorRT-only keys cannot run here (no TensorRT on these machines): their entry checks the
wiring instead (the TensorRT backend passes the key on to the builder or runtime); their effect
is asserted where TensorRT runs (tests/test_engines_tensorrt.py, skipped here).
"""
from __future__ import annotations

import ast
import copy
import hashlib
import io
import itertools
import json
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import schema_rows
from pipeline.errors import SegfuseError

REPO = Path(__file__).resolve().parents[1]
DEEPLAB = REPO / "models" / "deeplabv3plus_mobilenet_v3_small.onnx"
MASKRCNN = REPO / "models" / "maskrcnn_mobilenet_v3_small_fpn.onnx"
MS = 1_000_000

pytestmark = pytest.mark.slow


# --- shared data -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def drive(tmp_path_factory) -> Path:
    from pipeline.sim.simulate import simulate

    path = tmp_path_factory.mktemp("effects") / "drive"
    simulate(path, frames=3, seed=5, scale=0.3, progress=False, workers=1)
    return path


@pytest.fixture(scope="module")
def frame(drive):
    """The first synced frame of the drive with its sweep, poses and ground truth, and the rig."""
    from pipeline.sources import InputConfig, open_sources
    from pipeline.sync import SyncConfig, Synchronizer

    opened = open_sources(InputConfig(uri=str(drive)), want_truth=True)
    sync = Synchronizer(SyncConfig(lidar_offset_ms=50), has_lidar=True, has_poses=True, live=False)
    try:
        for item in opened.sources[0]:
            for f, _ in sync.push(item):
                if f.lidar is not None:
                    return f, opened.rig
    finally:
        opened.close()
    raise AssertionError("no paired frame")


def _digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# --- probes ----------------------------------------------------------------------------------
# Each takes (settings: the run-config mapping, ctx: dict of fixtures) and returns an observation;
# an exception is an observation too (the key was read and refused the value).

def _observe(probe, settings, ctx):
    try:
        return ("ok", probe(settings, ctx))
    except SegfuseError as exc:
        return ("refused", exc.field, type(exc).__name__)


def _get(settings: dict, dotted: str, default=None):
    d = settings
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def fusion_probe(settings, ctx):
    from pipeline.config import load_taxonomy
    from pipeline.fusion.config import FusionConfig
    from pipeline.fusion.label import InstanceMap
    from pipeline.stages import Fuse, GroundTruthMasks
    from pipeline.types import Masks

    f, rig = ctx["frame"]
    cfg = FusionConfig.from_dict(settings.get("fusion", {}))
    masks = GroundTruthMasks()(f)
    # ground-truth instances score 1; give them 0.6 so that min_instance_score can be seen
    maps = {k: InstanceMap(m.ids, m.class_of, np.where(m.score_of > 0, 0.6, 0).astype(np.float32))
            for k, m in masks.instance_maps.items()}
    res = Fuse(rig, cfg, load_taxonomy())(f, Masks(masks.semantic, masks.instances, maps))
    c = res.cloud
    return (_digest(c.class_id, c.instance_id, c.flags, c.camera_index), _digest(res.points_base),
            len(res.objects), tuple(round(float(o.centroid[0]), 3) for o in res.objects),
            tuple(tuple(np.round(ln.coeffs, 4)) for ln in res.lanes), res.ego_motion_applied)


def tracking_probe(settings, ctx):
    """The tracker on a scripted scene (the ego at 10 m/s): a car driving away along -x, one parked
    (occluded for frames 8-10), detections with varying sizes; every output track's id, centre,
    velocity, yaw, size, misses and trail length."""
    from pipeline.config import load_taxonomy
    from pipeline.tracking import Tracker, TrackerConfig
    from pipeline.types import Object3D

    tax = load_taxonomy()
    cfg = TrackerConfig.from_dict(settings.get("tracking", {}))
    tr = Tracker(cfg, tuple(tax.names))
    rng = np.random.default_rng(0)
    out = []
    for k in range(16):
        t = 0.1 * k
        T = np.eye(4)
        T[0, 3] = 10.0 * t
        objs = []
        for iid, (x, y) in ((1, (40.0 - 6.0 * t, 3.5)), (2, (25.0, -4.0))):
            if iid == 2 and 8 <= k <= 10:
                continue
            c = np.array([x - T[0, 3], y, 0.8]) + np.r_[rng.normal(0, 0.1, 2), 0.0]
            size = np.array([4.4 + 0.3 * (k % 3), 1.8, 1.5])
            objs.append(Object3D(iid, tax.id("car"), 0.9, c, c, size, 0.0, 30.0, 100))
        for trk in tr.update(objs, k * 100 * MS, T):
            out.append((k, trk.track_id, *np.round(trk.center[:2], 3), *np.round(trk.velocity, 3), round(trk.yaw, 3),
                        *np.round(trk.size, 3), trk.misses, len(trk.trail_base)))
    return tuple(out)


def sync_probe(settings, ctx):
    """Synthetic stamps: sweeps stamped 0, 100, 200 ms, cameras at 0, 105, 200 ms, poses every 10 ms.
    Replay: every frame decided by the data. Live: the third sweep never comes, the third camera
    arrives at 200 ms and the sync is polled at 360 ms (past the 150 ms default timeout)."""
    from pipeline.config import parse_section
    from pipeline.sources.base import CameraInput, LidarInput, PoseInput
    from pipeline.sync import SyncConfig, Synchronizer
    from pipeline.types import CameraFrame, LidarSweep

    cfg = parse_section(SyncConfig, settings.get("sync", {}), path="<test>", prefix="sync.")
    out = []
    for live in (False, True):
        s = Synchronizer(cfg, has_lidar=True, has_poses=True, live=live)
        got = []
        st = np.arange(0, 500, 10, dtype=np.int64) * MS
        got += s.push(PoseInput(st, np.tile(np.eye(4), (len(st), 1, 1)), int(st[-1])), 0)
        for i in range(3):
            if not (live and i == 2):
                got += s.push(LidarInput(LidarSweep("lidar", i * 100 * MS, np.zeros((2, 4), np.float32)), i), 0)
            cam_ns = i * 100 * MS + (5 * MS if i == 1 else 0)
            got += s.push(CameraInput(CameraFrame("cam", cam_ns, np.zeros((2, 2, 3), np.uint8)), i), i * 100 * MS)
        polled = s.poll(360 * MS) if live else []
        got += polled + s.flush()
        out.append(tuple((fr.lidar.stamp_ns if fr.lidar else None, fr.poses is not None) for fr, _ in got))
        out.append((len(polled), *s.stats.as_dict().values()))
    return tuple(out)


def _image_folder(path: Path, n: int = 5) -> Path:
    import cv2

    if not path.exists():
        path.mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(path / f"{i:04d}.png"), np.full((8, 12, 3), 10 * i, np.uint8))
    return path


def _nuscenes_folder(path: Path) -> Path:
    """A minimal nuScenes keyframe folder: one 160x90 camera, a LIDAR_TOP .pcd.bin of 12 points x
    5 float32 (240 bytes: also a whole number of 4-float records, so the layout decides)."""
    import cv2

    if not path.exists():
        path.mkdir(parents=True)
        cv2.imwrite(str(path / "s__CAM_FRONT__1.jpg"), np.zeros((90, 160, 3), np.uint8))
        np.arange(60, dtype="<f4").tofile(path / "s__LIDAR_TOP__1.pcd.bin")
        eye = np.eye(4).tolist()
        cam = {"img_path": "s__CAM_FRONT__1.jpg", "cam2img": [[100, 0, 80], [0, 100, 45], [0, 0, 1]],
               "lidar2cam": eye, "cam2ego": eye, "timestamp": 1.0}
        (path / "calib.json").write_text(json.dumps({"lidar_path": "s__LIDAR_TOP__1.pcd.bin", "lidar_timestamp": 1.0,
                                                     "num_pts_feats": 5, "lidar2ego": eye, "cameras": {"CAM_FRONT": cam},
                                                     "instances": []}))
    return path


def graph_probe(settings, ctx):
    """The graph on a 10-image folder with one slow stage (30 ms): frames done, dropped, capacity,
    and whether replay took at least the recorded duration (0.9 s at 10 frames/s)."""
    import time

    from pipeline.graph import Graph, Stage
    from pipeline.runner import RunOptions
    from pipeline.sources.camera import OpenCVCameraSource
    from pipeline.sources.uri import parse_uri
    from pipeline.sync import SyncConfig, Synchronizer
    from pipeline.config import parse_section

    opts = parse_section(RunOptions, settings.get("run", {}), path="<test>", prefix="run.")
    folder = _image_folder(ctx["tmp"] / "imgs", 10)
    src = OpenCVCameraSource(parse_uri(str(folder)), camera_id="cam", fps=10)
    sync = Synchronizer(SyncConfig(), has_lidar=False, has_poses=False, live=opts.policy == "live")
    g = Graph([src], sync, [Stage("slow", lambda f: time.sleep(0.03))], opts)
    t0 = time.monotonic()
    g.start()
    assert g.wait(30)
    g.raise_error()
    return g.stats.done, g.stats.dropped > 0, g.capacity, time.monotonic() - t0 >= 0.85


def input_probe(settings, ctx):
    """What open_sources opens from the input section: source kind and name, camera, rig cameras,
    and the first 7 items' stamps (an image folder of 5 with loop gives more)."""
    from pipeline.config import parse_section
    from pipeline.sources import InputConfig, open_sources

    inp = parse_section(InputConfig, settings.get("input", {}), path="<test>", prefix="input.")
    opened = open_sources(inp, want_truth=True)
    try:
        src = opened.sources[0]
        items = list(itertools.islice(iter(src), 7))
        stamps = tuple(getattr(i, "stamp_ns", None) for i in items)
        points = tuple(i.sweep.points.shape[0] for i in items if hasattr(i, "sweep"))
        return (src.info.kind, src.info.name, opened.camera_id, len(opened.sources),
                tuple(opened.rig.camera_names) if opened.rig else None, stamps, points)
    finally:
        opened.close()


def engine_probe(kind: str):
    def probe(settings, ctx):
        from engines.factory import create_engine, engine_config_from_dict

        section = {"model": str(DEEPLAB if kind == "deeplab" else MASKRCNN), **_get(settings, f"engines.{kind}", {})}
        ec = engine_config_from_dict({"kind": kind, **section}, path="<test>", prefix=f"engines.{kind}.")
        e = create_engine(ec)
        try:
            o = e.session.get_session_options()
            return (e.kind, e.precision, tuple(e.session.get_providers()), o.intra_op_num_threads,
                    o.inter_op_num_threads)
        finally:
            e.close()
    return probe


@pytest.fixture(scope="module")
def model_outputs(frame):
    """Both committed models' outputs on the drive frame (one inference each, shared)."""
    from engines.factory import create_engine
    from pipeline.preprocess import Batches, preprocess_frames
    from pipeline.types import ModelOutputs

    f, _ = frame
    out, batches = {}, {}
    for kind, model in (("deeplab", DEEPLAB), ("maskrcnn", MASKRCNN)):
        e = create_engine({"model": str(model), "kind": kind, "threads": 1})
        batches[kind] = preprocess_frames(f.cameras, e.input_hw)
        out[kind] = e.infer(batches[kind].feed())
        e.close()
    return Batches(batches), ModelOutputs(out)


def postprocess_probe(settings, ctx):
    """Mask R-CNN detections (scores, mask pixels) after Postprocess with the maskrcnn section's
    thresholds, and the preprocess transform for engines.resize."""
    from engines.factory import engine_config_from_dict
    from pipeline.config import load_taxonomy
    from pipeline.preprocess import make_transform
    from pipeline.stages import Postprocess

    batches, outputs = ctx["model_outputs"]
    section = dict(_get(settings, "engines.maskrcnn", {}))
    ec = engine_config_from_dict({"kind": "maskrcnn", "model": str(MASKRCNN), **section}, path="<test>",
                                 prefix="engines.maskrcnn.")
    masks = Postprocess(load_taxonomy(), ec.score_threshold, ec.mask_threshold)(batches, outputs)
    (inst,) = masks.instances.values()
    resize = _get(settings, "engines.resize", "letterbox")
    t = make_transform((375, 1242), (384, 1248), resize)
    return tuple(np.round(inst.scores, 3)), int(inst.masks.sum()), (t.scale_x, t.scale_y, t.pad_x, t.pad_y)


RUN_BASE = {"input": {}, "run": {"progress": False}, "sync": {"lidar_offset_ms": 50}, "masks": "ground_truth",
            "sinks": {"recorder": {"enabled": True}, "overlay": {"enabled": True}}}


def run_probe(settings, ctx):
    """A whole `segfuse run` of the 3-frame drive: the files it writes, the recording's topics,
    chunk compression and message digests, the overlay's frame rate and first frame, the summary's
    counts and mask provider, whether a progress bar was drawn, and the overlay's segment count."""
    import cv2
    from mcap.reader import make_reader

    from pipeline.run_config import parse_run_config
    from pipeline.runner import run_pipeline

    data = copy.deepcopy(settings)
    data["input"].setdefault("uri", str(ctx["drive"]))
    ctx["runs"] = ctx.get("runs", 0) + 1
    out = ctx["tmp"] / f"run{ctx['runs']}"
    data["out"] = str(out / data.get("out", "o"))
    if data.get("masks") == "engines":
        data.setdefault("engines", {}).setdefault("deeplab", {"model": str(DEEPLAB), "threads": 1})
        data["engines"].setdefault("maskrcnn", {"model": str(MASKRCNN), "threads": 1})
    err = io.StringIO()
    with redirect_stderr(err):
        summary = run_pipeline(parse_run_config(data, "<test>"))
    files = tuple(sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()))
    topics, compression, digest = (), (), ""
    if summary["recording"]:
        (mcap_file,) = Path(summary["recording"]).glob("*.mcap")
        with open(mcap_file, "rb") as fh:
            reader = make_reader(fh)
            s = reader.get_summary()
            topics = tuple(sorted(c.topic for c in s.channels.values()))
            compression = tuple(sorted({ci.compression for ci in s.chunk_indexes}))
            h = hashlib.sha1()
            for _, ch, msg in reader.iter_messages():
                if ch.topic not in ("/segfuse/run_info",):
                    h.update(ch.topic.encode() + msg.data)
            digest = h.hexdigest()
    fps, first = None, None
    if summary["overlay"]:
        cap = cv2.VideoCapture(summary["overlay"])
        fps = round(cap.get(cv2.CAP_PROP_FPS), 2)
        cap.release()
        first = _digest(cv2.imread(str(Path(summary["overlay"]).with_name("overlay_first.png"))))
    return (files, topics, compression, digest, fps, first, summary["frames"]["done"], summary["masks_label"],
            "segfuse run" in err.getvalue(), summary["published"] is not None, summary.get("liveview") is not None,
            summary.get("overlay_segments"))


def _publisher_cfg(settings):
    from pipeline.config import parse_section
    from pipeline.sinks.publisher import PublisherConfig

    d = {"enabled": True, "listen": ["tcp/127.0.0.1:0"], **(_get(settings, "sinks.publisher", {}) or {})}
    return parse_section(PublisherConfig, d, path="<test>", prefix="sinks.publisher.")


def session_probe(settings, ctx):
    """The Zenoh session config a publisher opens with (no session opened)."""
    from pipeline.sinks.publisher import session_config

    conf = session_config(_publisher_cfg(settings))
    return tuple(conf.get_json(k) for k in ("mode", "connect/endpoints", "listen/endpoints", "scouting/multicast/enabled",
                                            "transport/shared_memory/enabled", "scouting/gossip/enabled"))


def publisher_probe(settings, ctx):
    """A ZenohPublisher opened from sinks.publisher on loopback: its key expressions, congestion
    control, shared-memory pool, and whether it waited at start."""
    import time

    from pipeline.config import load_taxonomy
    from pipeline.sinks.publisher import ZenohPublisher

    cfg = _publisher_cfg(settings)
    _, rig = ctx["frame"]
    t0 = time.monotonic()
    pub = ZenohPublisher(cfg, rig, load_taxonomy(), camera_id=rig.camera_names[0], lidar_id=rig.lidar_names[0])
    try:
        waited = time.monotonic() - t0 > 0.25
        return tuple(sorted(pub.keys.values())), str(pub.congestion_control), pub.shm_pool_bytes, waited
    finally:
        pub.close()


def liveview_probe(settings, ctx):
    """A LiveView opened from sinks.liveview (port 0 and every frame sent unless the settings say
    otherwise), a foxglove.sdk.v1 client that connects after it started (so wait_clients_s
    waits), six frames written: where it listens, whether it waited, frames skipped, whether a
    client's outbox overflowed, and the blended camera image it sent."""
    import sys
    import time

    from pipeline.config import load_taxonomy, parse_section
    from pipeline.errors import ConfigError
    from pipeline.fusion.config import FusionConfig
    from pipeline.sinks.liveview import LiveView, LiveViewConfig
    from pipeline.stages import Fuse, GroundTruthMasks
    from pipeline.types import FrameResult

    sys.path.insert(0, str(REPO / "tests"))
    from live_clients import FoxgloveClient

    d = {"enabled": True, "port": 0, "max_rate_hz": 0.0, **(_get(settings, "sinks.liveview", {}) or {})}
    try:
        cfg = parse_section(LiveViewConfig, d, path="<test>", prefix="sinks.liveview.")
    except ConfigError as exc:
        if exc.field == "sinks.liveview.host":
            return ("host refused",)
        raise
    f, rig = ctx["frame"]
    if "lv_result" not in ctx:
        masks = GroundTruthMasks()(f)
        fusion = Fuse(rig, FusionConfig.from_dict({}), load_taxonomy())(f, masks)
        ctx["lv_result"] = FrameResult(0, f, masks, fusion, 0)
    t0 = time.monotonic()
    lv = LiveView(cfg, rig, load_taxonomy(), camera_id=rig.camera_names[0], lidar_id=rig.lidar_names[0])
    waited = time.monotonic() - t0 > 0.25
    client = FoxgloveClient(lv.port, host=cfg.host if cfg.host != "localhost" else "127.0.0.1", timeout_s=20)
    try:
        assert client.subscribed.wait(20) and lv.wait_for_clients(10)
        for _ in range(6):
            lv.write(ctx["lv_result"])
        deadline = time.monotonic() + 20
        while lv.sent_frames + lv.dropped_frames + lv.skipped_rate < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
    finally:
        lv.close()
        client.join(10)
    blended = [p for c, _, p in client.messages if client.channels[c]["topic"].endswith("/blended")]
    return (lv.url.split("://")[1].rsplit(":", 1)[0], lv.port if cfg.port else "ephemeral", waited,
            lv.dropped_frames, lv.skipped_rate, lv.client_backlog_full > 0,
            hashlib.sha1(blended[0]).hexdigest() if blended else None)


def lossy_queue_probe(settings, ctx):
    """sinks.liveview.queue_frames is the depth of the graph's lossy-sink queue the runner gives the
    live view: 10 frames into a sink that takes 50 ms each; how many it never got."""
    import time

    from pipeline.config import parse_section
    from pipeline.graph import Graph, Policy, Stage
    from pipeline.sinks.liveview import LiveViewConfig
    from pipeline.sources.camera import OpenCVCameraSource
    from pipeline.sources.uri import parse_uri
    from pipeline.sync import SyncConfig, Synchronizer
    from pipeline.types import FrameResult

    cfg = parse_section(LiveViewConfig, _get(settings, "sinks.liveview", {}) or {}, path="<test>",
                        prefix="sinks.liveview.")
    src = OpenCVCameraSource(parse_uri(str(_image_folder(ctx["tmp"] / "imgs", 10))), camera_id="cam", fps=10)
    g = Graph([src], Synchronizer(SyncConfig(), has_lidar=False, has_poses=False, live=False),
              [Stage("pass", lambda f: None)], Policy(),
              sinks=[Stage("liveview", lambda r: time.sleep(0.05), (FrameResult,), lossy=cfg.queue_frames)])
    g.start()
    assert g.wait(30)
    g.raise_error()
    return g.stats.sink_dropped.get("liveview", 0)


def wiring_check(module: str, function: str, attr: str):
    """For keys only TensorRT reads: ``function`` in ``module`` passes ``config.<attr>`` on."""
    def probe(settings, ctx):
        src = (REPO / module).read_text()
        tree = ast.parse(src)
        fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
        used = {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                and n.value.id == "config"}
        return attr in used
    probe.wiring = True
    return probe


TRT = ("engines/tensorrt_backend.py", "engine_from_config")
F, S, G, I, R, P = fusion_probe, sync_probe, graph_probe, input_probe, run_probe, publisher_probe
D, M, PP = engine_probe("deeplab"), engine_probe("maskrcnn"), postprocess_probe

# key: (value, extra settings the key needs to show itself, probe)
EFFECTS = {
    "input.uri": ("IMAGES", {}, I),
    "input.calibration": (str(REPO / "calibration" / "examples" / "rig_example.yaml"), {"input": {"uri": "IMAGES"}}, I),
    "input.lidar": ("zenoh://0/lidar/points?listen=tcp/127.0.0.1:0", {}, I),
    "input.topics": ({"points": "/nope/points"}, {}, I),
    "input.camera_id": ("camera_rear", {"input": {"uri": "IMAGES", "calibration": str(REPO / "calibration" /
                                                                                       "examples" / "rig_example.yaml")}}, I),
    "input.fps": (5.0, {"input": {"uri": "IMAGES"}}, I),
    "input.loop": (True, {"input": {"uri": "IMAGES"}}, I),
    "input.cloud_fields": ("x,y,z,intensity", {"input": {"uri": "NUSCENES"}}, I),
    "run.policy": ("live", {}, G),
    "run.rate": (1.0, {}, G),
    "run.frames": (2, {}, G),
    "run.queue_depth": (5, {}, G),
    "run.progress": (True, {}, R),
    "sync.tolerance_ms": (1.0, {}, S),
    "sync.camera_offset_ms": (50.0, {}, S),
    "sync.lidar_offset_ms": (50.0, {}, S),
    "sync.offsets_ms": ({"lidar": 100.0}, {}, S),
    "sync.lidar_timeout_ms": (500.0, {}, S),
    "sync.use_poses": (False, {}, S),
    "masks": ("engines", {}, R),
    "engines.deeplab": (None, {"masks": "engines", "engines": {"maskrcnn": {"model": str(MASKRCNN)}}}, R),
    "engines.maskrcnn": (None, {"masks": "engines", "engines": {"deeplab": {"model": str(DEEPLAB)}}}, R),
    "engines.resize": ("pad", {}, PP),
    "engines.deeplab.model": (str(MASKRCNN), {}, D),
    "engines.deeplab.kind": ("maskrcnn", {}, D),
    "engines.deeplab.backend": ("tensorrt", {}, D),
    "engines.deeplab.precision": ("fp16", {}, D),
    "engines.deeplab.device": ("cuda", {}, D),
    "engines.deeplab.threads": (1, {}, D),
    "engines.deeplab.inter_op_threads": (2, {}, D),
    "engines.deeplab.device_id": (1, {}, D),
    "engines.deeplab.dla_core": (0, {}, D),
    "engines.deeplab.score_threshold": (0.9, {}, D),       # refused: DeepLab has no scores
    "engines.deeplab.mask_threshold": (0.9, {}, D),
    "engines.maskrcnn.score_threshold": (0.9, {}, PP),
    "engines.maskrcnn.mask_threshold": (0.9, {}, PP),
    "sinks.recorder.enabled": (False, {}, R),
    "sinks.recorder.compression": ("zstd", {}, R),
    "sinks.recorder.camera_image": (True, {}, R),
    "sinks.overlay.enabled": (False, {}, R),
    "sinks.overlay.fps": (5.0, {}, R),
    "sinks.overlay.mask_alpha": (0.0, {}, R),
    "sinks.overlay.every_n_frames": (2, {}, R),            # the video's rate halves
    "sinks.overlay.segment_frames": (1, {}, R),           # one closed segment per frame
    "out": ("elsewhere", {}, R),
}
for _k in ("min_depth_m", "occlusion", "splat_half_px", "occlusion_tol_m", "occlusion_tol_rel", "occlusion_tol_sq",
           "occlusion_mask_check", "edge_mode", "min_instance_score", "ego_motion", "object_cluster_eps_m",
           "object_min_points", "ground_ransac_dist_m", "lane_min_points", "lane_max_range_m"):
    EFFECTS[f"fusion.{_k}"] = ({"min_depth_m": 12.0, "occlusion": False, "splat_half_px": [4, 8],
                                "occlusion_tol_m": 0.02, "occlusion_tol_rel": 0.0, "occlusion_tol_sq": 0.0,
                                "occlusion_mask_check": False, "edge_mode": "depth_gate", "min_instance_score": 0.9,
                                "ego_motion": False, "object_cluster_eps_m": 0.05, "object_min_points": 400,
                                "ground_ransac_dist_m": 0.001, "lane_min_points": 400, "lane_max_range_m": 8.0}[_k],
                               {}, F)
EFFECTS["fusion.instance_refinement"] = (False, {}, F)
EFFECTS["fusion.instance_ground_clearance_m"] = (0.5, {}, F)
EFFECTS["fusion.instance_box_margin_m"] = (3.0, {"fusion": {"object_cluster_eps_m": 0.2}}, F)
EFFECTS["tracking.enabled"] = (False, {}, R)
for _k, _v in (("gate_m", 0.05), ("min_hits", 4), ("max_misses", 1), ("output_misses", 0), ("output_tentative", True),
               ("accel_std_mps2", 20.0), ("measurement_std_m", 3.0), ("init_velocity_std_mps", 0.5),
               ("size_smoothing", 1.0), ("heading_min_speed_mps", 100.0), ("trail_length", 2)):
    EFFECTS[f"tracking.{_k}"] = (_v, {}, tracking_probe)
EFFECTS["fusion.erode_px"] = (8, {"fusion": {"edge_mode": "erode"}}, F)
EFFECTS["fusion.depth_gate_gap_m"] = (0.1, {"fusion": {"edge_mode": "depth_gate"}}, F)
EFFECTS["fusion.multi_camera"] = ("score", {}, "MULTI")
for _k, _v in (("mode", "client"), ("connect", ["tcp/127.0.0.1:1"]), ("listen", ["tcp/127.0.0.1:0", "tcp/[::1]:0"]),
               ("shared_memory", True), ("multicast_scouting", True), ("config_file", "ZENOH_JSON5")):
    EFFECTS[f"sinks.publisher.{_k}"] = (_v, {}, session_probe)
EFFECTS["sinks.publisher.shm_pool_mb"] = (8, {"sinks": {"publisher": {"shared_memory": True}}}, P)
for _k, _v in (("domain_id", 7), ("qos", "reliable"), ("wait_subscribers_s", 0.3)):
    EFFECTS[f"sinks.publisher.{_k}"] = (_v, {}, P)
EFFECTS["sinks.publisher.enabled"] = (True, {}, R)
EFFECTS["sinks.liveview.enabled"] = (True, {"sinks": {"liveview": {"port": 0}}}, R)
EFFECTS["sinks.liveview.queue_frames"] = (6, {}, lossy_queue_probe)
for _k, _v, _extra in (("host", "localhost", {}), ("port", 48731, {}), ("backlog", 1, {}),
                       ("allow_remote", True, {"sinks": {"liveview": {"host": "127.0.0.2"}}}),
                       ("tls_cert", str(REPO / "README.md"), {}), ("tls_key", str(REPO / "README.md"), {}),
                       ("blend_alpha", 0.9, {}), ("wait_clients_s", 0.5, {}), ("max_rate_hz", 10.0, {})):
    EFFECTS[f"sinks.liveview.{_k}"] = (_v, _extra, liveview_probe)  # tls alone: refused (cert and key together)
for _k in ("cache_dir", "workspace_mb", "cuda_graph", "max_batch", "calibration", "calibration_frames"):
    EFFECTS[f"engines.deeplab.{_k}"] = (None, {}, wiring_check(*TRT, _k))
# read where TensorRT is found unusable (tests/test_engines_gpu_path.py shows the fallback's effect)
EFFECTS["engines.deeplab.fallback"] = (None, {}, wiring_check("engines/factory.py", "create_engine", "fallback"))
for _k in [r["key"].split(".", 2)[2] for r in schema_rows(__import__("engines.factory", fromlist=["x"]).EngineConfig,
                                                            "engines.x.")]:
    _dk = f"engines.deeplab.{_k}"
    if _dk in EFFECTS and f"engines.maskrcnn.{_k}" not in EFFECTS:
        EFFECTS[f"engines.maskrcnn.{_k}"] = ("SAME_AS_DEEPLAB", {}, None)


def test_every_key_has_an_effect_check():
    from pipeline.run_config import RunConfig

    keys = [r["key"] for r in schema_rows(RunConfig)]
    missing = [k for k in keys if k not in EFFECTS]
    assert not missing, f"config keys with no effect check (add one, or remove the key): {missing}"
    stale = [k for k in EFFECTS if k not in keys]
    assert not stale, f"effect checks for keys that no longer exist: {stale}"


def _set(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


@pytest.fixture(scope="module")
def ctx(drive, frame, model_outputs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("effects-ctx")
    zjson = tmp / "zenoh.json5"
    zjson.write_text('{ "scouting": { "gossip": { "enabled": false } } }')
    return {"drive": drive, "frame": frame, "model_outputs": model_outputs, "tmp": tmp, "zenoh_json5": str(zjson),
            "images": str(_image_folder(tmp / "input-images")), "nuscenes": str(_nuscenes_folder(tmp / "nuscenes"))}


def _resolve(value, ctx):
    if value == "IMAGES":
        return ctx["images"]
    if value == "NUSCENES":
        return ctx["nuscenes"]
    if value == "ZENOH_JSON5":
        return ctx["zenoh_json5"]
    if isinstance(value, dict):
        return {k: _resolve(v, ctx) for k, v in value.items()}
    return value


@pytest.mark.parametrize("key", sorted(k for k in EFFECTS if EFFECTS[k][2] not in (None, "MULTI")))
def test_key_changes_something_observable(key, ctx):
    value, extra, probe = EFFECTS[key]
    if getattr(probe, "wiring", False):
        assert probe({}, ctx), f"{key}: the TensorRT backend never reads config.{key.rsplit('.', 1)[1]}"
        return
    base = _resolve(_merge(RUN_BASE if probe is R else {"input": {"uri": str(ctx["drive"])}}, extra), ctx)
    changed = copy.deepcopy(base)
    _set(changed, key, _resolve(value, ctx))
    before, after = _observe(probe, base, ctx), _observe(probe, changed, ctx)
    assert before[0] == "ok", f"{key}: the baseline itself was refused: {before}"
    assert after != before, f"{key}: {value!r} changed nothing observable"


def test_maskrcnn_keys_match_the_deeplab_ones_and_are_probed_by_the_same_code():
    """engines.maskrcnn.X reads the same EngineConfig field as engines.deeplab.X (one dataclass):
    checked by the deeplab probes above; here, that both sections parse to the same class."""
    from pipeline.run_config import parse_run_config

    cfg = parse_run_config({"masks": "engines", "engines": {"deeplab": {"model": str(DEEPLAB), "threads": 3},
                                                            "maskrcnn": {"model": str(MASKRCNN), "threads": 3}}})
    assert type(cfg.engines.deeplab) is type(cfg.engines.maskrcnn) and cfg.engines.maskrcnn.threads == 3
    same = [k for k, v in EFFECTS.items() if v[0] == "SAME_AS_DEEPLAB"]
    assert same and all(f"engines.deeplab.{k.split('.', 2)[2]}" in EFFECTS for k in same)


def test_multi_camera_rule_changes_the_camera_a_shared_point_takes(ctx):
    """fusion.multi_camera: the drive's camera twice in one rig, the second one's instances
    scored higher; border takes the first (ties keep the earlier camera), score the second."""
    from dataclasses import replace

    from pipeline.config import load_taxonomy
    from pipeline.fusion.config import FusionConfig
    from pipeline.fusion.label import InstanceMap
    from pipeline.stages import Fuse, GroundTruthMasks
    from pipeline.types import CameraFrame, Masks

    f, rig = ctx["frame"]
    cam = rig.cameras[0]
    twin = replace(cam, name=cam.name + "_twin")
    rig2 = replace(rig, cameras=[cam, twin]) if hasattr(rig, "cameras") else None
    masks = GroundTruthMasks()(f)
    m = masks.instance_maps[cam.name]
    hi = InstanceMap(m.ids, m.class_of, np.where(m.score_of > 0, 0.99, 0).astype(np.float32))
    lo = InstanceMap(m.ids, m.class_of, np.where(m.score_of > 0, 0.6, 0).astype(np.float32))
    frame2 = replace(f, cameras=[f.cameras[0], CameraFrame(twin.name, f.cameras[0].stamp_ns, f.cameras[0].image)])
    both = Masks({cam.name: masks.semantic[cam.name], twin.name: masks.semantic[cam.name]}, {},
                 {cam.name: lo, twin.name: hi})
    got = {}
    for rule in ("border", "score"):
        res = Fuse(rig2, FusionConfig.from_dict({"multi_camera": rule}), load_taxonomy())(frame2, both)
        inst = res.cloud.instance_id >= 0
        got[rule] = np.bincount(res.cloud.camera_index[inst].astype(np.int64), minlength=2)
    assert got["border"][0] > 0 and got["border"][1] == 0
    assert got["score"][1] > 0 and got["score"][1] > got["score"][0]


def test_score_threshold_point_nine_removes_every_detection_below_it(ctx):
    """The issue's must-show: engines.maskrcnn.score_threshold: 0.9 keeps only detections >= 0.9,
    where the default 0.5 keeps some between 0.5 and 0.9 on the same frame."""
    default = postprocess_probe({}, ctx)[0]
    strict = postprocess_probe({"engines": {"maskrcnn": {"score_threshold": 0.9}}}, ctx)[0]
    assert any(0.5 < s < 0.9 for s in default), f"the frame has no detection between 0.5 and 0.9: {default}"
    assert strict and all(s > 0.9 for s in strict)
    assert len(strict) < len(default)
