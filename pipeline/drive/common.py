"""Helpers shared by the drive writers and readers: frame checks, the pose window rule,
rotations, and the JSON forms of DriveMeta, DriveCalib, boxes and lanes.

Light module: numpy and our own leaf modules only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.drive.types import DriveCalib, DriveFrame, DriveMeta
from pipeline.errors import InputDataError
from pipeline.types import Box3D, LaneBoundaryGT

# --- The pose window ------------------------------------------------------------------------
# A frame read back from a drive gets every stored ego pose with a stamp in
#   [lidar_stamp - POSE_MARGIN_NS, max(camera_stamp, lidar_stamp + SWEEP_PERIOD_NS) + POSE_MARGIN_NS]
# (both ends inclusive). Writers store each pose stamp once, so a frame written with exactly
# this window comes back with exactly its poses.
POSE_MARGIN_NS = 10_000_000
SWEEP_PERIOD_NS = 100_000_000

FORMAT_VERSION = 1      # of the segfuse extras (drive_meta JSON, calib.json, boxes/lanes JSON)
NS_PER_S = 1_000_000_000
UINT32_MAX = 2**32 - 1


def pose_window_ns(camera_stamp_ns: int, lidar_stamp_ns: int) -> tuple[int, int]:
    """The inclusive ``(start_ns, end_ns)`` window of ego poses that belong to a frame."""
    start = int(lidar_stamp_ns) - POSE_MARGIN_NS
    end = max(int(camera_stamp_ns), int(lidar_stamp_ns) + SWEEP_PERIOD_NS) + POSE_MARGIN_NS
    return start, end


def select_poses(stamps_ns: np.ndarray, T: np.ndarray, window: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Poses with ``window[0] <= stamp <= window[1]`` from sorted ``stamps_ns`` (M,), ``T`` (M, 4, 4)."""
    lo = int(np.searchsorted(stamps_ns, window[0], side="left"))
    hi = int(np.searchsorted(stamps_ns, window[1], side="right"))
    return stamps_ns[lo:hi].copy(), T[lo:hi].copy()


def empty_poses() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros((0, 4, 4), np.float64)


# --- Frame checks ---------------------------------------------------------------------------

@dataclass
class CheckedFrame:
    """A DriveFrame's arrays in the exact dtypes and layouts the formats store."""

    image: np.ndarray                 # (H, W, 3) uint8, C-contiguous
    points: np.ndarray                # (N, 4) float32, C-contiguous
    t_offset_u32: np.ndarray | None   # (N,) uint32
    semantic: np.ndarray | None       # (H, W) uint8
    instance: np.ndarray | None       # (H, W) uint16
    point_class: np.ndarray | None    # (N,) uint8
    point_instance: np.ndarray | None  # (N,) uint16
    pose_stamps_ns: np.ndarray        # (M,) int64, strictly increasing
    T_world_from_base: np.ndarray     # (M, 4, 4) float64

    @property
    def has_gt(self) -> bool:
        return any(a is not None for a in (self.semantic, self.instance, self.point_class, self.point_instance))


def _int_array(arr: Any, dtype: type, shape: tuple[int, ...], field: str, where: Path) -> np.ndarray:
    a = np.asarray(arr)
    if a.shape != shape:
        raise InputDataError(f"shape {a.shape}, expected {shape}", path=where, field=field)
    if a.dtype != dtype:
        if a.dtype.kind not in "iub":
            raise InputDataError(f"dtype {a.dtype}, expected integers ({np.dtype(dtype).name})", path=where,
                                 field=field)
        info = np.iinfo(dtype)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise InputDataError(f"values outside {np.dtype(dtype).name} range [{info.min}, {info.max}]",
                                 path=where, field=field)
        a = a.astype(dtype)
    return np.ascontiguousarray(a)


def check_frame(frame: DriveFrame, calib: DriveCalib, where: Path) -> CheckedFrame:
    """Validate a frame against the calibration; raise InputDataError naming the field."""
    h, w = int(calib.height), int(calib.width)
    if frame.camera.camera_id != calib.camera_id:
        raise InputDataError(f"camera id '{frame.camera.camera_id}' differs from the calibration's "
                             f"'{calib.camera_id}'", path=where, field="camera.camera_id")
    if frame.lidar.lidar_id != calib.lidar_id:
        raise InputDataError(f"lidar id '{frame.lidar.lidar_id}' differs from the calibration's "
                             f"'{calib.lidar_id}'", path=where, field="lidar.lidar_id")
    for field, stamp in (("camera.stamp_ns", frame.camera.stamp_ns), ("lidar.stamp_ns", frame.lidar.stamp_ns)):
        if int(stamp) < 0:
            raise InputDataError(f"negative stamp {stamp}", path=where, field=field)
    image = np.asarray(frame.camera.image)
    if image.shape != (h, w, 3) or image.dtype != np.uint8:
        raise InputDataError(f"image {image.shape} {image.dtype}, expected ({h}, {w}, 3) uint8",
                             path=where, field="camera.image")
    points = np.asarray(frame.lidar.points)
    if points.ndim != 2 or points.shape[1] != 4 or points.dtype.kind != "f":
        raise InputDataError(f"points {points.shape} {points.dtype}, expected (N, 4) float32",
                             path=where, field="lidar.points")
    points = np.ascontiguousarray(points, dtype=np.float32)
    n = points.shape[0]
    t_off = None
    if frame.lidar.t_offset_ns is not None:
        t_off = np.asarray(frame.lidar.t_offset_ns)
        if t_off.shape != (n,) or t_off.dtype.kind not in "iu":
            raise InputDataError(f"t_offset_ns {t_off.shape} {t_off.dtype}, expected ({n},) integers",
                                 path=where, field="lidar.t_offset_ns")
        if n and (t_off.min() < 0 or t_off.max() > UINT32_MAX):
            raise InputDataError("per-point times must lie in [0, 2^32) ns after the sweep start",
                                 path=where, field="lidar.t_offset_ns")
        t_off = np.ascontiguousarray(t_off, dtype=np.uint32)
    sem = None if frame.semantic is None else _int_array(frame.semantic, np.uint8, (h, w), "semantic", where)
    ins = None if frame.instance is None else _int_array(frame.instance, np.uint16, (h, w), "instance", where)
    pcls = None if frame.point_class is None else _int_array(frame.point_class, np.uint8, (n,), "point_class", where)
    pins = None if frame.point_instance is None else _int_array(frame.point_instance, np.uint16, (n,),
                                                                "point_instance", where)
    stamps = np.asarray(frame.pose_stamps_ns)
    T = np.asarray(frame.T_world_from_base, dtype=np.float64)
    if stamps.ndim != 1 or stamps.dtype.kind not in "iu" or T.shape != (stamps.shape[0], 4, 4):
        raise InputDataError(f"poses: stamps {stamps.shape} {stamps.dtype}, T {T.shape}; expected (M,) integers "
                             "and (M, 4, 4)", path=where, field="pose_stamps_ns")
    stamps = stamps.astype(np.int64)
    if stamps.size > 1 and np.any(np.diff(stamps) <= 0):
        raise InputDataError("pose stamps must be strictly increasing", path=where, field="pose_stamps_ns")
    if not np.all(np.isfinite(T)):
        raise InputDataError("non-finite pose", path=where, field="T_world_from_base")
    for i, box in enumerate(frame.boxes):
        if np.asarray(box.center).shape != (3,) or np.asarray(box.size).shape != (3,):
            raise InputDataError("box center and size must be (3,)", path=where, field=f"boxes[{i}]")
    for i, lane in enumerate(frame.lanes):
        pts = np.asarray(lane.points_base)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise InputDataError(f"points_base {pts.shape}, expected (M, 3)", path=where, field=f"lanes[{i}]")
    return CheckedFrame(np.ascontiguousarray(image), points, t_off, sem, ins, pcls, pins, stamps, T)


# --- Rotations ------------------------------------------------------------------------------

def quat_from_matrix(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (x, y, z, w), w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    shape = R.shape[:-2]
    R = R.reshape(-1, 3, 3)
    q = np.empty((R.shape[0], 4))
    tr = R[:, 0, 0] + R[:, 1, 1] + R[:, 2, 2]
    # Shepperd: pick the largest of w, x, y, z to divide by.
    cand = np.stack([tr, R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]], axis=1)
    k = np.argmax(cand, axis=1)
    for case in range(4):
        m = k == case
        if not np.any(m):
            continue
        r = R[m]
        if case == 0:
            s = np.sqrt(1.0 + tr[m]) * 2
            q[m] = np.stack([(r[:, 2, 1] - r[:, 1, 2]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s,
                             (r[:, 1, 0] - r[:, 0, 1]) / s, 0.25 * s], axis=1)
        elif case == 1:
            s = np.sqrt(1.0 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2]) * 2
            q[m] = np.stack([0.25 * s, (r[:, 0, 1] + r[:, 1, 0]) / s, (r[:, 0, 2] + r[:, 2, 0]) / s,
                             (r[:, 2, 1] - r[:, 1, 2]) / s], axis=1)
        elif case == 2:
            s = np.sqrt(1.0 + r[:, 1, 1] - r[:, 0, 0] - r[:, 2, 2]) * 2
            q[m] = np.stack([(r[:, 0, 1] + r[:, 1, 0]) / s, 0.25 * s, (r[:, 1, 2] + r[:, 2, 1]) / s,
                             (r[:, 0, 2] - r[:, 2, 0]) / s], axis=1)
        else:
            s = np.sqrt(1.0 + r[:, 2, 2] - r[:, 0, 0] - r[:, 1, 1]) * 2
            q[m] = np.stack([(r[:, 0, 2] + r[:, 2, 0]) / s, (r[:, 1, 2] + r[:, 2, 1]) / s, 0.25 * s,
                             (r[:, 1, 0] - r[:, 0, 1]) / s], axis=1)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 3] < 0] *= -1
    return q.reshape(*shape, 4)


def matrix_from_quat(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (x, y, z, w), normalised here -> (..., 3, 3) rotation matrices."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    R = np.empty(q.shape[:-1] + (3, 3))
    R[..., 0, 0] = 1 - 2 * (y * y + z * z)
    R[..., 0, 1] = 2 * (x * y - z * w)
    R[..., 0, 2] = 2 * (x * z + y * w)
    R[..., 1, 0] = 2 * (x * y + z * w)
    R[..., 1, 1] = 1 - 2 * (x * x + z * z)
    R[..., 1, 2] = 2 * (y * z - x * w)
    R[..., 2, 0] = 2 * (x * z - y * w)
    R[..., 2, 1] = 2 * (y * z + x * w)
    R[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return R


def transform(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def wrap_angle(a: float) -> float:
    """Wrap to (-pi, pi]."""
    a = math.remainder(float(a), 2 * math.pi)
    return math.pi if a == -math.pi else a


# --- JSON forms -----------------------------------------------------------------------------

def meta_to_dict(meta: DriveMeta) -> dict[str, Any]:
    return {"segfuse_drive_format": FORMAT_VERSION, "seed": int(meta.seed), "num_frames": int(meta.num_frames),
            "rate_hz": float(meta.rate_hz), "generator": str(meta.generator), "extra": meta.extra}


def meta_to_json(meta: DriveMeta) -> str:
    try:
        return json.dumps(meta_to_dict(meta), sort_keys=True)
    except TypeError as exc:
        raise InputDataError(f"DriveMeta.extra is not JSON-serialisable: {exc}", field="meta.extra") from exc


def meta_from_json(text: str, where: Path, field: str | None = None) -> DriveMeta:
    try:
        d = json.loads(text)
        return DriveMeta(seed=int(d["seed"]), num_frames=int(d["num_frames"]), rate_hz=float(d["rate_hz"]),
                         generator=str(d.get("generator", "segfuse sim")), extra=dict(d.get("extra") or {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputDataError(f"drive metadata is not valid: {exc!r}", path=where, field=field) from exc


def calib_to_dict(calib: DriveCalib) -> dict[str, Any]:
    return {"segfuse_drive_format": FORMAT_VERSION, "camera_id": calib.camera_id,
            "width": int(calib.width), "height": int(calib.height),
            "K": np.asarray(calib.K, np.float64).tolist(), "dist": np.asarray(calib.dist, np.float64).tolist(),
            "T_base_from_cam": np.asarray(calib.T_base_from_cam, np.float64).tolist(),
            "lidar_id": calib.lidar_id,
            "T_base_from_lidar": np.asarray(calib.T_base_from_lidar, np.float64).tolist()}


def calib_from_dict(d: dict[str, Any], where: Path) -> DriveCalib:
    try:
        calib = DriveCalib(camera_id=str(d["camera_id"]), width=int(d["width"]), height=int(d["height"]),
                           K=np.array(d["K"], np.float64).reshape(3, 3), dist=np.array(d["dist"], np.float64),
                           T_base_from_cam=np.array(d["T_base_from_cam"], np.float64).reshape(4, 4),
                           lidar_id=str(d["lidar_id"]),
                           T_base_from_lidar=np.array(d["T_base_from_lidar"], np.float64).reshape(4, 4))
    except (KeyError, ValueError, TypeError) as exc:
        from pipeline.errors import CalibrationError
        raise CalibrationError(f"drive calibration is not valid: {exc!r}", path=where) from exc
    return calib


def check_calib(calib: DriveCalib, where: Path) -> None:
    """Reject a calibration the formats cannot store."""
    from pipeline.errors import CalibrationError

    for name in ("camera_id", "lidar_id"):
        value = getattr(calib, name)
        if not isinstance(value, str) or not value or not value.replace("_", "").isalnum():
            raise CalibrationError(f"must be a non-empty name of letters, digits and '_', got {value!r}",
                                   path=where, field=name)
    if int(calib.width) <= 0 or int(calib.height) <= 0:
        raise CalibrationError("image size must be positive", path=where, field="width")
    for name, shape in (("K", (3, 3)), ("T_base_from_cam", (4, 4)), ("T_base_from_lidar", (4, 4))):
        a = np.asarray(getattr(calib, name), np.float64)
        if a.shape != shape or not np.all(np.isfinite(a)):
            raise CalibrationError(f"expected a finite {shape} matrix, got {a.shape}", path=where, field=name)
    if np.asarray(calib.dist).shape != (5,):
        raise CalibrationError("expected 5 plumb_bob coefficients (k1 k2 p1 p2 k3)", path=where, field="dist")


def box_to_dict(box: Box3D, class_name: str) -> dict[str, Any]:
    return {"instance_id": int(box.instance_id), "class_id": int(box.class_id), "class_name": class_name,
            "center": np.asarray(box.center, np.float64).tolist(),
            "size": np.asarray(box.size, np.float64).tolist(), "yaw": float(box.yaw)}


def box_from_dict(d: dict[str, Any]) -> Box3D:
    return Box3D(instance_id=int(d["instance_id"]), class_id=int(d["class_id"]),
                 center=np.array(d["center"], np.float64), size=np.array(d["size"], np.float64),
                 yaw=float(d["yaw"]))


def lane_to_dict(lane: LaneBoundaryGT) -> dict[str, Any]:
    return {"lane_id": int(lane.lane_id), "type": str(lane.type),
            "points_base": np.asarray(lane.points_base, np.float64).tolist()}


def lane_from_dict(d: dict[str, Any]) -> LaneBoundaryGT:
    pts = np.array(d["points_base"], np.float64).reshape(-1, 3)
    return LaneBoundaryGT(lane_id=int(d["lane_id"]), type=str(d["type"]), points_base=pts)


def taxonomy_names() -> tuple[str, ...]:
    from pipeline.config import load_taxonomy

    return load_taxonomy().names


def class_name(names: tuple[str, ...], class_id: int, where: Path) -> str:
    """Taxonomy name of a class id (the rosbag stores names, as vision_msgs wants)."""
    if not 0 <= int(class_id) < len(names):
        raise InputDataError(f"class id {class_id} is not in the taxonomy (0..{len(names) - 1})",
                             path=where, field="boxes.class_id")
    return names[int(class_id)]


def class_id_from_name(names: tuple[str, ...], name: str, where: Path, field: str) -> int:
    if name in names:
        return names.index(name)
    if name.isdigit():
        return int(name)
    raise InputDataError(f"unknown class '{name}' (taxonomy: {', '.join(names)})", path=where, field=field)
