"""The synthetic world: determinism, and ground truth that agrees between camera and LiDAR."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_taxonomy
from pipeline.errors import ConfigError
from pipeline.sim.generate import Simulator
from pipeline.sim.simulate import check_params

TAX = load_taxonomy()


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return Simulator(seed=3, num_frames=20)


@pytest.fixture(scope="module")
def frames(sim):
    return [sim.render(i) for i in (0, 10, 19)]


def points_in_camera(sim: Simulator, sf):
    """Project each LiDAR point, moved with the exact ego poses from its own time to the
    camera's exposure time, into the image. Returns indices of points landing in the image
    and their pixel (u, v) and depth."""
    f = sf.frame
    p = f.lidar.points[:, :3].astype(np.float64)
    T_bl = sim.calib.T_base_from_lidar
    T_wb = sim.ego_pose(f.lidar.stamp_ns + f.lidar.t_offset_ns)
    p_base = p @ T_bl[:3, :3].T + T_bl[:3, 3]
    p_world = np.einsum("nij,nj->ni", T_wb[:, :3, :3], p_base) + T_wb[:, :3, 3]
    T_cw = np.linalg.inv(sim.ego_pose(f.camera.stamp_ns)[0] @ sim.calib.T_base_from_cam)
    pc = p_world @ T_cw[:3, :3].T + T_cw[:3, 3]
    K, H, W = sim.calib.K, sim.calib.height, sim.calib.width
    front = np.flatnonzero(pc[:, 2] > 0.5)
    z = pc[front, 2]
    u = np.round(K[0, 0] * pc[front, 0] / z + K[0, 2]).astype(int)
    v = np.round(K[1, 1] * pc[front, 1] / z + K[1, 2]).astype(int)
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    return front[inside], u[inside], v[inside], z[inside]


def test_same_seed_same_arrays(sim):
    again = Simulator(seed=3, num_frames=20)
    a, b = sim.render(5).frame, again.render(5).frame
    assert np.array_equal(a.camera.image, b.camera.image)
    assert np.array_equal(a.lidar.points, b.lidar.points)
    assert np.array_equal(a.lidar.t_offset_ns, b.lidar.t_offset_ns)
    assert np.array_equal(a.point_instance, b.point_instance)
    assert np.array_equal(a.semantic, b.semantic)
    assert np.allclose(a.T_world_from_base, b.T_world_from_base)
    other = Simulator(seed=4, num_frames=20).render(5).frame
    assert not np.array_equal(a.camera.image, other.camera.image)


def test_lidar_ground_truth_agrees_with_camera(sim, frames):
    """Points the camera sees (depth test against the camera's true depth), projected with the
    true calibration, land on a pixel of their own instance for >= 99% of them."""
    for sf in frames:
        f = sf.frame
        idx, u, v, z = points_in_camera(sim, sf)
        assert len(idx) > 10_000
        visible = np.abs(sf.camera_depth_m[v, u] - z) < 0.1 + 0.02 * z
        assert visible.mean() > 0.95
        iv, uv, vv = idx[visible], u[visible], v[visible]
        inst_agree = f.instance[vv, uv] == f.point_instance[iv]
        class_agree = f.semantic[vv, uv] == f.point_class[iv]
        things = f.point_instance[iv] > 0
        assert things.sum() > 300
        assert inst_agree.mean() >= 0.99, inst_agree.mean()
        assert inst_agree[things].mean() >= 0.99, inst_agree[things].mean()
        assert class_agree.mean() >= 0.99, class_agree.mean()


def test_lidar_sees_more_than_the_camera_behind_edges(sim, frames):
    """The LiDAR sits 0.27 m behind and 8 cm above the camera: some points it measures are hidden
    from the camera (parallax), which is what the fusion's depth test must handle."""
    hidden = 0
    for sf in frames:
        idx, u, v, z = points_in_camera(sim, sf)
        hidden += int((z > sf.camera_depth_m[v, u] + 0.5).sum())
    assert hidden > 20


def test_points_lie_in_their_ground_truth_boxes(sim, frames):
    for sf in frames:
        f = sf.frame
        # points moved to the camera time, in the base frame there
        p = f.lidar.points[:, :3].astype(np.float64)
        T_bl = sim.calib.T_base_from_lidar
        T_wb = sim.ego_pose(f.lidar.stamp_ns + f.lidar.t_offset_ns)
        pw = np.einsum("nij,nj->ni", T_wb[:, :3, :3], p @ T_bl[:3, :3].T + T_bl[:3, 3]) + T_wb[:, :3, 3]
        T_bw = np.linalg.inv(sim.ego_pose(f.camera.stamp_ns)[0])
        pb = pw @ T_bw[:3, :3].T + T_bw[:3, 3]
        boxes = {b.instance_id: b for b in f.boxes}
        speed = {a.instance_id: abs(a.speed_mps) for a in sim.world.agents}
        dt_s = np.abs(f.lidar.stamp_ns + f.lidar.t_offset_ns - f.camera.stamp_ns) / 1e9
        inside_total = count_total = 0
        for iid in np.unique(f.point_instance[f.point_instance > 0]):
            b = boxes[int(iid)]
            sel = f.point_instance == iid
            q = pb[sel] - b.center
            c, s = np.cos(-b.yaw), np.sin(-b.yaw)
            local = np.column_stack([c * q[:, 0] - s * q[:, 1], s * q[:, 0] + c * q[:, 1], q[:, 2]])
            # range noise (2 cm), plus how far a moving thing travels between the point's time and
            # the camera's (things are posed per 5 ms slice of the sweep)
            margin = 0.08 + speed[int(iid)] * (dt_s[sel] + 0.0025)
            inside = np.all(np.abs(local) <= b.size / 2 + margin[:, None], axis=1)
            inside_total += inside.sum()
            count_total += len(inside)
        assert inside_total / count_total > 0.99


def test_lane_marking_points_lie_on_ground_truth_lanes(sim, frames):
    sf = frames[0]
    f = sf.frame
    lane = f.point_class == TAX.id("lane_marking")
    assert lane.sum() > 200
    p = f.lidar.points[lane, :3].astype(np.float64)
    T_bl = sim.calib.T_base_from_lidar
    T_wb = sim.ego_pose(f.lidar.stamp_ns + f.lidar.t_offset_ns[lane])
    pw = np.einsum("nij,nj->ni", T_wb[:, :3, :3], p @ T_bl[:3, :3].T + T_bl[:3, 3]) + T_wb[:, :3, 3]
    T_bw = np.linalg.inv(sim.ego_pose(f.camera.stamp_ns)[0])
    pb = pw @ T_bw[:3, :3].T + T_bw[:3, 3]
    ahead = (pb[:, 0] > 0) & (pb[:, 0] < 60)
    pb = pb[ahead]
    poly = np.concatenate([ln.points_base for ln in f.lanes])
    d = np.min(np.linalg.norm(pb[:, None, :2] - poly[None, :, :2], axis=2), axis=1)
    # polyline vertices every 1 m: a point on the paint is within 0.5 m along + 0.1 m across
    assert np.quantile(d, 0.99) < 0.55
    assert abs(np.median(pb[:, 2])) < 0.05     # paint lies on the road surface


def test_lane_paint_follows_solid_lines_and_dashes():
    """The labelling kernel on one road triangle whose vertices carry road coordinates (s, d):
    hits placed by their barycentric coordinates on a solid line, on a dash, in the gap
    between dashes, and off the paint."""
    from pipeline.sim.kernels import label_hits
    from pipeline.sim.world import DASH_LENGTH_M, DASH_PERIOD_M

    road, lane, sky = TAX.id("road"), TAX.id("lane_marking"), TAX.id("sky")
    faces = np.array([[0, 1, 2]], np.int32)
    vert_sd = np.array([[0.0, -4.0], [100.0, -4.0], [0.0, 4.0]], np.float32)   # s along u, d along v
    # (s, d) -> barycentric (u, v) of that triangle: s = 100 u, d = -4 + 8 v
    sd = np.array([[10.0, -1.8],                       # solid line at d = -1.8
                   [DASH_PERIOD_M * 2 + 1.0, 1.8],     # dashed line at d = +1.8, on a dash
                   [DASH_PERIOD_M * 2 + DASH_LENGTH_M + 1.0, 1.8],   # in the gap
                   [10.0, 0.0],                         # between the lines
                   [10.0, 0.0]])                        # a miss
    uv = np.column_stack([sd[:, 0] / 100.0, (sd[:, 1] + 4.0) / 8.0]).astype(np.float32)
    dist = np.array([5, 5, 5, 5, np.inf], np.float32)
    white, yellow = (0.9, 0.9, 0.9), (0.1, 0.8, 0.9)
    paint = (np.array([-1.8, 1.8], np.float32), np.array([0.1, 0.1], np.float32), np.array([True, False]),
             np.array([white, yellow], np.float32))
    empty = np.zeros(0, np.int64)
    cls, inst, albedo, refl = label_hits(
        dist, np.zeros(5, bool), np.zeros(5, np.int64), uv, sky, road, lane,
        np.array([road], np.uint8), np.full((1, 3), 0.3, np.float32), np.array([0.1], np.float32), faces, vert_sd,
        *paint, np.zeros(0, np.uint8), np.zeros(0, np.uint16), np.zeros(0, np.float32), empty, np.zeros((0, 3), np.float32))
    assert cls.tolist() == [lane, lane, road, road, sky]
    np.testing.assert_allclose(albedo[:4], [white, yellow, (0.3,) * 3, (0.3,) * 3], rtol=1e-6)
    np.testing.assert_allclose(refl, [0.8, 0.8, 0.1, 0.1, 0.0], rtol=1e-6)
    assert not inst.any()


def test_every_class_appears_in_the_default_drive():
    sim = Simulator(seed=7, num_frames=30)
    seen_px, seen_pts = set(), set()
    for i in (0, 15, 29):
        f = sim.render(i).frame
        seen_px |= set(np.unique(f.semantic).tolist())
        seen_pts |= set(np.unique(f.point_class).tolist())
    assert seen_px == set(range(TAX.num_classes))
    assert seen_pts == set(range(TAX.num_classes)) - {TAX.id("sky")}


def test_ego_moves_about_ten_metres_per_second(sim, frames):
    a, b = frames[0].frame, frames[1].frame
    T_a = sim.ego_pose(a.camera.stamp_ns)[0]
    T_b = sim.ego_pose(b.camera.stamp_ns)[0]
    speed = np.linalg.norm(T_b[:3, 3] - T_a[:3, 3]) / ((b.camera.stamp_ns - a.camera.stamp_ns) / 1e9)
    assert 8 < speed < 12
    # poses cover the sweep and the camera exposure at 100 Hz
    f = a
    assert f.pose_stamps_ns[0] <= f.lidar.stamp_ns and f.pose_stamps_ns[-1] >= f.lidar.stamp_ns + 100_000_000
    assert np.all(np.diff(f.pose_stamps_ns) == 10_000_000)
    assert f.lidar.t_offset_ns.min() >= 0 and f.lidar.t_offset_ns.max() < 100_000_000


@pytest.mark.parametrize("kwargs, field", [
    (dict(frames=0), "--frames"),
    (dict(frames=-3), "--frames"),
    (dict(fmt="rosbag1"), "--format"),
    (dict(seed=-1), "--seed"),
])
def test_bad_parameters_are_refused(tmp_path, kwargs, field):
    args = dict(out=tmp_path / "drive", frames=2, seed=0, fmt="rosbag2", overwrite=False) | kwargs
    with pytest.raises(ConfigError) as err:
        check_params(**args)
    assert field in str(err.value)


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "drive").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        check_params(tmp_path / "drive", 2, 0, "rosbag2", False)


# ---------------------------------------------------------------- recorded drives

SMALL = 0.3   # camera at 0.3 scale: 373x112, same LiDAR


def _direct(seed, frames):
    from pipeline.sim.generate import SimConfig
    return Simulator(seed, frames, SimConfig().scaled(SMALL))


def _assert_same(frame, ref):
    assert np.array_equal(frame.camera.image, ref.camera.image)
    assert frame.camera.stamp_ns == ref.camera.stamp_ns and frame.lidar.stamp_ns == ref.lidar.stamp_ns
    assert np.array_equal(frame.lidar.points, ref.lidar.points)
    assert np.array_equal(frame.lidar.t_offset_ns, ref.lidar.t_offset_ns)
    assert np.array_equal(frame.semantic, ref.semantic) and np.array_equal(frame.instance, ref.instance)
    assert np.array_equal(frame.point_class, ref.point_class)
    assert np.array_equal(frame.point_instance, ref.point_instance)
    assert [b.instance_id for b in frame.boxes] == [b.instance_id for b in ref.boxes]
    assert np.allclose([b.center for b in frame.boxes], [b.center for b in ref.boxes])
    assert len(frame.lanes) == len(ref.lanes)
    assert np.allclose(frame.T_world_from_base, ref.T_world_from_base, atol=1e-9)


@pytest.mark.parametrize("fmt", ["rosbag2", "kitti-raw"])
def test_a_drive_written_and_read_back_gives_the_same_arrays(tmp_path, fmt):
    from pipeline.drive.io import open_drive
    from pipeline.sim.simulate import simulate

    summary = simulate(tmp_path / "drive", frames=3, seed=21, fmt=fmt, scale=SMALL, progress=False, workers=1)
    assert summary.frames == 3 and summary.points_per_frame > 50_000
    ref = _direct(21, 3)
    with open_drive(tmp_path / "drive") as drive:
        assert len(drive) == 3 and drive.format == fmt
        assert np.allclose(drive.calib.K, ref.calib.K) and np.allclose(drive.calib.T_base_from_lidar, ref.calib.T_base_from_lidar)
        for i, frame in enumerate(drive.frames()):
            _assert_same(frame, ref.render(i).frame)


def test_kitti_raw_export_loads_with_the_calibration_loaders(tmp_path):
    """The KITTI-raw export is read by the same code as real KITTI: the rig from
    calib_cam_to_cam.txt / calib_velo_to_cam.txt projects points onto their own pixels."""
    from calibration.io import load_rig
    from calibration.projection import project_lidar
    from pipeline.drive.io import open_drive
    from pipeline.sim.simulate import simulate

    simulate(tmp_path / "k", frames=2, seed=5, fmt="kitti-raw", scale=SMALL, progress=False, workers=1)
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt", "image_02/data/0000000000.png",
                 "velodyne_points/data/0000000001.bin", "velodyne_points/timestamps.txt", "oxts/data/0000000000.txt"):
        assert (tmp_path / "k" / name).is_file(), name
    rig = load_rig(tmp_path / "k")
    cam = rig.camera("cam02")
    frame = open_drive(tmp_path / "k").frame(0)
    proj = project_lidar(frame.lidar.points, rig.T_cam_from_lidar(cam.name), cam.model, min_depth_m=1.0)
    px = proj.pixels
    # without ego-motion compensation most points still land on their own class
    agree = frame.semantic[px[:, 1], px[:, 0]] == frame.point_class[proj.index]
    assert proj.count > 5000 and agree.mean() > 0.9


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_workers_render_the_same_drive(tmp_path, start_method):
    from pipeline.drive.io import open_drive
    from pipeline.sim.simulate import simulate

    # forked workers inherit the parent's world; spawned ones rebuild it from the seed
    simulate(tmp_path / "w2", frames=4, seed=8, scale=SMALL, progress=False, workers=2, start_method=start_method)
    ref = _direct(8, 4)
    with open_drive(tmp_path / "w2") as drive:
        got = list(drive.frames())
        assert len(got) == 4
        for i, frame in enumerate(got):
            _assert_same(frame, ref.render(i).frame)


def test_interrupted_run_leaves_no_drive_that_looks_complete(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "drive"
    # long enough that the interrupt always lands mid-drive (400 tiny frames now render in ~2 s)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "sim", "--frames", "3000", "--seed", "1",
                             "--scale", "0.2", "--workers", "1", "--no-progress", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob("drive.partial-*")):
        time.sleep(0.1)
    assert list(tmp_path.glob("drive.partial-*")), "the run never started writing"
    time.sleep(0.5)                      # a few frames in
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    assert not list(tmp_path.glob("drive.partial-*"))
    assert b"interrupted" in err
