"""The real samples in ../shared/data (skipped when absent): nuScenes keyframe (5-field cloud, ego
base frame, six cameras fused in one run), KITTI object folders (10 frames, own sizes and
calibration), KITTI raw stamps in both timestamp layouts, labelled boxes as truth for eval."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parent.parent
KITTI_IN_IMAGE = {0: 20285, 1: 18630, 2: 20210, 3: 18911, 4: 19063, 5: 19962, 6: 19473, 7: 19423, 8: 17238, 9: 19411}
SIZES = {0: (1224, 370), 6: (1238, 374)}


@pytest.fixture
def nuscenes(shared_data: Path) -> Path:
    p = shared_data / "nuscenes_sample"
    if not (p / "calib.json").is_file():
        pytest.skip("nuScenes sample not found")
    return p


def _run(config: str, uri: Path, out: Path, frames: int | None = None, **overrides):
    from pipeline.run_config import load_run_config
    from pipeline.runner import render_summary, run_pipeline

    cfg = load_run_config(REPO / "configs" / config).with_overrides(input=str(uri), out=str(out), frames=frames)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    s = run_pipeline(cfg, progress=False)
    print(render_summary(s))
    return s


def test_nuscenes_cloud_has_five_fields(nuscenes: Path):
    from pipeline.cloud_io import read_cloud

    path = next(nuscenes.glob("*LIDAR_TOP*.pcd.bin"))
    pts = read_cloud(path).points                        # .pcd.bin: the nuScenes layout
    assert pts.shape == (34688, 4)
    assert np.linalg.norm(pts[:, :3], axis=1).max() == pytest.approx(102.9, abs=0.05)
    as_kitti = read_cloud(path, fields="x,y,z,intensity")  # the old misreading, only when declared
    assert as_kitti.points.shape[0] == 43360


def test_cloud_layout_sidecar_and_refusal(tmp_path: Path):
    from pipeline.cloud_io import read_cloud
    from pipeline.errors import InputDataError

    raw = np.arange(42, dtype="<f4").reshape(7, 6)       # x, y, z, pad, intensity, ring
    f = tmp_path / "scan.bin"
    raw.tofile(f)
    with pytest.raises(InputDataError, match="not a multiple of 16"):
        read_cloud(f)                                    # 168 bytes fit no 4-float layout
    (tmp_path / "scan.bin.fields").write_text("x,y,z,_,intensity,ring\n")
    pts = read_cloud(f).points
    np.testing.assert_array_equal(pts[:, :3], raw[:, :3])
    np.testing.assert_array_equal(pts[:, 3], raw[:, 4])
    with pytest.raises(InputDataError, match="not a multiple of 20"):
        read_cloud(f, fields="x,y,z,intensity,ring")
    with pytest.raises(InputDataError, match="no 'z'"):
        read_cloud(f, fields="x,y,intensity")


def test_nuscenes_rig_is_ego_frame_x_forward(nuscenes: Path):
    from calibration.io import load_rig

    rig = load_rig(nuscenes / "calib.json")
    assert rig.base_frame == "base_link" and len(rig.cameras) == 6
    axis = rig.camera("CAM_FRONT").T_base_from_cam[:3, 2]             # optical axis in the base frame
    assert np.degrees(np.arccos(axis @ [1, 0, 0])) < 10
    back = rig.camera("CAM_BACK").T_base_from_cam[:3, 2]
    assert back[0] < -0.98
    data = json.loads((nuscenes / "calib.json").read_text())
    for name, cam in data["cameras"].items():                         # projection is still exactly lidar2cam
        np.testing.assert_allclose(rig.T_cam_from_lidar(name), np.array(cam["lidar2cam"]), atol=1e-6)
    assert load_rig(nuscenes).kind == "nuscenes"                      # the folder works too


def test_nuscenes_run_fuses_all_six_cameras_and_eval(nuscenes: Path, tmp_path: Path):
    from pipeline.evaluation import evaluate_recording, render_table

    s = _run("nuscenes.yaml", nuscenes, tmp_path / "run")
    assert s["frames"]["done"] == 1 and s["sync"]["paired"] == 1 and s["oracle"]
    by = s["points_by_camera"]
    assert set(by) == {"CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"}
    assert all(v["points"] > 500 for v in by.values()), by
    assert all(v["labelled"] > 0 for v in by.values()), by
    import cv2

    mosaic = cv2.imread(str(tmp_path / "run" / "overlay_first.png"))
    assert mosaic.shape == (720, 1920, 3)                               # two rows of three 640x360 panels
    from pipeline.drive.rosbag import open_bag

    bag = open_bag(tmp_path / "run" / "recording")
    topics = {c.topic for c in bag.connections}
    bag.close()
    assert {f"/segfuse/{c}/{k}" for c in by for k in ("semantic", "instance", "camera_info")} <= topics
    m = evaluate_recording(tmp_path / "run" / "recording", nuscenes)
    print(render_table(m))
    assert m["oracle"] and m["frames"]["evaluated"] == 1
    assert m["points"]["class_accuracy"] > 0.8
    assert m["instances"]["recall"] > 0.5 and m["instances"]["precision"] > 0.2
    assert m["objects"]["matched"] >= 5


def test_every_point_in_view_takes_its_cameras_label(nuscenes: Path):
    """Each camera's mask says its own index everywhere: every in-view point must carry the
    class of the camera the multi-camera rule gave it to."""
    from calibration.io import load_rig
    from pipeline.config import load_taxonomy
    from pipeline.datasets.readers import NuScenesSample
    from pipeline.fusion.config import FusionConfig
    from pipeline.fusion.frame import CameraMasks, fuse_frame
    from pipeline.types import FLAG_OUTSIDE

    tax = load_taxonomy()
    rig = load_rig(nuscenes)
    f = NuScenesSample(nuscenes).read()
    masks = [CameraMasks(c.camera_id, c.stamp_ns, np.full(c.image.shape[:2], k, np.uint8), None)
             for k, c in enumerate(f.cameras)]
    res = fuse_frame(f.lidar, masks, rig, FusionConfig(ego_motion=False, occlusion=False), tax)
    cloud = res.cloud
    inside = (cloud.flags & FLAG_OUTSIDE) == 0
    assert inside.sum() > 20000
    np.testing.assert_array_equal(cloud.class_id[inside], cloud.camera_index[inside])
    counts = np.bincount(cloud.camera_index[inside], minlength=6)
    print(dict(zip([c.camera_id for c in f.cameras], counts.tolist())))
    assert (counts > 500).all()


def test_kitti_object_folder_runs_all_frames_with_their_own_sizes(kitti_object: Path, tmp_path: Path):
    from pipeline.datasets.readers import KittiObjectFolder
    from pipeline.evaluation import evaluate_recording, read_recording, render_table
    from pipeline.types import FLAG_OUTSIDE

    ds = KittiObjectFolder(kitti_object)
    sizes = {k: (ds.rig(k).camera("cam2").width, ds.rig(k).camera("cam2").height) for k in range(10)}
    assert sizes[0] == SIZES[0] and sizes[6] == SIZES[6] and sizes[1] == (1242, 375)
    s = _run("kitti_object.yaml", kitti_object, tmp_path / "run")
    assert s["frames"]["done"] == 10 and s["frames"]["fused_clouds"] == 10 and not s["skipped_inputs"]["total"]
    rec = read_recording(tmp_path / "run" / "recording")
    for k, stamp in enumerate(sorted(rec["clouds"])):
        inside = int(((rec["clouds"][stamp]["flags"] & FLAG_OUTSIDE) == 0).sum())
        assert abs(inside - KITTI_IN_IMAGE[k]) <= 0.002 * KITTI_IN_IMAGE[k], (k, inside)
    m = evaluate_recording(tmp_path / "run" / "recording", kitti_object)
    print(render_table(m))
    assert m["frames"]["evaluated"] == 10
    assert m["points"]["class_accuracy"] > 0.95
    assert m["instances"]["recall"] > 0.7 and m["instances"]["precision"] > 0.4
    assert m["objects"]["recall"] > 0.7 and m["objects"]["centroid_to_true_centre_m"]["median"] < 2.0


def _kitti_raw_drive(tmp: Path, shared: Path, *, layout: str) -> Path:
    """A KITTI raw folder of 11 frames with the real timestamp files: ``same`` (start/end with one
    line per frame, drive 0001), ``clip`` (drive 0001's first 11 frames, its full 108-line
    start/end files), ``unidentified`` (the 11-scan clip with its 361-line start/end files;
    cameras stamped at the mid-sweep stamps), ``none`` (no start/end files)."""
    import cv2

    raw = shared / "kitti_raw" / "2011_09_26"
    day = tmp / "2011_09_26"
    drive = day / f"2011_09_26_drive_{layout}_sync"
    (drive / "image_02" / "data").mkdir(parents=True)
    (drive / "velodyne_points" / "data").mkdir(parents=True)
    for f in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt", "calib_imu_to_velo.txt"):
        shutil.copy(raw / f, day / f)
    d1, du = raw / "2011_09_26_drive_0001_sync", raw / "2011_09_26_drive_unidentified_sync"
    lines = lambda p, n=None: p.read_text().splitlines()[:n]  # noqa: E731
    vp = drive / "velodyne_points"
    if layout == "unidentified":
        cam = lines(du / "velodyne_points" / "timestamps.txt")
        shutil.copy(du / "velodyne_points" / "timestamps.txt", vp / "timestamps.txt")
        for f in ("timestamps_start.txt", "timestamps_end.txt"):
            shutil.copy(du / "velodyne_points" / f, vp / f)
    else:
        cam = lines(d1 / "image_02" / "timestamps.txt", 11)
        (vp / "timestamps.txt").write_text("\n".join(lines(d1 / "velodyne_points" / "timestamps.txt", 11)) + "\n")
        for f in ("timestamps_start.txt", "timestamps_end.txt"):
            if layout == "same":
                (vp / f).write_text("\n".join(lines(d1 / "velodyne_points" / f, 11)) + "\n")
            elif layout == "clip":
                shutil.copy(d1 / "velodyne_points" / f, vp / f)
    (drive / "image_02" / "timestamps.txt").write_text("\n".join(cam) + "\n")
    image = np.zeros((375, 1242, 3), np.uint8)
    for k in range(11):
        cv2.imwrite(str(drive / "image_02" / "data" / f"{k:010d}.png"), image)
        (vp / "data" / f"{k:010d}.bin").symlink_to(du / "velodyne_points" / "data" / f"{k:010d}.bin")
    return drive


@pytest.mark.parametrize("layout", ["same", "clip", "unidentified", "none"])
def test_kitti_raw_pairs_every_frame_in_every_timestamp_layout(shared_data: Path, tmp_path: Path, layout: str):
    from pipeline.run_config import load_run_config
    from pipeline.sources.drive import DriveSource
    from pipeline.sources.uri import parse_uri
    from pipeline.sync import Synchronizer

    if not (shared_data / "kitti_raw").is_dir():
        pytest.skip("KITTI raw sample not found")
    drive = _kitti_raw_drive(tmp_path, shared_data, layout=layout)
    cfg = load_run_config(REPO / "configs" / "kitti.yaml")           # lidar_offset_ms 50, tolerance 30
    src = DriveSource(parse_uri(str(drive)))
    sync = Synchronizer(cfg.sync, has_lidar=True, has_poses=True, live=False)
    out = []
    for item in src:
        out += sync.push(item)
    out += sync.flush()
    src.close()
    assert len(out) == 11 and sync.stats.paired == 11, sync.stats
    assert sync.stats.max_pair_dt_ns < 15_000_000


def test_calib_show_takes_a_kitti_raw_drive_folder(shared_data: Path):
    from calibration.io import load_rig

    rig = load_rig(shared_data / "kitti_raw" / "2011_09_26" / "2011_09_26_drive_0001_sync")
    assert rig.kind == "kitti_raw" and rig.default_camera.name == "cam02"


def test_fuse_cli_defaults_to_kittis_colour_camera(kitti_object: Path, tmp_path: Path):
    import cv2

    from pipeline.fusion.offline import fuse_files

    sem = np.zeros((375, 1242), np.uint8)
    cv2.imwrite(str(tmp_path / "sem.png"), sem)
    s = fuse_files(rig_path=kitti_object / "calib" / "000001.txt", cloud_path=kitti_object / "velodyne" / "000001.bin",
                   semantic_path=tmp_path / "sem.png", instances_path=None, instances_meta_path=None,
                   out=tmp_path / "out")
    from pipeline.types import FLAG_OUTSIDE

    c = s.result.cloud
    inside = (c.flags & FLAG_OUTSIDE) == 0
    assert int(inside.sum()) == pytest.approx(KITTI_IN_IMAGE[1], rel=0.002)      # cam2, P2 (the reference figure)
    assert (c.class_id[inside & ((c.flags & 2) == 0)] == 0).all()


def test_committed_models_on_real_data_say_so(kitti_object: Path, tmp_path: Path):
    from pipeline.model_notes import SYNTHETIC_ONLY_NOTE

    s = _run("kitti.yaml", kitti_object, tmp_path / "run", frames=1, masks="engines")
    assert s["note"] == SYNTHETIC_ONLY_NOTE and s["frames"]["done"] == 1
    from pipeline.runner import render_summary

    assert sum("segfuse engines export" in line for line in render_summary(s).splitlines()) == 1


@pytest.mark.slow
def test_nuscenes_six_cameras_through_the_models(nuscenes: Path, tmp_path: Path):
    """masks: engines on the six-camera set: each camera through each (batch-1) model, every camera
    fused; with kitti.yaml's 50 ms LiDAR offset the dataset-paired set still pairs."""
    s = _run("kitti.yaml", nuscenes, tmp_path / "run")
    assert s["frames"]["done"] == 1 and s["sync"]["paired"] == 1 and not sum(s["frames"]["failed"].values())
    by = s["points_by_camera"]
    assert len(by) == 6 and all(v["labelled"] > 500 for v in by.values()), by
    assert s["note"] is not None
