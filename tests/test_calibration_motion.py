"""SE(3) helpers, pose interpolation and ego-motion compensation against closed-form motion."""
from __future__ import annotations

import numpy as np
import pytest

from calibration.motion import compensate_ego_motion, compensate_ego_motion_twist
from calibration.transforms import (R_from_quat_xyzw, R_from_rpy, interpolate_poses, invert_T, is_rotation,
                                    make_T, quat_xyzw_from_R, rot_z, rpy_from_R, so3_exp, so3_log,
                                    transform_points)
from pipeline.errors import InputDataError

S_NS = 1_700_000_000_123_456_789      # an epoch-sized stamp: float64 cannot hold it exactly
V_MPS, YAW_RATE = 15.0, 0.4           # constant speed along the heading, constant yaw rate
PSI0, X0, Y0, Z0 = 0.3, 100.0, -50.0, 0.2
T_BASE_FROM_LIDAR = make_T(R_from_rpy(0.01, -0.02, 0.1), [1.2, 0.1, 1.8])


def _pose_closed_form(t_ns: np.ndarray) -> np.ndarray:
    """T_world_from_base at (int64 ns) times: a circular arc at constant speed and yaw rate."""
    t = (np.asarray(t_ns, dtype=np.int64) - S_NS).astype(np.float64) / 1e9
    psi = PSI0 + YAW_RATE * t
    x = X0 + V_MPS / YAW_RATE * (np.sin(psi) - np.sin(PSI0))
    y = Y0 - V_MPS / YAW_RATE * (np.cos(psi) - np.cos(PSI0))
    T = np.zeros((len(t), 4, 4))
    T[:, 0, 0] = T[:, 1, 1] = np.cos(psi)
    T[:, 0, 1], T[:, 1, 0] = -np.sin(psi), np.sin(psi)
    T[:, 2, 2] = T[:, 3, 3] = 1.0
    T[:, :3, 3] = np.stack([x, y, np.full_like(x, Z0)], axis=1)
    return T


def _sweep(n: int, seed: int = 0):
    """Static world points seen by the LiDAR at their own times during a 100 ms sweep."""
    rng = np.random.default_rng(seed)
    t_offset = np.sort(rng.integers(0, 100_000_000, n)).astype(np.int64)
    T_w = _pose_closed_form(S_NS + t_offset)
    # world points at 2..80 m around the vehicle at each point's time
    rel = rng.uniform(-80, 80, (n, 3))
    rel[:, 2] = rng.uniform(-2, 5, n)
    T_world_from_lidar = T_w @ T_BASE_FROM_LIDAR
    points_world = np.einsum("nij,nj->ni", T_world_from_lidar[:, :3, :3], rel) + T_world_from_lidar[:, :3, 3]
    T_lidar_from_world = invert_T(T_world_from_lidar)
    points_lidar = np.einsum("nij,nj->ni", T_lidar_from_world[:, :3, :3], points_world) + T_lidar_from_world[:, :3, 3]
    intensity = rng.uniform(0, 1, (n, 1))
    return np.hstack([points_lidar, intensity]), t_offset, points_world


def _expected(points_world: np.ndarray, target_ns: int) -> np.ndarray:
    T = invert_T(_pose_closed_form(np.array([target_ns]))[0] @ T_BASE_FROM_LIDAR)
    return transform_points(T, points_world)


@pytest.mark.parametrize("target_offset_ms, shuffle", [(50, False), (0, True), (130, False)])
def test_compensation_from_poses_matches_closed_form(target_offset_ms, shuffle):
    points, t_offset, points_world = _sweep(20000)
    if shuffle:     # points out of time order take the sorting path
        perm = np.random.default_rng(9).permutation(len(points))
        points, t_offset, points_world = points[perm], t_offset[perm], points_world[perm]
    pose_stamps = S_NS + np.arange(-30, 160, 10, dtype=np.int64) * 1_000_000      # 100 Hz
    target = S_NS + target_offset_ms * 1_000_000
    out = compensate_ego_motion(points.astype(np.float32), S_NS, t_offset, pose_stamps,
                                _pose_closed_form(pose_stamps), T_BASE_FROM_LIDAR, target)
    assert out.dtype == np.float32 and out.shape == points.shape
    err = np.linalg.norm(out[:, :3].astype(np.float64) - _expected(points_world, target), axis=1)
    assert err.max() < 1e-3
    np.testing.assert_array_equal(out[:, 3], points[:, 3].astype(np.float32))
    # Without compensation the same points are metres off: the test can fail.
    raw_err = np.linalg.norm(points[:, :3] - _expected(points_world, target), axis=1)
    assert raw_err.max() > 0.5


def test_compensation_from_twist_is_exact():
    points, t_offset, points_world = _sweep(20000, seed=1)
    target = S_NS + 70_000_000
    out = compensate_ego_motion_twist(points, S_NS, t_offset, [V_MPS, 0.0, 0.0], [0.0, 0.0, YAW_RATE],
                                      T_BASE_FROM_LIDAR, target)
    err = np.linalg.norm(out[:, :3] - _expected(points_world, target), axis=1)
    assert err.max() < 1e-6
    # zero yaw rate takes the straight-line branch
    out0 = compensate_ego_motion_twist(points[:10], S_NS, t_offset[:10], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0],
                                       T_BASE_FROM_LIDAR, target)
    np.testing.assert_allclose(out0, points[:10], atol=1e-12)


def test_compensation_refuses_times_outside_the_poses():
    points, t_offset, _ = _sweep(100)
    pose_stamps = S_NS + np.arange(0, 60, 10, dtype=np.int64) * 1_000_000         # ends at +50 ms
    with pytest.raises(InputDataError, match="outside the poses"):
        compensate_ego_motion(points, S_NS, t_offset, pose_stamps, _pose_closed_form(pose_stamps),
                              T_BASE_FROM_LIDAR, S_NS + 20_000_000)


def test_interpolate_poses_slerp_and_limits():
    stamps = np.array([S_NS, S_NS + 100_000_000], dtype=np.int64)
    T = np.stack([make_T(rot_z(0.0), [0, 0, 0]), make_T(rot_z(1.0), [2.0, 4.0, 0.0])])
    q = interpolate_poses(stamps, T, np.array([S_NS + 25_000_000, S_NS + 100_500_000]))
    np.testing.assert_allclose(q[0], make_T(rot_z(0.25), [0.5, 1.0, 0.0]), atol=1e-12)
    np.testing.assert_allclose(q[1][:3, :3], rot_z(1.005), atol=1e-12)          # within tolerance: extrapolated
    with pytest.raises(InputDataError, match="query_ns"):
        interpolate_poses(stamps, T, np.array([S_NS - 5_000_000]))
    with pytest.raises(InputDataError, match="strictly increasing"):
        interpolate_poses(stamps[::-1], T, np.array([S_NS]))


def test_rotation_helpers_round_trip():
    rng = np.random.default_rng(3)
    for _ in range(50):
        rpy = rng.uniform([-3, -1.5, -3], [3, 1.5, 3])
        R = R_from_rpy(*rpy)
        assert is_rotation(R)
        np.testing.assert_allclose(rpy_from_R(R), rpy, atol=1e-9)
        q = quat_xyzw_from_R(R)
        np.testing.assert_allclose(R_from_quat_xyzw(q), R, atol=1e-12)
        np.testing.assert_allclose(so3_exp(so3_log(R)), R, atol=1e-9)
    # angle pi exactly (antisymmetric part vanishes)
    R_pi = so3_exp(np.array([0.0, np.pi, 0.0]))
    np.testing.assert_allclose(so3_exp(so3_log(R_pi)), R_pi, atol=1e-9)
    # ROS order: (x, y, z, w); 90 deg about z
    np.testing.assert_allclose(R_from_quat_xyzw([0, 0, np.sqrt(0.5), np.sqrt(0.5)]), rot_z(np.pi / 2), atol=1e-12)
    T = make_T(R_from_rpy(0.1, 0.2, 0.3), [1, 2, 3])
    np.testing.assert_allclose(invert_T(T) @ T, np.eye(4), atol=1e-12)
    assert not is_rotation(np.diag([1.0, 1.0, -1.0]))


def test_sincos_polynomial_branch_is_exact_to_float64():
    from calibration.transforms import sincos

    small = np.linspace(-0.2, 0.2, 10001)
    s, c = sincos(small)
    assert np.abs(s - np.sin(small)).max() < 1e-15 and np.abs(c - np.cos(small)).max() < 1e-15
    large = np.linspace(-4.0, 4.0, 101)
    s, c = sincos(large)
    np.testing.assert_array_equal(s, np.sin(large))
    np.testing.assert_array_equal(c, np.cos(large))
