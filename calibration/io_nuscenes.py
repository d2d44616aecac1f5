"""Loader for the nuScenes sample calibration (``calib.json``: mmdetection3d info, plain JSON).

Per camera ``cam2img`` (3x3 K, no distortion: nuScenes images are undistorted) and
``lidar2cam`` (4x4, LIDAR_TOP -> camera, including the ego motion between the two stamps).
The rig's base frame is the LIDAR_TOP frame, so ``T_cam_from_lidar`` is exactly ``lidar2cam``.
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
    cameras = []
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
        cameras.append(CameraSensor(name, name, PinholeCamera(K, None, width, height, distortion_model="none"),
                                    invert_T(T_cam_from_lidar)))
    lidar = LidarSensor(NUSCENES_LIDAR, NUSCENES_LIDAR, np.eye(4))
    return Rig(cameras, [lidar], base_frame=NUSCENES_LIDAR, source=str(path), kind="nuscenes")
