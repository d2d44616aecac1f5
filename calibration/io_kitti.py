"""Loaders for KITTI calibration: the object benchmark (``calib/NNNNNN.txt``) and KITTI raw
(``calib_cam_to_cam.txt`` + ``calib_velo_to_cam.txt``).

KITTI has no vehicle frame in these files, so the rig's base frame is the Velodyne frame
(``velo_link``; the LiDAR sits at identity). Rectified cameras are ``RectifiedCamera(P, R_rect)``
in KITTI's reference camera frame (unrectified camera 0, frame id ``cam0``), the frame that
``Tr_velo_to_cam`` / ``R|T`` map into, so every rectified camera shares ``T_base_from_cam``
and its own offset lives in ``P``. Projection of a Velodyne point into camera i is then
exactly the devkit's ``P_i @ R0_rect @ Tr_velo_to_cam @ x``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from calibration import validate
from calibration.camera import PinholeCamera, RectifiedCamera
from calibration.io_util import get_numbers, read_image_size, read_key_values
from calibration.rig import CameraSensor, LidarSensor, Rig
from calibration.transforms import invert_T, make_T
from pipeline.errors import CalibrationError

log = logging.getLogger(__name__)

KITTI_BASE_FRAME = "velo_link"
KITTI_REFERENCE_FRAME = "cam0"


def _rigid_3x4(values: dict[str, str], key: str, path: Path, *, required: bool = True) -> np.ndarray | None:
    arr = get_numbers(values, key, 12, path=path, required=required)
    if arr is None:
        return None
    T = np.vstack([arr.reshape(3, 4), [0.0, 0.0, 0.0, 1.0]])
    return validate.check_transform(T, path=path, field=key)


def load_kitti_object_calib(path: str | Path, image_size: tuple[int, int] | None = None,
                            image_path: str | Path | None = None) -> Rig:
    """Rig of one KITTI object frame: cameras ``cam0``..``cam3`` (``cam2`` is ``image_2``, the
    left colour camera) as ``RectifiedCamera(P_i, R0_rect)`` and LiDAR ``velo``.

    Image size: ``image_size`` (width, height), else read from ``image_path``, else from
    ``../image_2/<stem>.png`` beside the calib folder. Sizes vary per frame in KITTI
    (1242x375, 1224x370, ...), so one of them is required. When both a size and an image are
    given they must agree.
    """
    path = Path(path)
    values = read_key_values(path)
    Ps = {k: get_numbers(values, f"P{k}", 12, path=path).reshape(3, 4) for k in range(4)}
    R0 = validate.check_rotation(get_numbers(values, "R0_rect", 9, path=path).reshape(3, 3),
                                 path=path, field="R0_rect")
    T_cam_from_velo = _rigid_3x4(values, "Tr_velo_to_cam", path)
    T_velo_from_imu = _rigid_3x4(values, "Tr_imu_to_velo", path, required=False)

    if image_path is None:
        guess = path.parent.parent / "image_2" / f"{path.stem}.png"
        image_path = guess if guess.is_file() else None
    if image_path is not None:
        found = read_image_size(image_path)
        if image_size is not None and tuple(image_size) != found:
            raise CalibrationError(f"image size {image_size[0]}x{image_size[1]} was given but {image_path} "
                                   f"is {found[0]}x{found[1]}", path=path, field="image_size")
        image_size = found
    if image_size is None:
        raise CalibrationError("image size unknown: keep image_2/<frame>.png beside calib/ (segfuse calib "
                               "show/check take it as --image-size 1242x375)", path=path, field="image_size")
    width, height = validate.check_image_size(*image_size, path=path, field="image_size")

    T_base_from_cam = invert_T(T_cam_from_velo)
    cameras = []
    for k in range(4):
        P = validate.check_projection_matrix(Ps[k], width, height, path=path, field=f"P{k}")
        cameras.append(CameraSensor(f"cam{k}", KITTI_REFERENCE_FRAME, RectifiedCamera(P, R0, width, height),
                                    T_base_from_cam))
    lidar = LidarSensor("velo", KITTI_BASE_FRAME, np.eye(4))
    extra = {} if T_velo_from_imu is None else {"T_velo_from_imu": T_velo_from_imu}
    return Rig(cameras, [lidar], base_frame=KITTI_BASE_FRAME, source=str(path), kind="kitti_object", extra=extra)


def _kitti_raw_files(path: Path) -> tuple[Path, Path]:
    folder = path if path.is_dir() else path.parent
    return folder / "calib_cam_to_cam.txt", folder / "calib_velo_to_cam.txt"


def _image_size(values: dict[str, str], key: str, path: Path) -> tuple[int, int]:
    s = get_numbers(values, key, 2, path=path)
    if np.any(s != np.round(s)) or np.any(s <= 0):
        raise CalibrationError(f"image size must be two positive integers, got {s.tolist()}", path=path, field=key)
    return int(s[0]), int(s[1])


def load_kitti_raw_calib(path: str | Path) -> Rig:
    """Rig of a KITTI raw recording day from ``calib_cam_to_cam.txt`` and ``calib_velo_to_cam.txt``.

    ``path``: the folder holding both files (e.g. ``2011_09_26/``) or either file. Cameras:
    ``cam00``..``cam03`` for every ``P_rect_xx`` present, rectified (``RectifiedCamera(P_rect_xx,
    R_rect_00)``, size ``S_rect_xx``); ``cam02`` is the left colour camera. Where ``K_xx``,
    ``D_xx``, ``S_xx``, ``R_xx`` and ``T_xx`` are all present the unrectified camera is also
    given, as ``camXX_unrect`` (plumb_bob pinhole). LiDAR ``velo`` at the base frame.
    """
    cam_path, velo_path = _kitti_raw_files(Path(path))
    velo = read_key_values(velo_path)
    R = validate.check_rotation(get_numbers(velo, "R", 9, path=velo_path).reshape(3, 3), path=velo_path, field="R")
    T = get_numbers(velo, "T", 3, path=velo_path)
    T_base_from_cam0 = invert_T(make_T(R, T))

    cam = read_key_values(cam_path)
    R_rect = validate.check_rotation(get_numbers(cam, "R_rect_00", 9, path=cam_path).reshape(3, 3),
                                     path=cam_path, field="R_rect_00")
    cameras = []
    for i in range(4):
        xx = f"{i:02d}"
        if f"P_rect_{xx}" not in cam:
            continue
        w, h = _image_size(cam, f"S_rect_{xx}", cam_path)
        P = validate.check_projection_matrix(get_numbers(cam, f"P_rect_{xx}", 12, path=cam_path).reshape(3, 4),
                                             w, h, path=cam_path, field=f"P_rect_{xx}")
        cameras.append(CameraSensor(f"cam{xx}", KITTI_REFERENCE_FRAME, RectifiedCamera(P, R_rect, w, h),
                                    T_base_from_cam0))
    if not cameras:
        raise CalibrationError("no rectified camera (P_rect_00 .. P_rect_03) in the file", path=cam_path,
                               field="P_rect_02")
    for i in range(4):
        xx = f"{i:02d}"
        keys = [f"K_{xx}", f"D_{xx}", f"S_{xx}", f"R_{xx}", f"T_{xx}"]
        if not all(k in cam for k in keys):
            continue
        w, h = _image_size(cam, f"S_{xx}", cam_path)
        K = validate.check_intrinsics(get_numbers(cam, f"K_{xx}", 9, path=cam_path).reshape(3, 3), w, h,
                                      path=cam_path, field=f"K_{xx}")
        D = get_numbers(cam, f"D_{xx}", 5, path=cam_path)
        Ri = validate.check_rotation(get_numbers(cam, f"R_{xx}", 9, path=cam_path).reshape(3, 3),
                                     path=cam_path, field=f"R_{xx}")
        Ti = get_numbers(cam, f"T_{xx}", 3, path=cam_path)
        T_base_from_cami = T_base_from_cam0 @ invert_T(make_T(Ri, Ti))
        cameras.append(CameraSensor(f"cam{xx}_unrect", f"cam{xx}_unrect",
                                    PinholeCamera(K, D, w, h, distortion_model="plumb_bob"), T_base_from_cami))
    lidar = LidarSensor("velo", KITTI_BASE_FRAME, np.eye(4))
    return Rig(cameras, [lidar], base_frame=KITTI_BASE_FRAME, source=str(cam_path.parent), kind="kitti_raw")


def read_kitti_velodyne(path: str | Path) -> np.ndarray:
    """A KITTI ``.bin`` scan -> (N, 4) float32 x, y, z, reflectance (Velodyne frame)."""
    from pipeline.errors import InputDataError

    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.float32)
    except OSError as exc:
        raise InputDataError(f"cannot read scan: {exc}", path=path) from None
    if raw.size % 4:
        raise InputDataError(f"size {raw.size * 4} bytes is not a multiple of 16 (x, y, z, r float32)", path=path)
    return raw.reshape(-1, 4)
