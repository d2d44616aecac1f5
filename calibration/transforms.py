"""SE(3) and SO(3) helpers: pure numpy, no I/O.

Conventions
- ``T_a_from_b`` is a (4, 4) homogeneous transform mapping coordinates in frame ``b`` to
  frame ``a``: ``p_a = T_a_from_b @ [p_b, 1]``. Composition reads right to left:
  ``T_a_from_c = T_a_from_b @ T_b_from_c``.
- Quaternions are in ROS order ``(x, y, z, w)``.
- Roll/pitch/yaw are the ZYX (intrinsic) Euler angles: ``R = Rz(yaw) @ Ry(pitch) @ Rx(roll)``.
- Times are int64 nanoseconds; differences are taken in integers before any conversion to
  float, so epoch-sized stamps keep their precision.
"""
from __future__ import annotations

import numpy as np

from pipeline.errors import InputDataError

ROTATION_TOL = 1e-5   # max |R^T R - I| and |det R - 1| accepted as a rotation (real calib files: ~1e-7)


# --- building and applying transforms -------------------------------------------------------

def make_T(R: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
    """(4, 4) float64 transform from a (3, 3) rotation and a (3,) translation."""
    T = np.eye(4)
    T[:3, :3] = np.asarray(R, dtype=np.float64).reshape(3, 3)
    if t is not None:
        T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def invert_T(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform (closed form, no matrix inversion). Works on (..., 4, 4)."""
    T = np.asarray(T, dtype=np.float64)
    R_inv = np.swapaxes(T[..., :3, :3], -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = R_inv
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", R_inv, T[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply ``T`` (4, 4) to the first three columns of ``points`` (N, >=3) -> (N, 3).

    The result has the dtype of ``points`` when it is floating (float32 clouds stay float32),
    float64 otherwise.
    """
    points = np.asarray(points)
    dtype = points.dtype if np.issubdtype(points.dtype, np.floating) else np.float64
    T = np.asarray(T, dtype=dtype)
    out = points[:, :3] @ T[:3, :3].T
    out += T[:3, 3]
    return out


def xyz_rows(points: np.ndarray, dtype=np.float64) -> np.ndarray:
    """The x, y, z columns of ``points`` (N, >=3) as contiguous rows (3, N) of ``dtype``."""
    out = np.empty((3, len(points)), dtype=dtype)
    out[0] = points[:, 0]
    out[1] = points[:, 1]
    out[2] = points[:, 2]
    return out


# --- rotations -----------------------------------------------------------------------------

def rot_x(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(yaw_rad: float) -> np.ndarray:
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def R_from_rpy(roll_rad: float, pitch_rad: float, yaw_rad: float) -> np.ndarray:
    return rot_z(yaw_rad) @ rot_y(pitch_rad) @ rot_x(roll_rad)


def rpy_from_R(R: np.ndarray) -> np.ndarray:
    """(roll, pitch, yaw) radians with ``R = Rz(yaw) Ry(pitch) Rx(roll)``; pitch in [-pi/2, pi/2]."""
    R = np.asarray(R, dtype=np.float64)
    pitch = np.arcsin(np.clip(-R[2, 0], -1.0, 1.0))
    if abs(R[2, 0]) < 1.0 - 1e-9:
        roll = np.arctan2(R[2, 1], R[2, 2])
        yaw = np.arctan2(R[1, 0], R[0, 0])
    else:  # gimbal lock: put everything in yaw
        roll = 0.0
        yaw = np.arctan2(-R[0, 1], R[1, 1])
    return np.array([roll, pitch, yaw])


def is_rotation(R: np.ndarray, tol: float = ROTATION_TOL) -> bool:
    """True when ``R`` is (3, 3), finite, orthonormal and has determinant +1 (within ``tol``)."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3) or not np.all(np.isfinite(R)):
        return False
    return bool(np.abs(R.T @ R - np.eye(3)).max() <= tol and abs(np.linalg.det(R) - 1.0) <= tol)


def quat_xyzw_from_R(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a rotation matrix (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    if tr > 0.0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def R_from_quat_xyzw(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a quaternion (x, y, z, w); the quaternion is normalised first.

    Raises ValueError for a zero or non-finite quaternion (loaders turn it into a
    CalibrationError naming the file and field).
    """
    q = np.asarray(q, dtype=np.float64).reshape(4)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion {q.tolist()} has no rotation (norm {n})")
    x, y, z, w = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def so3_exp(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of rotation vectors (..., 3) (Rodrigues)."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    theta = np.linalg.norm(rotvec, axis=-1)[..., None, None]
    K = _skew(rotvec)
    small = theta < 1e-8
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0 - theta**2 / 6.0, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta**2 / 24.0, (1.0 - np.cos(safe)) / safe**2)
    return np.eye(3) + a * K + b * (K @ K)


def so3_log(R: np.ndarray) -> np.ndarray:
    """Rotation vectors (..., 3) of rotation matrices (..., 3, 3); angle in [0, pi]."""
    R = np.asarray(R, dtype=np.float64)
    shape = R.shape[:-2]
    R = R.reshape(-1, 3, 3)
    cos = np.clip((np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    theta = np.arccos(cos)
    vee = np.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], axis=-1)
    small = theta < 1e-6
    scale = np.where(small, 0.5 + theta**2 / 12.0, theta / (2.0 * np.where(small, 1.0, np.sin(theta))))
    out = vee * scale[:, None]
    # Near pi the antisymmetric part vanishes: recover the axis from the symmetric part.
    for i in np.flatnonzero(theta > np.pi - 1e-4):
        B = (R[i] + R[i].T) / 2.0 - np.eye(3) * cos[i]
        col = int(np.argmax(np.diag(B)))
        axis = B[:, col] / np.linalg.norm(B[:, col])
        if np.dot(axis, vee[i]) < 0:
            axis = -axis
        out[i] = axis * theta[i]
    return out.reshape(*shape, 3)


def _skew(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    z = np.zeros(v.shape[:-1])
    return np.stack([
        np.stack([z, -v[..., 2], v[..., 1]], axis=-1),
        np.stack([v[..., 2], z, -v[..., 0]], axis=-1),
        np.stack([-v[..., 1], v[..., 0], z], axis=-1),
    ], axis=-2)


def sincos(angle_rad: np.ndarray, max_abs: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos) of float64 angles. When every |angle| <= 0.2 rad (``max_abs``, computed if not
    given) a Taylor polynomial is used: error < 1e-15, about 3x faster than np.sin + np.cos."""
    a = np.asarray(angle_rad, dtype=np.float64)
    if max_abs is None:
        max_abs = float(np.abs(a).max()) if a.size else 0.0
    if max_abs > 0.2:
        return np.sin(a), np.cos(a)
    a2 = a * a
    s = a * (1.0 - a2 * (1.0 / 6.0 - a2 * (1.0 / 120.0 - a2 * (1.0 / 5040.0 - a2 / 362880.0))))
    c = 1.0 - a2 * (0.5 - a2 * (1.0 / 24.0 - a2 * (1.0 / 720.0 - a2 * (1.0 / 40320.0 - a2 / 3628800.0))))
    return s, c


def rotate_about_axis_then(A: np.ndarray, axis_unit: np.ndarray, sin_a: np.ndarray, cos_a: np.ndarray,
                           points_T: np.ndarray) -> np.ndarray:
    """``A @ Exp(a_i * axis) @ p_i`` for every column p_i of ``points_T`` (3, N): one fixed unit
    axis (3,), per-point angles a_i given as sin/cos (N,), a fixed (3, 3) ``A`` -> (3, N).

    Rodrigues, ``Exp(a k) = k k^T + cos(a) (I - k k^T) + sin(a) [k]x``, folded into ``A`` so
    the cloud takes one (9, 3) matmul and a few row operations.
    """
    k = np.asarray(axis_unit, dtype=np.float64).reshape(3)
    kkT = np.outer(k, k)
    B = np.vstack([A @ (np.eye(3) - kkT), A @ _skew(k), A @ kkT])       # (9, 3)
    Y = B @ points_T
    out = Y[0:3] * cos_a
    out += Y[3:6] * sin_a
    out += Y[6:9]
    return out


# --- poses over time -----------------------------------------------------------------------

def interpolate_poses(stamps_ns: np.ndarray, T_world_from_base: np.ndarray, query_ns: np.ndarray, *,
                      tolerance_ns: int = 1_000_000) -> np.ndarray:
    """Poses at ``query_ns`` (K,) from timed poses (M,) / (M, 4, 4) -> (K, 4, 4).

    Rotation: slerp (geodesic on SO(3)); translation: linear. ``stamps_ns`` must be strictly
    increasing. A query up to ``tolerance_ns`` outside ``[stamps[0], stamps[-1]]`` is
    extrapolated from the end interval; further out raises InputDataError.
    """
    stamps = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
    T = np.asarray(T_world_from_base, dtype=np.float64)
    query = np.asarray(query_ns, dtype=np.int64).reshape(-1)
    j, frac = pose_intervals(stamps, query, tolerance_ns=tolerance_ns)
    if len(stamps) == 1:
        return np.broadcast_to(T[0], (len(query), 4, 4)).copy()
    R0 = T[j, :3, :3]
    R1 = T[j + 1, :3, :3]
    omega = so3_log(np.swapaxes(R0, -1, -2) @ R1)
    out = np.zeros((len(query), 4, 4))
    out[:, :3, :3] = R0 @ so3_exp(omega * frac[:, None])
    out[:, :3, 3] = T[j, :3, 3] + frac[:, None] * (T[j + 1, :3, 3] - T[j, :3, 3])
    out[:, 3, 3] = 1.0
    return out


def pose_intervals(stamps_ns: np.ndarray, query_ns: np.ndarray, *,
                   tolerance_ns: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
    """For each query stamp, the pose interval ``j`` (query in [stamps[j], stamps[j+1]]) and
    the fraction ``f`` in it (float64; slightly outside [0, 1] within the tolerance).

    With a single pose every query maps to ``j = 0, f = 0`` (it must lie within the tolerance).
    """
    stamps = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
    query = np.asarray(query_ns, dtype=np.int64).reshape(-1)
    if len(stamps) == 0:
        raise InputDataError("no poses to interpolate", field="pose_stamps_ns")
    if len(stamps) > 1 and np.any(np.diff(stamps) <= 0):
        raise InputDataError("pose stamps must be strictly increasing", field="pose_stamps_ns")
    if len(query):
        check_query_range(stamps, int(query.min()), int(query.max()), tolerance_ns)
    if len(stamps) == 1:
        return np.zeros(len(query), np.int64), np.zeros(len(query))
    j = np.searchsorted(stamps, query, side="right") - 1
    np.clip(j, 0, len(stamps) - 2, out=j)
    frac = (query - stamps[j]).astype(np.float64) / (stamps[j + 1] - stamps[j]).astype(np.float64)
    return j, frac


def check_query_range(stamps_ns: np.ndarray, lo_ns: int, hi_ns: int, tolerance_ns: int) -> None:
    """InputDataError unless [lo_ns, hi_ns] lies within the stamps, give or take ``tolerance_ns``."""
    if lo_ns < stamps_ns[0] - tolerance_ns or hi_ns > stamps_ns[-1] + tolerance_ns:
        bad = lo_ns if lo_ns < stamps_ns[0] - tolerance_ns else hi_ns
        raise InputDataError(f"query time {bad} ns lies outside the poses [{stamps_ns[0]}, {stamps_ns[-1]}] ns "
                             f"by more than {tolerance_ns} ns", field="query_ns")
