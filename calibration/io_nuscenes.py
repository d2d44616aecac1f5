"""Loader for the nuScenes sample calibration (``calib.json``: mmdetection3d info, plain JSON).

Per camera ``cam2img`` (3x3 K, no distortion: nuScenes images are undistorted), ``lidar2cam``
(4x4, LIDAR_TOP -> camera, including the ego motion between the two stamps) and ``cam2ego``
(the static mounting); ``lidar2ego`` for the LiDAR.

The rig's base frame is the ego frame ``base_link`` (REP 103: x forward, y left, z up; the
LIDAR_TOP frame itself has x right, y forward). ``T_base_from_lidar = lidar2ego``; each camera's
``T_base_from_cam = lidar2ego · lidar2cam⁻¹``: where the camera was at its exposure, in the ego
frame of the sweep, so ``Rig.T_cam_from_lidar`` is exactly ``lidar2cam``. It differs from the
static ``cam2ego`` by the ego's motion between the camera and LiDAR stamps (up to 0.33 m on the
sample keyframe, at ~9 m/s); ``cam2ego`` is kept in ``rig.extra["T_ego_from_cam_static"]``.
Without ``lidar2ego`` (an older file) the base is the LIDAR_TOP frame, as before.
Image sizes are read from the JPEGs beside the file when present, else 1600x900.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from calibration import validate
from calibration.camera import PinholeCamera
from calibration.io_util import read_image_size
from calibration.rig import CameraSensor, LidarSensor, Rig
from calibration.transforms import invert_T
from pipeline.errors import CalibrationError

NUSCENES_IMAGE_SIZE = (1600, 900)
NUSCENES_LIDAR = "LIDAR_TOP"
EGO_FRAME = "base_link"


def load_nuscenes_calib(path: str | Path) -> Rig:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError("calibration file not found", path=path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"not readable JSON: {exc}", path=path) from None
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), dict):
        raise CalibrationError("expected a mapping with 'cameras'", path=path, field="cameras")
    T_ego_from_lidar = None
    if "lidar2ego" in data:
        T_ego_from_lidar = validate.check_transform(data["lidar2ego"], path=path, field="lidar2ego")
    cameras, static = [], {}
    for name, cam in data["cameras"].items():
        pre = f"cameras.{name}"
        if not isinstance(cam, dict):
            raise CalibrationError("each camera must be a mapping", path=path, field=pre)
        for key in ("cam2img", "lidar2cam"):
            if key not in cam:
                raise CalibrationError("required key is missing", path=path, field=f"{pre}.{key}")
        width, height = NUSCENES_IMAGE_SIZE
        img = path.parent / str(cam.get("img_path", ""))
        if cam.get("img_path") and img.is_file():
            width, height = read_image_size(img)
        K = validate.check_intrinsics(cam["cam2img"], width, height, path=path, field=f"{pre}.cam2img")
        T_cam_from_lidar = validate.check_transform(cam["lidar2cam"], path=path, field=f"{pre}.lidar2cam")
        T_base_from_cam = invert_T(T_cam_from_lidar)
        if T_ego_from_lidar is not None:
            T_base_from_cam = T_ego_from_lidar @ T_base_from_cam
            if "cam2ego" in cam:
                static[name] = validate.check_transform(cam["cam2ego"], path=path, field=f"{pre}.cam2ego")
        cameras.append(CameraSensor(name, name, PinholeCamera(K, None, width, height, distortion_model="none"),
                                    T_base_from_cam))
    if T_ego_from_lidar is None:
        lidar = LidarSensor(NUSCENES_LIDAR, NUSCENES_LIDAR, np.eye(4))
        return Rig(cameras, [lidar], base_frame=NUSCENES_LIDAR, source=str(path), kind="nuscenes")
    lidar = LidarSensor(NUSCENES_LIDAR, NUSCENES_LIDAR, T_ego_from_lidar)
    extra = {"T_ego_from_cam_static": static}
    if "ego2global" in data:
        extra["T_world_from_ego"] = validate.check_transform(data["ego2global"], path=path, field="ego2global")
    return Rig(cameras, [lidar], base_frame=EGO_FRAME, source=str(path), kind="nuscenes", extra=extra)
