"""LiDAR -> camera -> pixel projection: the hot path of fusion. Pure numpy, vectorised.

For linear models (rectified cameras, pinhole without distortion) the extrinsic and the
projection fold into one (3, 4) matrix and the whole cloud takes one float32 matmul. For
distorted models the cloud is moved into the camera frame, the field-of-view pre-cull
drops what the camera cannot see, and only the survivors go through the distortion.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from calibration.camera import DEFAULT_MIN_DEPTH_M, CameraModel, finish_linear, pixel_indices

__all__ = ["Projection", "project_lidar"]


@dataclass
class Projection:
    """Where each point of a cloud lands in one camera.

    ``uv`` (N, 2) float32 pixel coordinates (OpenCV convention, see calibration.camera), NaN
    for points behind / too near / outside the field of view. It is a transposed view of a
    (2, N) array: ``uv[:, 0]`` is contiguous; use ``np.ascontiguousarray`` before OpenCV calls.
    ``depth_m`` (N,) float32 depth along the camera's optical axis; ``valid`` (N,) bool: in
    front (> min depth), within the field of view and inside the image under ``inside``.
    """

    uv: np.ndarray
    depth_m: np.ndarray
    valid: np.ndarray
    width: int
    height: int
    inside: str = "round"

    @cached_property
    def index(self) -> np.ndarray:
        """(K,) int64 indices of the valid points in the cloud."""
        return np.flatnonzero(self.valid)

    @cached_property
    def pixels(self) -> np.ndarray:
        """(K, 2) int32 (col, row) of the valid points, aligned with ``index``; always in range."""
        px = pixel_indices(self.uv[self.index], self.inside)
        # float64 -> float32 rounding can put a point that was inside by 1e-9 px on the edge
        np.clip(px[:, 0], 0, self.width - 1, out=px[:, 0])
        np.clip(px[:, 1], 0, self.height - 1, out=px[:, 1])
        return px

    @property
    def count(self) -> int:
        return int(self.index.size)

    def flat_pixel_index(self) -> np.ndarray:
        """(K,) int64 ``row * width + col`` of the valid points (for z-buffers / mask lookups)."""
        px = self.pixels
        return px[:, 1].astype(np.int64) * self.width + px[:, 0]


def project_lidar(points_lidar: np.ndarray, T_cam_from_lidar: np.ndarray, camera: CameraModel, *,
                  min_depth_m: float = DEFAULT_MIN_DEPTH_M, inside: str = "round") -> Projection:
    """Project a LiDAR cloud (N, 3) or (N, >=4) into ``camera``.

    ``T_cam_from_lidar`` (4, 4) maps LiDAR coordinates into ``camera``'s frame (for a
    ``RectifiedCamera`` the reference frame its ``R_rect`` applies to). float32 clouds are
    processed in float32 (sub-millipixel error at KITTI scale); float64 clouds in float64.
    ``inside``: ``"round"`` (OpenCV pixel centres, default) or ``"floor"`` (KITTI devkit rule).
    """
    points = np.asarray(points_lidar)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points_lidar must be (N, 3) or (N, >=4), got {points.shape}")
    dtype = points.dtype if points.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    points = points.astype(dtype, copy=False)
    T = np.asarray(T_cam_from_lidar, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"T_cam_from_lidar must be (4, 4), got {T.shape}")
    xyz_T = points[:, :3].T                            # (3, N) view; results come out in rows
    M = camera.linear_matrix()
    if M is not None:
        A = (M @ T).astype(dtype)                      # (3, 4): pixels from LiDAR coordinates
        uvw_T = A[:, :3] @ xyz_T
        uvw_T += A[:, 3:4]
        uv_T, depth, valid = finish_linear(uvw_T, camera.width, camera.height, min_depth_m, inside)
    else:
        pts_cam_T = T[:3, :3].astype(dtype) @ xyz_T
        pts_cam_T += T[:3, 3:4].astype(dtype)
        uv_T, depth, valid = camera.project_T(pts_cam_T, min_depth_m=min_depth_m, inside=inside)
    return Projection(uv=uv_T.astype(np.float32, copy=False).T, depth_m=depth.astype(np.float32, copy=False),
                      valid=valid, width=camera.width, height=camera.height, inside=inside)
