"""Checks on calibration values. Each raises CalibrationError naming the file and the field.

Pure functions of arrays (no I/O): loaders call them with the file they read and the key
the value came from, so an error reads e.g. ``calib/000000.txt: field 'R0_rect': ...``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calibration.transforms import ROTATION_TOL
from pipeline.errors import CalibrationError

if TYPE_CHECKING:
    from calibration.camera import CameraModel
    from calibration.rig import Rig

PathLike = str | Path | None

# Number of distortion coefficients per model (OpenCV order).
DISTORTION_SIZES = {"none": (0,), "plumb_bob": (4, 5), "rational_polynomial": (8,), "equidistant": (4,)}


def as_matrix(value: Any, shape: tuple[int, ...], *, path: PathLike, field: str) -> np.ndarray:
    """``value`` as a float64 array of exactly ``shape``, finite; otherwise CalibrationError."""
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"expected a {_shape_text(shape)} matrix of numbers ({exc})",
                               path=path, field=field) from None
    if arr.shape != tuple(shape):
        raise CalibrationError(f"wrong shape: expected {_shape_text(shape)}, got {_shape_text(arr.shape)}",
                               path=path, field=field)
    check_finite(arr, path=path, field=field)
    return arr


def check_finite(arr: np.ndarray, *, path: PathLike, field: str) -> None:
    arr = np.asarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        bad = "NaN" if np.any(np.isnan(arr)) else "infinite value"
        raise CalibrationError(f"contains a {bad}", path=path, field=field)


def check_rotation(R: Any, *, path: PathLike, field: str, tol: float = ROTATION_TOL) -> np.ndarray:
    """(3, 3) orthonormal with determinant +1 (a reflection, det = -1, is refused)."""
    R = as_matrix(R, (3, 3), path=path, field=field)
    ortho = float(np.abs(R.T @ R - np.eye(3)).max())
    if ortho > tol:
        raise CalibrationError(f"rotation is not orthonormal (max |R^T R - I| = {ortho:.3g} > {tol:g})",
                               path=path, field=field)
    det = float(np.linalg.det(R))
    if abs(det - 1.0) > tol:
        raise CalibrationError(f"rotation has determinant {det:.6g}, expected +1"
                               + (" (a reflection)" if det < 0 else ""), path=path, field=field)
    return R


def check_transform(T: Any, *, path: PathLike, field: str, tol: float = ROTATION_TOL) -> np.ndarray:
    """(4, 4) rigid transform: bottom row [0, 0, 0, 1] and a proper rotation."""
    T = as_matrix(T, (4, 4), path=path, field=field)
    if np.abs(T[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-9:
        raise CalibrationError(f"bottom row must be [0, 0, 0, 1], got {T[3].tolist()}", path=path, field=field)
    check_rotation(T[:3, :3], path=path, field=field, tol=tol)
    return T


def check_image_size(width: Any, height: Any, *, path: PathLike, field: str) -> tuple[int, int]:
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise CalibrationError(f"image {name} must be a positive integer, got {v!r}", path=path, field=field)
    return int(width), int(height)


def check_intrinsics(K: Any, width: int, height: int, *, path: PathLike, field: str) -> np.ndarray:
    """(3, 3) upper-triangular K with positive focal lengths, last row [0, 0, 1] and the
    principal point inside the image (OpenCV extent: -0.5 .. W-0.5, -0.5 .. H-0.5)."""
    K = as_matrix(K, (3, 3), path=path, field=field)
    _check_K_block(K, width, height, path=path, field=field)
    return K


def check_projection_matrix(P: Any, width: int, height: int, *, path: PathLike, field: str) -> np.ndarray:
    """(3, 4) projection matrix ``K [I | t]`` of a rectified camera (KITTI ``P2``)."""
    P = as_matrix(P, (3, 4), path=path, field=field)
    _check_K_block(P[:, :3], width, height, path=path, field=field)
    return P


def _check_K_block(K: np.ndarray, width: int, height: int, *, path: PathLike, field: str) -> None:
    fx, fy = K[0, 0], K[1, 1]
    if fx <= 0 or fy <= 0:
        raise CalibrationError(f"focal length must be positive, got fx={fx:g}, fy={fy:g}", path=path, field=field)
    if abs(K[1, 0]) > 1e-9 or abs(K[2, 0]) > 1e-9 or abs(K[2, 1]) > 1e-9 or abs(K[2, 2] - 1.0) > 1e-9:
        raise CalibrationError("intrinsic block must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]], got "
                               f"{np.round(K, 6).tolist()}", path=path, field=field)
    cx, cy = K[0, 2], K[1, 2]
    if not (-0.5 <= cx <= width - 0.5 and -0.5 <= cy <= height - 0.5):
        raise CalibrationError(f"principal point ({cx:g}, {cy:g}) lies outside the {width}x{height} image",
                               path=path, field=field)


def check_distortion(dist: Any, model: str, *, path: PathLike, field: str) -> np.ndarray:
    if model not in DISTORTION_SIZES:
        raise CalibrationError(f"unknown distortion model {model!r} (known: {', '.join(DISTORTION_SIZES)})",
                               path=path, field=field)
    try:
        arr = np.array([] if dist is None else dist, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"distortion must be a list of numbers ({exc})", path=path, field=field) from None
    if model == "none" and arr.size and np.any(arr != 0):
        raise CalibrationError("distortion model 'none' needs no coefficients", path=path, field=field)
    if model != "none" and arr.size not in DISTORTION_SIZES[model]:
        want = " or ".join(str(n) for n in DISTORTION_SIZES[model])
        raise CalibrationError(f"{model} takes {want} coefficients, got {arr.size}", path=path, field=field)
    check_finite(arr, path=path, field=field)
    return arr


def check_frame_size(camera: CameraModel, image_shape: tuple[int, ...], *, path: PathLike, field: str) -> None:
    """The calibrated image size must be the size of the frames (``image_shape`` is (H, W, ...))."""
    h, w = int(image_shape[0]), int(image_shape[1])
    if (w, h) != (camera.width, camera.height):
        raise CalibrationError(f"calibrated for {camera.width}x{camera.height} but the frame is {w}x{h}",
                               path=path, field=field)


def validate_camera_model(model: CameraModel, *, path: PathLike, field: str) -> None:
    """All checks of one camera model, whatever its kind."""
    from calibration.camera import FisheyeCamera, PinholeCamera, RectifiedCamera

    check_image_size(model.width, model.height, path=path, field=f"{field}.size")
    if isinstance(model, RectifiedCamera):
        check_projection_matrix(model.P, model.width, model.height, path=path, field=f"{field}.P")
        check_rotation(model.R_rect, path=path, field=f"{field}.R_rect")
    elif isinstance(model, PinholeCamera):
        check_intrinsics(model.K, model.width, model.height, path=path, field=f"{field}.K")
        check_distortion(model.dist, model.distortion_model, path=path, field=f"{field}.distortion")
    elif isinstance(model, FisheyeCamera):
        check_intrinsics(model.K, model.width, model.height, path=path, field=f"{field}.K")
        check_distortion(model.D, "equidistant", path=path, field=f"{field}.distortion")
    else:
        raise CalibrationError(f"unknown camera model {type(model).__name__}", path=path, field=field)


def validate_rig(rig: Rig, path: PathLike = None) -> None:
    """Every check on a whole rig: unique names, valid models, rigid extrinsics."""
    path = path if path is not None else rig.source
    if not rig.cameras and not rig.lidars:
        raise CalibrationError("rig has no sensors", path=path, field="cameras")
    seen: set[str] = set()
    for kind, sensors in (("cameras", rig.cameras), ("lidars", rig.lidars)):
        for s in sensors:
            if not s.name:
                raise CalibrationError("sensor without a name", path=path, field=kind)
            if s.name in seen:
                raise CalibrationError(f"duplicate sensor name {s.name!r}", path=path, field=f"{kind}.{s.name}")
            seen.add(s.name)
    for cam in rig.cameras:
        validate_camera_model(cam.model, path=path, field=f"cameras.{cam.name}")
        check_transform(cam.T_base_from_cam, path=path, field=f"cameras.{cam.name}.T_base_from_cam")
    for lidar in rig.lidars:
        check_transform(lidar.T_base_from_lidar, path=path, field=f"lidars.{lidar.name}.T_base_from_lidar")


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) if shape else "scalar"
