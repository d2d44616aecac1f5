"""Tracking (pipeline.tracking), amodal boxes (pipeline.fusion.shape), instance refinement
(pipeline.fusion.objects) and their evaluation (pipeline.track_eval)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_taxonomy
from pipeline.errors import ConfigError
from pipeline.fusion.shape import SIZE_PRIORS, fit_box
from pipeline.track_eval import axis_error_deg, bev_iou
from pipeline.tracking import Tracker, TrackerConfig
from pipeline.types import FLAG_NOT_IN_OBJECT, Object3D

TAX = load_taxonomy()
NAMES = tuple(TAX.names)
CAR = TAX.id("car")
DT_NS = 100_000_000


def obj(iid: int, xy, cls: int = CAR, yaw: float = 0.0) -> Object3D:
    c = np.array([xy[0], xy[1], 0.75])
    return Object3D(iid, cls, 0.9, c, c, np.array([4.4, 1.8, 1.5]), yaw, float(np.hypot(*c[:2])), 100)


def ego_pose(t_s: float, speed: float = 10.0) -> np.ndarray:
    T = np.eye(4)
    T[0, 3] = speed * t_s
    return T


def to_base(p_world, T) -> np.ndarray:
    Ti = np.linalg.inv(T)
    p = np.array([p_world[0], p_world[1], 0.0])
    return (Ti[:3, :3] @ p + Ti[:3, 3])[:2]


def run(tracker, frames):
    """frames: per frame a list of (instance id, world xy) detections; the ego drives at 10 m/s."""
    return run_from(tracker, frames, 0)


def run_from(tracker, frames, start):
    out = []
    for k in range(start, len(frames)):
        T = ego_pose(k * 0.1)
        out.append(tracker.update([obj(i, to_base(p, T)) for i, p in frames[k]], k * DT_NS, T))
    return out


def ids_of(tracks, true_of):
    """track id -> the true ids it was given (through the detections' instance ids)."""
    seen = {}
    for frame in tracks:
        for t in frame:
            if t.instance_id >= 0:
                seen.setdefault(t.track_id, set()).add(true_of(t.instance_id))
    return seen


def test_two_crossing_cars_keep_their_identities():
    rng = np.random.default_rng(1)
    frames = []
    for k in range(30):
        t = k * 0.1
        a = np.array([20 + 8.0 * (t - 1.5), 0.0]) + rng.normal(0, 0.08, 2)           # east through (20, 0)
        b = np.array([20.0, 8.0 * (t - 1.6)]) + rng.normal(0, 0.08, 2)              # north, 0.1 s later
        dets = [(100 + k, a), (200 + k, b)]                                          # instance ids change every frame
        frames.append(dets if k % 2 else dets[::-1])
    tracks = run(Tracker(TrackerConfig(), NAMES), frames)
    gaps = [np.linalg.norm(frames[k][0][1] - frames[k][1][1]) for k in range(30)]
    assert min(gaps) < 1.5                                                           # they really do cross
    seen = ids_of(tracks, lambda iid: iid // 100)
    assert len(seen) == 2 and sorted(map(tuple, seen.values())) == [(1,), (2,)]
    last = {t.track_id: t for t in tracks[-1]}
    speeds = sorted(round(t.speed_mps) for t in last.values())
    assert speeds == [8, 8]


def test_a_car_occluded_for_five_frames_keeps_its_id():
    frames = []
    for k in range(25):
        p = np.array([30 + 6.0 * k * 0.1, 3.5])
        frames.append([] if 10 <= k < 15 else [(7, p)])
    tracker = Tracker(TrackerConfig(), NAMES)
    tracks = run(tracker, frames[:14])
    assert len(tracker) == 1 and tracker.misses[0] == 4                              # alive, unseen
    assert np.linalg.norm(tracker.x[0, :2] - [30 + 6.0 * 1.3, 3.5]) < 0.5    # where the car is (world)
    tracks += run_from(tracker, frames, 14)
    ids = {t.track_id for frame in tracks for t in frame}
    assert len(ids) == 1
    assert [len(f) for f in tracks[10:15]] == [1, 0, 0, 0, 0]                       # output_misses = 1
    assert tracks[10][0].misses == 1 and tracks[15][0].misses == 0 and tracks[15][0].instance_id == 7
    # with every coasting frame output, the predictions follow the car through the occlusion
    tracks = run(Tracker(TrackerConfig(output_misses=10), NAMES), frames)
    coasting = [frame[0] for frame in tracks[10:15]]
    assert all(t.misses == k + 1 for k, t in enumerate(coasting))
    assert np.linalg.norm(coasting[-1].center[:2] - [30 + 6.0 * 1.4, 3.5]) < 0.5


def test_a_track_is_deleted_after_max_misses_and_ids_are_not_reused():
    cfg = TrackerConfig(max_misses=3, output_misses=3)
    frames = [[(1, (20.0, 0.0))]] * 5 + [[]] * 5 + [[(1, (20.0, 0.0))]] * 3
    tracks = run(Tracker(cfg, NAMES), frames)
    assert [len(f) for f in tracks[5:10]] == [1, 1, 1, 0, 0]
    assert tracks[-1][0].track_id == 2                                               # a new track, a new id
    assert [len(f) for f in tracks[:2]] == [0, 1]                                    # born after min_hits = 2


def test_a_stationary_car_has_almost_no_speed():
    rng = np.random.default_rng(3)
    frames = [[(5, np.array([25.0, -4.0]) + rng.normal(0, 0.1, 2))] for _ in range(40)]
    tracks = run(Tracker(TrackerConfig(), NAMES), frames)
    assert all(len(f) == 1 for f in tracks[1:])
    speeds = [f[0].speed_mps for f in tracks[10:]]
    assert max(speeds) < 0.2, speeds
    assert tracks[-1][0].velocity_cov[0, 0] < 0.05 * TrackerConfig().init_velocity_std_mps ** 2   # it knows it


def test_classes_gate_the_assignment():
    tr = Tracker(TrackerConfig(), NAMES)
    ped, truck = TAX.id("pedestrian"), TAX.id("truck")
    for k in range(3):
        tr.update([obj(1, (10.0, 0.0), CAR)], k * DT_NS)
    out = tr.update([obj(2, (10.2, 0.0), ped)], 3 * DT_NS)                          # a pedestrian there: not the car
    assert [t.misses for t in out] == [1]
    out = tr.update([obj(3, (10.0, 0.1), truck)], 4 * DT_NS)                         # car and truck may swap
    assert [(t.track_id, t.misses) for t in out] == [(1, 0)]


def test_without_poses_tracks_are_in_the_base_frame():
    tr = Tracker(TrackerConfig(), NAMES)
    for k in range(5):
        out = tr.update([obj(1, (20.0 - k, 0.0))], k * DT_NS)
    assert out[0].frame_id == "base_link" and abs(out[0].velocity[0] + 10.0) < 1.5   # relative to the ego
    with pytest.raises(ValueError, match="out of order"):
        tr.update([], 0)


def test_tracker_config_is_validated():
    assert TrackerConfig.from_dict({"gate_m": 3}).gate_m == 3.0
    with pytest.raises(ConfigError, match="tracking.gate_mm"):
        TrackerConfig.from_dict({"gate_mm": 3})
    with pytest.raises(ConfigError, match="tracking.max_misses"):
        TrackerConfig.from_dict({"max_misses": -1})
    with pytest.raises(ConfigError, match="tracking.min_hits"):
        TrackerConfig.from_dict({"min_hits": "2"})


# --- amodal boxes -------------------------------------------------------------------------

def l_points(center, yaw, length, width, rng, step=0.05, noise=0.02):
    """Points on the two faces of a length x width rectangle a sensor at the origin sees."""
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.array([[c, -s], [s, c]])
    corners = np.array([[length / 2, width / 2], [length / 2, -width / 2], [-length / 2, -width / 2],
                        [-length / 2, width / 2]]) @ R.T + center
    near = int(np.argmin(np.linalg.norm(corners, axis=1)))
    pts = []
    for other in ((near + 1) % 4, (near + 3) % 4):
        a, b = corners[near], corners[other]
        n = int(np.linalg.norm(b - a) / step)
        pts.append(a + np.linspace(0, 1, n)[:, None] * (b - a))
    xy = np.concatenate(pts) + rng.normal(0, noise, (sum(len(p) for p in pts), 2))
    z = rng.uniform(0.2, 1.5, len(xy))
    return np.column_stack([xy, z])


@pytest.mark.parametrize("yaw_deg", [0.0, 17.0, 30.0, 62.0, -40.0])
def test_l_shape_fit_recovers_the_yaw(yaw_deg):
    rng = np.random.default_rng(int(yaw_deg) + 50)
    yaw = np.radians(yaw_deg)
    center = np.array([15.0, 6.0])
    fit = fit_box(l_points(center, yaw, 4.5, 1.8, rng), "car")
    assert axis_error_deg(fit.yaw, yaw) < 2.0
    assert np.linalg.norm(fit.center[:2] - center) < 0.3
    assert abs(fit.size[0] - 4.5) < 0.3 and abs(fit.size[1] - 1.8) < 0.2


def test_a_car_seen_from_behind_gets_a_car_sized_box_at_its_centre():
    rng = np.random.default_rng(2)
    xy = np.column_stack([np.full(60, 12.0), np.linspace(-0.9, 0.9, 60)]) + rng.normal(0, 0.02, (60, 2))
    pts = np.column_stack([xy, rng.uniform(0.2, 1.4, 60)])                           # its rear face only
    fit = fit_box(pts, "car")
    L, W = SIZE_PRIORS["car"]
    assert axis_error_deg(fit.yaw, 0.0) < 2.0 and fit.size[0] == pytest.approx(L, abs=0.05)
    assert fit.center[0] == pytest.approx(12.0 + L / 2, abs=0.1)                     # grown away from the sensor
    assert fit.visible_center[0] == pytest.approx(12.0, abs=0.1)                     # the visible box stays
    truth = (np.array([12.0 + 2.2, 0.0]), np.array([4.4, 1.8]), 0.0)
    assert bev_iou(fit.center, fit.size, fit.yaw, *truth) > 0.9
    assert bev_iou(fit.visible_center, fit.visible_size, fit.yaw, *truth) < 0.15


def test_bev_iou_of_rotated_rectangles():
    a = (np.array([0.0, 0.0]), np.array([2.0, 2.0]), 0.0)
    assert bev_iou(*a, *a) == pytest.approx(1.0)
    assert bev_iou(*a, np.array([1.0, 0.0]), np.array([2.0, 2.0]), 0.0) == pytest.approx(1 / 3, abs=1e-6)
    assert bev_iou(*a, np.array([0.0, 0.0]), np.array([2.0, 2.0]), np.pi / 4) == pytest.approx(
        (4 * (np.sqrt(2) - 1) * 2) / (8 - 4 * (np.sqrt(2) - 1) * 2), abs=1e-3)
    assert bev_iou(*a, np.array([5.0, 0.0]), np.array([2.0, 2.0]), 0.0) == 0.0


# --- instance refinement ------------------------------------------------------------------

@pytest.fixture(scope="module")
def box_mask_frames():
    from calibration.rig import rig_from_drive_calib
    from pipeline.sim.generate import Simulator

    sim = Simulator(seed=11, num_frames=30)
    return rig_from_drive_calib(sim.calib), [sim.render(i).frame for i in (0, 14)]


def box_masks(rig, f):
    """Each true instance's mask replaced by its filled bounding box (a loose mask: road,
    buildings and the things behind it are covered too); farther boxes painted first."""
    from pipeline.fusion.frame import CameraMasks
    from pipeline.fusion.label import InstanceMap

    truth = InstanceMap.from_id_image(f.instance, f.semantic)
    ids = np.zeros_like(f.instance)
    order = []
    for i in np.unique(f.instance[f.instance > 0]):
        r, c = np.nonzero(f.instance == i)
        order.append((r.max(), int(i), r.min(), c.min(), c.max()))
    for bottom, i, r0, c0, c1 in sorted(order):          # lower box bottom = farther: painted first
        ids[r0:bottom + 1, c0:c1 + 1] = i
    return CameraMasks(rig.cameras[0].name, f.camera.stamp_ns, f.semantic, InstanceMap(ids, truth.class_of, truth.score_of))


def test_instance_refinement_removes_the_background_a_loose_mask_covered(box_mask_frames):
    from pipeline.evaluation import instance_match_points
    from pipeline.fusion.config import FusionConfig
    from pipeline.fusion.frame import Poses, fuse_frame

    rig, frames = box_mask_frames
    prec = {True: [], False: []}
    for f in frames:
        before = None
        for refine in (False, True):
            r = fuse_frame(f.lidar, [box_masks(rig, f)], rig, FusionConfig(instance_refinement=refine), TAX,
                           Poses(f.pose_stamps_ns, f.T_world_from_base))
            pred = r.cloud.instance_id.astype(np.int64)
            hit, n = instance_match_points(pred, f.point_instance.astype(np.int64))
            prec[refine].append(hit / n)
            flagged = (r.cloud.flags & FLAG_NOT_IN_OBJECT) != 0
            if refine:
                assert flagged.any() and np.all(r.cloud.instance_id[flagged] == -1)
                # what lost its id is mostly what the box covered beyond its thing (background, other things)
                right = (before[flagged] % 65536) == f.point_instance[flagged]
                assert right.mean() < 0.35, right.mean()
                kept = pred >= 0
                assert set(np.unique(pred[kept])) == {o.instance_id for o in r.objects}
            else:
                assert not flagged.any()
                before = pred
    assert min(prec[True]) > 0.95 and min(prec[True]) > max(prec[False]) + 0.1, prec
