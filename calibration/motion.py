"""Ego-motion compensation of LiDAR sweeps: pure, vectorised math.

A spinning LiDAR takes each point at its own time ``stamp_ns + t_offset_ns[i]`` while the
vehicle moves. To fuse with a camera image taken at ``target_ns`` (the exposure time), every
point is moved to where it would be seen from the LiDAR *as it was at target_ns*:

    p_target = T_lidar_from_base · T_world_from_base(target)^-1 · T_world_from_base(t_i) · T_base_from_lidar · p_i

(static world assumed). Two sources of ego motion are supported: timed poses
(``T_world_from_base`` at >= ~100 Hz; slerp + linear translation between them), and a
constant body twist (linear and angular velocity of the base frame), which is exact for
constant speed and yaw rate.
"""
from __future__ import annotations

import numpy as np

from calibration.transforms import (check_query_range, interpolate_poses, invert_T, rotate_about_axis_then, sincos,
                                    so3_log, xyz_rows)
from pipeline.errors import InputDataError

NS_PER_S = 1_000_000_000


def _split_points(points_lidar: np.ndarray) -> tuple[np.ndarray, np.dtype]:
    points = np.asarray(points_lidar)
    if points.ndim != 2 or points.shape[1] < 3:
        raise InputDataError(f"points must be (N, 3) or (N, >=4), got {points.shape}", field="points_lidar")
    dtype = points.dtype if points.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    return points, dtype


def _point_offsets_ns(n: int, stamp_ns: int, t_offset_ns: np.ndarray | None, target_ns: int) -> np.ndarray | None:
    """Per-point time relative to the target, int64 ns (None: every point at ``stamp_ns``)."""
    if t_offset_ns is None:
        return None
    t_offset_ns = np.asarray(t_offset_ns)
    if t_offset_ns.shape != (n,):
        raise InputDataError(f"t_offset_ns must be ({n},), got {t_offset_ns.shape}", field="t_offset_ns")
    return t_offset_ns.astype(np.int64, copy=False) + np.int64(int(stamp_ns) - int(target_ns))


def _output(points: np.ndarray, xyz: np.ndarray, dtype: np.dtype) -> np.ndarray:
    out = np.array(points, dtype=dtype, copy=True)
    out[:, :3] = xyz
    return out


def compensate_ego_motion(points_lidar: np.ndarray, stamp_ns: int, t_offset_ns: np.ndarray | None,
                          pose_stamps_ns: np.ndarray, T_world_from_base: np.ndarray,
                          T_base_from_lidar: np.ndarray, target_ns: int, *,
                          tolerance_ns: int = 1_000_000) -> np.ndarray:
    """Points (N, 3|>=4) taken at ``stamp_ns + t_offset_ns`` -> the same points in the LiDAR
    frame at ``target_ns``, from timed poses (M,) / (M, 4, 4). Extra columns (intensity)
    are carried over; float32 in, float32 out. Every point time and ``target_ns`` must lie
    within the poses (``tolerance_ns`` beyond the ends is extrapolated), else InputDataError.
    """
    points, dtype = _split_points(points_lidar)
    n = len(points)
    stamps = np.asarray(pose_stamps_ns, dtype=np.int64).reshape(-1)
    T_wb = np.asarray(T_world_from_base, dtype=np.float64)
    if T_wb.shape != (len(stamps), 4, 4):
        raise InputDataError(f"T_world_from_base must be ({len(stamps)}, 4, 4), got {T_wb.shape}",
                             field="T_world_from_base")
    T_bl = np.asarray(T_base_from_lidar, dtype=np.float64)
    T_lb = invert_T(T_bl)

    # Pose of the base at the target time, and the static part of the chain.
    T_c = interpolate_poses(stamps, T_wb, np.array([target_ns]), tolerance_ns=tolerance_ns)[0]
    T_lidar_from_world_c = T_lb @ invert_T(T_c)
    offsets = _point_offsets_ns(n, stamp_ns, t_offset_ns, target_ns)
    if offsets is None or n == 0:
        T_w = interpolate_poses(stamps, T_wb, np.array([stamp_ns]), tolerance_ns=tolerance_ns)[0]
        T = T_lidar_from_world_c @ T_w @ T_bl
        xyz = points[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
        return _output(points, xyz, dtype)

    if len(stamps) == 1:
        check_query_range(stamps, int(offsets.min()) + int(target_ns), int(offsets.max()) + int(target_ns),
                          tolerance_ns)
        T = T_lidar_from_world_c @ T_wb[0] @ T_bl
        xyz = points[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
        return _output(points, xyz, dtype)

    # Point times relative to the first pose, in time order (sweeps usually are; else a
    # stable sort). Each pose interval is then one contiguous slice, found with M searches.
    rel = stamps - stamps[0]
    q = offsets + np.int64(int(target_ns) - int(stamps[0]))
    p_base_T = T_bl[:3, :3] @ xyz_rows(points)
    p_base_T += T_bl[:3, 3:4]                                              # (3, N) base frame
    order = None
    if np.any(q[1:] < q[:-1]):
        order = np.argsort(q, kind="stable")
        q, p_base_T = q[order], p_base_T[:, order]
    check_query_range(rel, int(q[0]), int(q[-1]), tolerance_ns)
    starts = np.concatenate([[0], np.searchsorted(q, rel[1:-1], side="left"), [n]])

    # Per interval k: slerp increment (axis, angle) and the rest of the chain, so a point
    # costs one Rodrigues rotation by f * angle folded into a 3x3, plus a translation.
    R0 = T_wb[:-1, :3, :3]
    omega = so3_log(np.swapaxes(R0, -1, -2) @ T_wb[1:, :3, :3])          # (M-1, 3), base frame at k
    angle = np.linalg.norm(omega, axis=1)
    R_lw = T_lidar_from_world_c[:3, :3]
    out_T = np.empty_like(p_base_T)
    for k in np.flatnonzero(starts[1:] > starts[:-1]):
        s, e = starts[k], starts[k + 1]
        f = (q[s:e] - rel[k]).astype(np.float64) / float(rel[k + 1] - rel[k])
        A = R_lw @ R0[k]
        if angle[k] > 1e-15:
            a = f * angle[k]
            sin_a, cos_a = sincos(a, max_abs=angle[k] * max(abs(float(f[0])), abs(float(f[-1]))))
            o = rotate_about_axis_then(A, omega[k] / angle[k], sin_a, cos_a, p_base_T[:, s:e])
        else:
            o = A @ p_base_T[:, s:e]
        o += (R_lw @ T_wb[k, :3, 3] + T_lidar_from_world_c[:3, 3])[:, None]
        o += (R_lw @ (T_wb[k + 1, :3, 3] - T_wb[k, :3, 3]))[:, None] * f
        out_T[:, s:e] = o
    if order is not None:
        unsorted = np.empty_like(out_T)
        unsorted[:, order] = out_T
        out_T = unsorted
    return _output(points, out_T.T, dtype)


def compensate_ego_motion_twist(points_lidar: np.ndarray, stamp_ns: int, t_offset_ns: np.ndarray | None,
                                v_base_mps: np.ndarray, omega_base_radps: np.ndarray,
                                T_base_from_lidar: np.ndarray, target_ns: int) -> np.ndarray:
    """Like ``compensate_ego_motion`` for a constant body twist: ``v_base_mps`` (3,) and
    ``omega_base_radps`` (3,) are the base frame's linear and angular velocity expressed in the
    base frame (e.g. (v, 0, 0) and (0, 0, yaw_rate)). Exact (SE(3) exponential) for that motion.
    """
    points, dtype = _split_points(points_lidar)
    n = len(points)
    v = np.asarray(v_base_mps, dtype=np.float64).reshape(3)
    w = np.asarray(omega_base_radps, dtype=np.float64).reshape(3)
    T_bl = np.asarray(T_base_from_lidar, dtype=np.float64)
    offsets = _point_offsets_ns(n, stamp_ns, t_offset_ns, target_ns)
    if offsets is None:
        offsets = np.full(n, int(stamp_ns) - int(target_ns), dtype=np.int64)
    dt = offsets.astype(np.float64) / NS_PER_S                             # seconds, point time - target
    p_base_T = T_bl[:3, :3] @ xyz_rows(points)
    p_base_T += T_bl[:3, 3:4]                                              # (3, N)
    # T_base(target)_from_base(t_i) = Exp(xi * dt_i), xi = (v, w) in the body frame.
    wn = float(np.linalg.norm(w))
    T_lb = invert_T(T_bl)
    R_lb = T_lb[:3, :3]
    if wn < 1e-12:
        xyz_T = R_lb @ p_base_T
        xyz_T += (R_lb @ v)[:, None] * dt
    else:
        theta = wn * dt
        sin_t, cos_t = sincos(theta, max_abs=wn * float(np.abs(dt).max()) if n else 0.0)
        xyz_T = rotate_about_axis_then(R_lb, w / wn, sin_t, cos_t, p_base_T)
        xyz_T += (R_lb @ v)[:, None] * dt
        xyz_T += (R_lb @ np.cross(w, v))[:, None] * ((1.0 - cos_t) / wn**2)
        xyz_T += (R_lb @ np.cross(w, np.cross(w, v)))[:, None] * ((theta - sin_t) / wn**3)
    xyz_T += T_lb[:3, 3:4]
    return _output(points, xyz_T.T, dtype)
