"""A sensor rig: cameras and LiDARs, each with its frame and its pose in the rig's base frame.

Every extrinsic is stored relative to one base frame (``T_base_from_cam``,
``T_base_from_lidar``); ``Rig.T_cam_from_lidar`` composes them. The base frame depends on the
source: ``base_link`` for ROS bags, rig YAML and the synthetic drives; the Velodyne frame
(``velo_link``) for KITTI object and KITTI raw calibration, which have no vehicle frame; the
LIDAR_TOP frame for the nuScenes sample. No I/O here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from calibration.camera import CameraModel, PinholeCamera
from calibration.transforms import invert_T
from pipeline.errors import CalibrationError

if TYPE_CHECKING:
    from pipeline.drive.types import DriveCalib


@dataclass(frozen=True)
class CameraSensor:
    name: str                    # e.g. "camera_front", "cam2"
    frame_id: str                # the camera's (optical) frame, e.g. "camera_front_optical"
    model: CameraModel
    T_base_from_cam: np.ndarray  # (4, 4) camera frame -> base frame

    @property
    def width(self) -> int:
        return self.model.width

    @property
    def height(self) -> int:
        return self.model.height

    @property
    def center_base(self) -> np.ndarray:
        """The optical centre in the base frame (for rectified cameras it includes P's offset)."""
        return self.T_base_from_cam[:3, :3] @ self.model.center_cam + self.T_base_from_cam[:3, 3]


@dataclass(frozen=True)
class LidarSensor:
    name: str                      # e.g. "lidar_top", "velo"
    frame_id: str                  # e.g. "lidar_top", "velo_link"
    T_base_from_lidar: np.ndarray  # (4, 4) LiDAR frame -> base frame


@dataclass
class Rig:
    cameras: list[CameraSensor]
    lidars: list[LidarSensor]
    base_frame: str = "base_link"
    source: str | None = None      # where it was loaded from (errors name it)
    kind: str = "custom"           # kitti_object | kitti_raw | ros_bag | rig_yaml | nuscenes | drive | custom
    extra: dict = field(default_factory=dict)

    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.cameras]

    @property
    def lidar_names(self) -> list[str]:
        return [lid.name for lid in self.lidars]

    @property
    def default_camera(self) -> CameraSensor:
        """The camera a single-camera tool uses when none is named: the only one; on KITTI rigs the
        left colour camera (``cam2`` / ``cam02``, the one ``image_2`` / ``image_02`` holds); else the first."""
        if len(self.cameras) == 1:
            return self.cameras[0]
        if self.kind in ("kitti_object", "kitti_raw"):
            for c in self.cameras:
                if c.name in ("cam2", "cam02"):
                    return c
        if not self.cameras:
            raise CalibrationError("rig has no camera", path=self.source, field="cameras")
        return self.cameras[0]

    def camera(self, name: str | None = None) -> CameraSensor:
        """The camera called ``name`` (None: the only camera)."""
        return self._pick(self.cameras, name, "cameras")

    def lidar(self, name: str | None = None) -> LidarSensor:
        """The LiDAR called ``name`` (None: the only LiDAR)."""
        return self._pick(self.lidars, name, "lidars")

    def T_cam_from_lidar(self, camera_name: str | None = None, lidar_name: str | None = None) -> np.ndarray:
        """(4, 4) LiDAR frame -> camera frame."""
        cam = self.camera(camera_name)
        lidar = self.lidar(lidar_name)
        return invert_T(cam.T_base_from_cam) @ lidar.T_base_from_lidar

    def T_base_from(self, name: str) -> np.ndarray:
        """(4, 4) of the sensor called ``name`` (camera or LiDAR) -> base frame."""
        for c in self.cameras:
            if c.name == name:
                return c.T_base_from_cam
        for lid in self.lidars:
            if lid.name == name:
                return lid.T_base_from_lidar
        raise CalibrationError(f"no sensor called {name!r} (cameras: {self.camera_names}, "
                               f"lidars: {self.lidar_names})", path=self.source, field="name")

    def _pick(self, sensors: list, name: str | None, kind: str):
        if name is None:
            if len(sensors) != 1:
                raise CalibrationError(f"rig has {len(sensors)} {kind}; name one of "
                                       f"{[s.name for s in sensors]}", path=self.source, field=kind)
            return sensors[0]
        for s in sensors:
            if s.name == name:
                return s
        raise CalibrationError(f"no {kind[:-1]} called {name!r} (have: {[s.name for s in sensors]})",
                               path=self.source, field=f"{kind}.{name}")


def rig_from_drive_calib(calib: DriveCalib, source: str | None = None) -> Rig:
    """The rig of a synthetic (or recorded) drive: one plumb_bob pinhole camera, one LiDAR,
    base frame ``base_link``."""
    from calibration.validate import check_distortion, check_image_size, check_intrinsics, check_transform
    from pipeline.drive.types import BASE_FRAME

    T_base_from_cam = check_transform(calib.T_base_from_cam, path=source, field="T_base_from_cam")
    T_base_from_lidar = check_transform(calib.T_base_from_lidar, path=source, field="T_base_from_lidar")
    width, height = check_image_size(calib.width, calib.height, path=source, field="size")
    check_intrinsics(calib.K, width, height, path=source, field="K")
    dist = check_distortion(calib.dist, "plumb_bob", path=source, field="dist")
    model = PinholeCamera(calib.K, dist, calib.width, calib.height, distortion_model="plumb_bob")
    camera = CameraSensor(calib.camera_id, calib.camera_frame_id, model, T_base_from_cam)
    lidar = LidarSensor(calib.lidar_id, calib.lidar_id, T_base_from_lidar)
    return Rig([camera], [lidar], base_frame=BASE_FRAME, source=source, kind="drive")
