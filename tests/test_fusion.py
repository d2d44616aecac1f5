"""Occlusion-aware pixel-level fusion against the synthetic world's exact ground truth, and on
real KITTI frames."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from calibration.projection import project_lidar
from calibration.rig import CameraSensor, Rig, rig_from_drive_calib
from pipeline.config import load_taxonomy
from pipeline.errors import ConfigError, InputDataError
from pipeline.fusion.config import FusionConfig
from pipeline.fusion.frame import CameraMasks, Poses, fuse_frame
from pipeline.fusion.label import CameraView, InstanceMap, fuse
from pipeline.fusion.lanes import lane_y
from pipeline.sim.generate import Simulator
from pipeline.sim.render import CameraSpec, Renderer
from pipeline.types import FLAG_EDGE, FLAG_OCCLUDED, FLAG_OUTSIDE, NO_INSTANCE, LidarSweep

TAX = load_taxonomy()


@pytest.fixture(scope="module")
def sim():
    return Simulator(seed=11, num_frames=30)


@pytest.fixture(scope="module")
def rig(sim):
    return rig_from_drive_calib(sim.calib)


@pytest.fixture(scope="module")
def frames(sim):
    return [sim.render(i) for i in (0, 14, 29)]


def gt_masks(rig, f):
    return CameraMasks(rig.cameras[0].name, f.camera.stamp_ns, f.semantic, InstanceMap.from_id_image(f.instance, f.semantic))


def poses(f):
    return Poses(f.pose_stamps_ns, f.T_world_from_base)


def truth(rig, sf, result):
    """Indices of in-image points the camera sees / cannot see, from the camera's true depth."""
    cam = rig.cameras[0]
    pts = result.points_base - 0  # base frame at camera time -> camera
    T_cb = np.linalg.inv(cam.T_base_from_cam)
    pc = pts @ T_cb[:3, :3].T + T_cb[:3, 3]
    proj = project_lidar(pc.astype(np.float32), np.eye(4), cam.model, min_depth_m=1.0)
    idx, px = proj.index, proj.pixels
    d = proj.depth_m[idx]
    z_cam = sf.camera_depth_m[px[:, 1], px[:, 0]]
    return idx[np.abs(z_cam - d) < 0.1 + 0.02 * d], idx[d > z_cam + 0.5]


def scores(rig, sf, result):
    f = sf.frame
    visible, hidden = truth(rig, sf, result)
    c = result.cloud
    acc = float((c.class_id[visible] == f.point_class[visible]).mean())
    wrong_hidden = float(((c.class_id[hidden] != f.point_class[hidden]) & (c.class_id[hidden] != TAX.ignore_id)).mean())
    pred = np.where(c.instance_id[visible] >= 0, c.instance_id[visible] % 65536, 0)
    true = f.point_instance[visible].astype(np.int64)
    precision = float((pred[pred > 0] == true[pred > 0]).mean())
    recall = float((pred[true > 0] == true[true > 0]).mean())
    return acc, wrong_hidden, precision, recall, len(hidden)


def test_ground_truth_masks_label_points_exactly(sim, rig, frames):
    on, off = [], []
    for sf in frames:
        f = sf.frame
        on.append(scores(rig, sf, fuse_frame(f.lidar, [gt_masks(rig, f)], rig, FusionConfig(), TAX, poses(f))))
        off.append(scores(rig, sf, fuse_frame(f.lidar, [gt_masks(rig, f)], rig, FusionConfig(occlusion=False), TAX, poses(f))))
    on, off = np.array(on), np.array(off)
    acc, wrong_hidden, precision, recall = on[:, :4].mean(axis=0)
    assert acc >= 0.995, acc
    # instance refinement (on by default) withdraws the ids of a thing's points within 5 cm of the
    # ground (tyres) and of far things' stray pieces outside their box: ~1 % of recall
    assert precision >= 0.99 and recall >= 0.98, (precision, recall)
    # the depth test off: visible points are labelled as well, hidden ones take the occluder's label
    assert off[:, 0].mean() >= 0.995
    assert on[:, 4].sum() > 100                          # there are hidden points to get wrong
    assert off[:, 1].mean() > 0.3                        # without the depth test many hidden points are mislabelled
    assert wrong_hidden < 0.5 * off[:, 1].mean()         # the depth test removes more than half of those


def test_ego_motion_compensation_matters(sim, rig, frames):
    sf = frames[1]
    f = sf.frame
    with_comp = fuse_frame(f.lidar, [gt_masks(rig, f)], rig, FusionConfig(), TAX, poses(f))
    without = fuse_frame(f.lidar, [gt_masks(rig, f)], rig, FusionConfig(ego_motion=False), TAX, poses(f))
    assert with_comp.ego_motion_applied and not without.ego_motion_applied
    assert 0.3 < with_comp.max_motion_m < 1.5          # ~10 m/s over up to 50 ms, plus rotation
    # judged against the truth at camera time: compensation labels more points correctly
    acc_with = scores(rig, sf, with_comp)[0]
    visible, _ = truth(rig, sf, with_comp)
    acc_without = float((without.cloud.class_id[visible] == f.point_class[visible]).mean())
    assert acc_with > acc_without


def test_objects_centroids_lie_in_ground_truth_boxes(sim, rig, frames):
    checked = 0
    for sf in frames:
        f = sf.frame
        result = fuse_frame(f.lidar, [gt_masks(rig, f)], rig, FusionConfig(), TAX, poses(f))
        boxes = {b.instance_id: b for b in f.boxes}
        for o in result.objects:
            b = boxes[o.instance_id % 65536]
            assert o.class_id == b.class_id
            if o.num_points < 50:
                continue
            q = o.centroid - b.center
            c, s = np.cos(-b.yaw), np.sin(-b.yaw)
            local = np.array([c * q[0] - s * q[1], s * q[0] + c * q[1], q[2]])
            outside = np.linalg.norm(np.maximum(np.abs(local) - b.size / 2, 0))
            assert outside <= 0.3, (o.instance_id, outside)
            assert abs(o.range_m - np.linalg.norm(o.centroid[:2])) < 1e-6
            checked += 1
    assert checked >= 10


def test_lane_cubics_follow_ground_truth_lanes(sim, rig, frames):
    matched = 0
    for sf in frames:
        f = sf.frame
        result = fuse_frame(f.lidar, [gt_masks(rig, f)], rig, FusionConfig(), TAX, poses(f))
        assert result.lanes
        for ln in result.lanes:
            x = np.arange(max(5.0, ln.x_min_m), min(40.0, ln.x_max_m), 0.25)
            if len(x) < 8:
                continue
            errs = []
            for gt in f.lanes:
                y_gt = np.interp(x, gt.points_base[:, 0], gt.points_base[:, 1])
                errs.append((np.abs(lane_y(ln, x) - y_gt).max(), gt.type))
            err, gt_type = min(errs)
            assert err <= 0.15, err
            if ln.type != "unknown":
                assert ln.type == gt_type
            matched += 1
    assert matched >= 6


def test_two_cameras_share_the_cloud_by_the_border_rule(sim, rig, frames):
    """A second camera turned 35 degrees to the left overlaps the front camera; points in the
    overlap take their label from the camera where they lie further from the image border."""
    sf = frames[0]
    f = sf.frame
    yaw = np.radians(35)
    R = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    T_left = sim.camera_spec.T_base_from_cam.copy()
    T_left[:3, :3] = R @ T_left[:3, :3]
    spec = CameraSpec(sim.camera_spec.width, sim.camera_spec.height, sim.camera_spec.K, T_left)
    left = Renderer(sim.world, spec, sim.lidar_spec, sim.lighting).render_camera(
        float(sim.seconds(f.camera.stamp_ns)), sim.ego_pose(f.camera.stamp_ns)[0], np.random.default_rng(0))
    front = rig.cameras[0]
    two = Rig(cameras=[front, CameraSensor("camera_left", "camera_left_optical", front.model, T_left)],
              lidars=rig.lidars, base_frame=rig.base_frame, source="test")
    masks = [gt_masks(two, f),
             CameraMasks("camera_left", f.camera.stamp_ns, left.semantic, InstanceMap.from_id_image(left.instance, left.semantic))]
    result = fuse_frame(f.lidar, masks, two, FusionConfig(), TAX, poses(f))
    cam_idx = result.cloud.camera_index
    assert (cam_idx == 0).sum() > 5000 and (cam_idx == 1).sum() > 5000
    # the overlap: points valid in both; each took the camera with the larger border distance
    pts = result.points_base
    merit = []
    for cam in two.cameras:
        T_cb = np.linalg.inv(cam.T_base_from_cam)
        pr = project_lidar((pts @ T_cb[:3, :3].T + T_cb[:3, 3]).astype(np.float32), np.eye(4), cam.model, min_depth_m=1.0)
        m = np.full(len(pts), -1.0)
        px = pr.pixels
        m[pr.index] = np.minimum(np.minimum(px[:, 0], cam.width - 1 - px[:, 0]), np.minimum(px[:, 1], cam.height - 1 - px[:, 1]))
        merit.append(m)
    both = np.flatnonzero((merit[0] >= 0) & (merit[1] >= 0) & (cam_idx >= 0))
    assert len(both) > 500
    expected = np.where(merit[1][both] > merit[0][both], 1, 0)
    assert (cam_idx[both] == expected).mean() > 0.98
    # and the labels stay right: compare to the LiDAR's own truth
    labelled = cam_idx >= 0
    assert (result.cloud.class_id[labelled] == f.point_class[labelled]).mean() > 0.985


def test_edge_options_withhold_and_flag_edge_points(sim, rig, frames):
    f = frames[0].frame
    tight = gt_masks(rig, f)
    base = fuse_frame(f.lidar, [tight], rig, FusionConfig(edge_mode="none"), TAX, poses(f))
    n_things = int((base.cloud.instance_id != NO_INSTANCE).sum())
    assert n_things > 1000 and not np.any(base.cloud.flags & FLAG_EDGE)

    # erode: ids within erode_px of a mask edge are withdrawn, so fewer points get an instance
    eroded = fuse_frame(f.lidar, [tight], rig, FusionConfig(edge_mode="erode", erode_px=2), TAX, poses(f))
    n_eroded = int((eroded.cloud.instance_id != NO_INSTANCE).sum())
    assert 0.5 * n_things < n_eroded < n_things
    assert not np.any(eroded.cloud.flags & FLAG_EDGE)

    # depth_gate on a loose mask (each instance dilated 6 px, as a model's masks bleed): background
    # seen past the edge joins the instance; the gate withholds it and flags it FLAG_EDGE
    loose_ids = cv2.dilate(f.instance.astype(np.uint16), np.ones((13, 13), np.uint8))
    loose_ids = np.where(f.instance > 0, f.instance, loose_ids).astype(np.uint16)
    tight_map = InstanceMap.from_id_image(f.instance, f.semantic)
    loose = CameraMasks(tight.camera, tight.stamp_ns, f.semantic,
                        InstanceMap(loose_ids, tight_map.class_of, tight_map.score_of))

    def wrong_instance(c):
        got = c.instance_id != NO_INSTANCE
        return int((got & (c.instance_id % 65536 != f.point_instance.astype(np.int64))).sum())

    # the gate alone (instance refinement, on by default, also removes most of that background)
    ungated = fuse_frame(f.lidar, [loose], rig, FusionConfig(edge_mode="none", instance_refinement=False), TAX,
                         poses(f)).cloud
    gated = fuse_frame(f.lidar, [loose], rig, FusionConfig(edge_mode="depth_gate", instance_refinement=False), TAX,
                       poses(f)).cloud
    flagged = (gated.flags & FLAG_EDGE) != 0
    assert flagged.sum() > 50
    assert np.all(gated.instance_id[flagged] == NO_INSTANCE) and np.all(gated.class_id[flagged] == TAX.ignore_id)
    assert wrong_instance(gated) < 0.6 * wrong_instance(ungated)
    assert not np.any(ungated.flags & FLAG_EDGE)


def test_config_is_validated():
    with pytest.raises(ConfigError, match=r"fusion\.edge_mode"):
        FusionConfig.from_dict({"edge_mode": "blur"}, path="x.yaml")
    with pytest.raises(ConfigError, match=r"x\.yaml: field 'fusion\.splat_half_px'"):
        FusionConfig.from_dict({"splat_half_px": [1]}, path="x.yaml")
    with pytest.raises(ConfigError, match=r"fusion\.bogus"):
        FusionConfig.from_dict({"bogus": 1}, path="x.yaml")
    assert FusionConfig.from_dict({"occlusion_tol_m": 1}, path="x.yaml").occlusion_tol_m == 1.0


def test_empty_and_outside_clouds_give_empty_results(rig, frames):
    f = frames[0].frame
    empty = LidarSweep("lidar_top", 0, np.zeros((0, 4), np.float32))
    r = fuse_frame(empty, [gt_masks(rig, f)], rig, FusionConfig(ego_motion=False), TAX)
    assert len(r.cloud.points) == 0 and r.objects == [] and r.lanes == []
    behind = LidarSweep("lidar_top", 0, np.array([[-10, 0, 0, 0.5], [-20, 1, 1, 0.5]], np.float32))
    r = fuse_frame(behind, [gt_masks(rig, f)], rig, FusionConfig(ego_motion=False), TAX)
    assert np.all(r.cloud.flags & FLAG_OUTSIDE) and np.all(r.cloud.class_id == TAX.ignore_id)


# ---------------------------------------------------------------- offline CLI, real files

def write_frame_files(tmp_path, sim, sf):
    from calibration.io_rig_yaml import write_rig_yaml
    from pipeline.sim.generate import Simulator  # noqa: F401  (same drive, written as a user would have it)

    f = sf.frame
    rig = rig_from_drive_calib(sim.calib)
    write_rig_yaml(rig, tmp_path / "rig.yaml")
    f.lidar.points.tofile(tmp_path / "cloud.bin")
    cv2.imwrite(str(tmp_path / "semantic.png"), f.semantic)
    cv2.imwrite(str(tmp_path / "instances.png"), f.instance)
    inst = InstanceMap.from_id_image(f.instance, f.semantic)
    meta = {str(i): {"class": TAX.names[inst.class_of[i]], "score": 0.9} for i in np.unique(f.instance) if i > 0}
    (tmp_path / "instances.json").write_text(json.dumps(meta))
    return tmp_path


def test_segfuse_fuse_cli_writes_results(tmp_path, sim, frames, capsys):
    from pipeline.cli import main

    sf = frames[0]
    d = write_frame_files(tmp_path, sim, sf)
    rc = main(["fuse", "--rig", str(d / "rig.yaml"), "--cloud", str(d / "cloud.bin"), "--semantic", str(d / "semantic.png"),
               "--instances", str(d / "instances.png"), "--instances-meta", str(d / "instances.json"),
               "--out", str(d / "out")])
    assert rc == 0
    assert "segfuse fuse:" in capsys.readouterr().out
    z = np.load(d / "out" / "fused.npz")
    f = sf.frame
    labelled = z["class_id"] != TAX.ignore_id
    # no ego-motion compensation offline: still most labelled points are right
    assert (z["class_id"][labelled] == f.point_class[labelled]).mean() > 0.97
    objects = json.loads((d / "out" / "objects.json").read_text())["objects"]
    assert objects and all(o["class"] in TAX.thing_names for o in objects)
    assert json.loads((d / "out" / "lanes.json").read_text())["lanes"]
    import open3d as o3d
    ply = o3d.t.io.read_point_cloud(str(d / "out" / "fused.ply"))
    assert len(ply.point.positions) == len(f.lidar.points)


def test_segfuse_fuse_rejects_bad_inputs(tmp_path, sim, frames, caplog):
    from pipeline.cli import main

    d = write_frame_files(tmp_path, sim, frames[0])
    base = ["fuse", "--rig", str(d / "rig.yaml"), "--semantic", str(d / "semantic.png"), "--out", str(d / "out")]
    # a truncated KITTI .bin
    raw = (d / "cloud.bin").read_bytes()
    (d / "trunc.bin").write_bytes(raw[: len(raw) - 6])
    assert main(base + ["--cloud", str(d / "trunc.bin")]) == 2
    assert "trunc.bin" in caplog.text and "not a multiple of 16" in caplog.text
    # a semantic mask of the wrong size
    cv2.imwrite(str(d / "small.png"), np.zeros((10, 10), np.uint8))
    caplog.clear()
    assert main(["fuse", "--rig", str(d / "rig.yaml"), "--cloud", str(d / "cloud.bin"), "--semantic",
                 str(d / "small.png"), "--out", str(d / "out")]) == 2
    assert "small.png" in caplog.text and "10x10" in caplog.text
    # instance ids missing from the JSON
    (d / "bad.json").write_text("{}")
    caplog.clear()
    assert main(base + ["--cloud", str(d / "cloud.bin"), "--instances", str(d / "instances.png"),
                        "--instances-meta", str(d / "bad.json")]) == 2
    assert "bad.json" in caplog.text and "not in the JSON" in caplog.text


def test_cloud_reader_drops_nan_points_and_reads_formats(tmp_path):
    from pipeline.cloud_io import read_cloud, write_ply

    pts = np.array([[1, 2, 3, 0.5], [np.nan, 0, 0, 0.1], [4, 5, 6, 0.7]], np.float32)
    pts.tofile(tmp_path / "a.bin")
    c = read_cloud(tmp_path / "a.bin")
    assert c.dropped_nonfinite == 1 and np.array_equal(c.points, pts[[0, 2]])
    np.save(tmp_path / "a.npy", pts[:, :3])
    assert read_cloud(tmp_path / "a.npy").points.shape == (2, 4)
    write_ply(tmp_path / "a.ply", pts[[0, 2]])
    assert np.allclose(read_cloud(tmp_path / "a.ply").points[:, :3], pts[[0, 2], :3])
    np.zeros((0, 4), np.float32).tofile(tmp_path / "empty.bin")
    assert read_cloud(tmp_path / "empty.bin").points.shape == (0, 4)
    (tmp_path / "junk.pcd").write_bytes(b"\x00\x01garbage")
    with pytest.raises(InputDataError, match="junk.pcd"):
        read_cloud(tmp_path / "junk.pcd")
    with pytest.raises(InputDataError, match="not found"):
        read_cloud(tmp_path / "missing.bin")


# ---------------------------------------------------------------- real KITTI frames

def test_kitti_frames_project_and_overlay(kitti_object, tmp_path):
    from calibration.io_kitti import load_kitti_object_calib
    from pipeline.cloud_io import read_cloud
    from pipeline.sinks.overlay import depth_overlay

    img = cv2.imread(str(kitti_object / "image_2" / "000003.png"))
    rig = load_kitti_object_calib(kitti_object / "calib" / "000003.txt", image_size=(img.shape[1], img.shape[0]))
    cloud = read_cloud(kitti_object / "velodyne" / "000003.bin").points
    cam = rig.camera("cam2")                  # image_2: the left colour camera
    proj = project_lidar(cloud, rig.T_cam_from_lidar(cam.name), cam.model, min_depth_m=1.0)
    assert 15_000 < proj.count < 25_000
    overlay = depth_overlay(img, proj.pixels, proj.depth_m[proj.index])
    cv2.imwrite(str(tmp_path / "overlay.png"), overlay)
    back = cv2.imread(str(tmp_path / "overlay.png"))
    changed = (back != img).any(axis=2)
    assert 0.05 < changed.mean() < 0.6        # points drawn, image still visible
    # near points are drawn warm (red), far ones cool (blue): check the colour ordering
    near = proj.depth_m[proj.index] < 10
    far = proj.depth_m[proj.index] > 40
    px = proj.pixels
    assert back[px[near, 1], px[near, 0], 2].mean() > back[px[far, 1], px[far, 0], 2].mean()


def test_kitti_fusion_with_a_road_mask(kitti_object):
    """A real frame through the whole fusion: a hand-made 'road' mask for the lower image
    labels points, the depth test flags some, the lane step copes with no lane points."""
    from calibration.io_kitti import load_kitti_object_calib
    from pipeline.cloud_io import read_cloud

    img = cv2.imread(str(kitti_object / "image_2" / "000000.png"))
    H, W = img.shape[:2]
    rig = load_kitti_object_calib(kitti_object / "calib" / "000000.txt", image_size=(W, H))
    sem = np.full((H, W), TAX.id("building"), np.uint8)
    sem[int(H * 0.6):] = TAX.id("road")
    cloud = read_cloud(kitti_object / "velodyne" / "000000.bin").points
    r = fuse_frame(LidarSweep("velo", 0, cloud), [CameraMasks("cam2", 0, sem, None)], rig,
                   FusionConfig(ego_motion=False), TAX)
    in_image = int(((r.cloud.flags & FLAG_OUTSIDE) == 0).sum())
    # the README's reference count (depth > 0, KITTI devkit rule) is 20285; fusion uses a 1 m
    # minimum depth and OpenCV pixel centres, so it lands within a fraction of a percent of it
    assert abs(in_image - 20285) < 0.01 * 20285
    assert (r.cloud.class_id == TAX.id("road")).sum() > 3000
    assert ((r.cloud.flags & FLAG_OCCLUDED) != 0).sum() > 0
    assert r.lanes == []


def test_fast_linear_projection_matches_calibration(sim, rig, frames, kitti_object):
    """The fusion's one-pass numba projection agrees with calibration.project_lidar."""
    from calibration.io_kitti import load_kitti_object_calib
    from pipeline.cloud_io import read_cloud
    from pipeline.fusion.kernels import project_linear

    cases = [(frames[0].frame.lidar.points, rig.cameras[0], rig.T_cam_from_lidar())]
    k_rig = load_kitti_object_calib(kitti_object / "calib" / "000006.txt", image_size=(1238, 374))
    cases.append((read_cloud(kitti_object / "velodyne" / "000006.bin").points, k_rig.camera("cam2"),
                  k_rig.T_cam_from_lidar("cam2")))
    for pts, cam, T in cases:
        ref = project_lidar(pts, T, cam.model, min_depth_m=1.0)
        idx, cols, rows, depth = project_linear(pts, cam.model.linear_matrix() @ T, cam.width, cam.height, 1.0)
        assert abs(len(idx) - ref.count) <= 2
        common, a, b = np.intersect1d(idx, ref.index, return_indices=True)
        assert len(common) >= ref.count - 2
        assert (np.column_stack([cols[a], rows[a]]) == ref.pixels[b]).all(axis=1).mean() > 0.9999
        assert np.allclose(depth[a], ref.depth_m[common], rtol=1e-5)


def test_ego_motion_kernel_matches_calibration_motion(sim, rig, frames):
    """The one-pass numba ego motion + projection puts every point where
    calibration.motion.compensate_ego_motion followed by project_linear puts it, in time order
    and shuffled (the kernel's search path), and the base-frame points and the largest motion
    agree with the numpy path's."""
    from calibration.motion import compensate_ego_motion
    from pipeline.fusion.kernels import ego_project, project_linear

    f = frames[1].frame
    cam = rig.cameras[0]
    T_bl = sim.calib.T_base_from_lidar
    A = cam.model.linear_matrix() @ rig.T_cam_from_lidar()
    moved = compensate_ego_motion(f.lidar.points, f.lidar.stamp_ns, f.lidar.t_offset_ns, f.pose_stamps_ns,
                                  f.T_world_from_base, T_bl, f.camera.stamp_ns)
    ref = project_linear(moved, A, cam.width, cam.height, 1.0)
    ref_base = moved[:, :3] @ T_bl[:3, :3].T.astype(np.float32) + T_bl[:3, 3].astype(np.float32)
    ref_motion = float(np.sqrt(np.max(np.sum((moved[:, :3] - f.lidar.points[:, :3]) ** 2, axis=1))))
    shuffle = np.random.default_rng(0).permutation(len(moved))
    for order in (np.arange(len(moved)), shuffle):
        pts, t = np.ascontiguousarray(f.lidar.points[order]), f.lidar.t_offset_ns[order]
        base = np.empty((len(pts), 3), np.float32)
        idx, cols, rows, depth, motion = ego_project(pts, f.lidar.stamp_ns, t, f.pose_stamps_ns, f.T_world_from_base,
                                                     T_bl, f.camera.stamp_ns, A, cam.width, cam.height, 1.0, base)
        inv = np.argsort(order)
        back = np.argsort(order[idx])
        assert np.array_equal(order[idx][back], ref[0])
        assert np.array_equal(cols[back], ref[1]) and np.array_equal(rows[back], ref[2])
        assert np.allclose(depth[back], ref[3], rtol=1e-6)
        assert np.allclose(base[inv], ref_base, atol=1e-5)
        assert motion == pytest.approx(ref_motion, rel=1e-5) and motion > 0.1
    with pytest.raises(InputDataError):
        ego_project(f.lidar.points, f.lidar.stamp_ns + 10**9, f.lidar.t_offset_ns, f.pose_stamps_ns,
                    f.T_world_from_base, T_bl, f.camera.stamp_ns, A, cam.width, cam.height, 1.0)


def test_numba_dbscan_gives_open3d_labels():
    """kernels.dbscan / voxel_dbscan label exactly as Open3D's cluster_dbscan (on the points, on
    the voxel centroids the objects cluster) on random blobs, sparse noise and flat lane-like sets."""
    import open3d as o3d

    from pipeline.fusion.kernels import dbscan, voxel_dbscan
    from pipeline.fusion.objects import VOXEL_M

    def o3d_labels(p, eps, mp):
        return np.asarray(o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p)).cluster_dbscan(eps=eps, min_points=mp))

    rng = np.random.default_rng(1)
    clusters = 0
    for t in range(60):
        n, k = int(rng.integers(5, 1500)), int(rng.integers(1, 5))
        centers = rng.uniform(-15, 15, (k, 3))
        p = centers[rng.integers(0, k, n)] + rng.normal(0, rng.uniform(0.2, 2.5), (n, 3))
        if t % 3 == 0:
            p[:, 2] = 0
        mp, eps = int(rng.integers(1, 6)), float(rng.uniform(0.3, 2.0))
        got = dbscan(p, eps, mp)
        assert np.array_equal(got, o3d_labels(p, eps, mp))
        clusters += got.max() + 1
        pf = p.astype(np.float32)
        keys = np.floor(pf / VOXEL_M).astype(np.int64)
        _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        cen = np.zeros((len(counts), 3))
        np.add.at(cen, inverse, pf)
        cen /= counts[:, None]
        assert np.array_equal(voxel_dbscan(pf, VOXEL_M, eps, mp), o3d_labels(cen, eps, mp)[inverse])
    assert clusters > 60                      # the cases do cluster, not only noise
