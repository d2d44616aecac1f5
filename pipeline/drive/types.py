"""A recorded drive with exact ground truth, as the synthetic world produces it and the
drive readers give it back. Leaf module: numpy and pipeline.types only."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.types import Box3D, CameraFrame, LaneBoundaryGT, LidarSweep

# Frame ids (ROS tf names). base_link: x forward, y left, z up, on the ground under the
# vehicle's rear axle. camera optical frame: x right, y down, z forward.
WORLD_FRAME = "world"
BASE_FRAME = "base_link"


@dataclass
class DriveCalib:
    """The sensor set-up of one drive: one camera and one LiDAR (what `segfuse sim` renders)."""

    camera_id: str                   # e.g. "camera_front"; its optical frame id is f"{camera_id}_optical"
    width: int
    height: int
    K: np.ndarray                    # (3, 3) intrinsics
    dist: np.ndarray                 # (5,) plumb_bob k1 k2 p1 p2 k3 (zeros for the sim)
    T_base_from_cam: np.ndarray      # (4, 4), camera optical frame -> base_link
    lidar_id: str                    # e.g. "lidar_top"
    T_base_from_lidar: np.ndarray    # (4, 4), LiDAR frame -> base_link

    @property
    def camera_frame_id(self) -> str:
        return f"{self.camera_id}_optical"

    @property
    def T_cam_from_lidar(self) -> np.ndarray:
        return np.linalg.inv(self.T_base_from_cam) @ self.T_base_from_lidar


@dataclass
class DriveMeta:
    seed: int
    num_frames: int
    rate_hz: float
    generator: str = "segfuse sim"
    extra: dict = field(default_factory=dict)   # free-form, JSON-serialisable (lighting, scene stats)


@dataclass
class DriveFrame:
    index: int
    camera: CameraFrame              # image (H, W, 3) uint8 BGR, stamp = exposure time
    lidar: LidarSweep                # raw points in the LiDAR frame at each point's own time
    # Ground truth (None when a drive has none, e.g. a real recording).
    semantic: np.ndarray | None      # (H, W) uint8 class ids
    instance: np.ndarray | None      # (H, W) uint16 instance ids, 0 = none
    point_class: np.ndarray | None   # (N,) uint8, aligned with lidar.points
    point_instance: np.ndarray | None  # (N,) uint16, 0 = none
    boxes: list[Box3D]               # base frame at the camera stamp
    lanes: list[LaneBoundaryGT]      # base frame at the camera stamp
    # Ego poses: (M,) stamps and (M, 4, 4) T_world_from_base covering at least
    # [lidar.stamp_ns, lidar.stamp_ns + sweep period] and the camera stamp, at >= 100 Hz.
    pose_stamps_ns: np.ndarray
    T_world_from_base: np.ndarray
