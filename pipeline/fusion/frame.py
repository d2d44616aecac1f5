"""Fusion of one synced frame: ego motion, per-point labels, 3D objects, lane lines."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import Taxonomy
from pipeline.fusion.config import FusionConfig
from pipeline.fusion.kernels import ego_project
from pipeline.fusion.label import CameraView, InstanceMap, fuse
from pipeline.fusion.lanes import extract_lanes
from pipeline.fusion.objects import extract_objects, ground_plane
from pipeline.types import FusionResult, LidarSweep, Poses  # FusionResult re-exported: its home is types


@dataclass
class CameraMasks:
    """One camera's masks for a frame (either may be None)."""

    camera: str                      # rig camera name
    stamp_ns: int                    # exposure time
    semantic: np.ndarray | None      # (H, W) uint8
    instances: InstanceMap | None


def fuse_frame(sweep: LidarSweep, masks: list[CameraMasks], rig, cfg: FusionConfig, taxonomy: Taxonomy,
               poses: Poses | None = None) -> FusionResult:
    """``rig``: a calibration.rig.Rig holding the cameras named in ``masks`` and ``sweep.lidar_id``
    (or its only LiDAR)."""
    from calibration.motion import compensate_ego_motion

    lidar_name = sweep.lidar_id if sweep.lidar_id in rig.lidar_names else None
    lidar = rig.lidar(lidar_name)
    points = sweep.points
    compensate = (cfg.ego_motion and poses is not None and sweep.t_offset_ns is not None and len(points) > 0)
    T = lidar.T_base_from_lidar
    # one numba pass per camera (ego motion + projection) where the cameras are linear and the
    # poses timed; else calibration.motion's numpy and the generic projection
    fast = (compensate and len(poses.stamps_ns) >= 2 and points.dtype == np.float32
            and all(rig.camera(m.camera).model.linear_matrix() is not None for m in masks))
    views, moved = [], []
    points_base = None
    max_motion = 0.0
    for m in masks:
        cam = rig.camera(m.camera)
        T_cam = rig.T_cam_from_lidar(cam.name, lidar.name)
        pts_cam_time, projection = None, None
        if fast:
            first = points_base is None
            if first:
                points_base = np.empty((len(points), 3), np.float32)
            proj = ego_project(points, sweep.stamp_ns, sweep.t_offset_ns, poses.stamps_ns, poses.T_world_from_base,
                               T, m.stamp_ns, cam.model.linear_matrix() @ T_cam, cam.model.width,
                               cam.model.height, cfg.min_depth_m, points_base if first else None)
            projection = proj[:4]
            if first:
                max_motion = proj[4]
        elif compensate:
            pts_cam_time = compensate_ego_motion(points, sweep.stamp_ns, sweep.t_offset_ns, poses.stamps_ns,
                                                 poses.T_world_from_base, lidar.T_base_from_lidar, m.stamp_ns)
            moved.append(pts_cam_time)
        inst = m.instances
        if inst is not None:
            inst = inst.at_least(cfg.min_instance_score)
        if inst is not None and cfg.edge_mode == "erode":
            inst = inst.eroded(cfg.erode_px)
        views.append(CameraView(cam.name, cam.model, T_cam, m.semantic, inst, pts_cam_time, projection))
    cloud = fuse(points, views, cfg, stamp_ns=sweep.stamp_ns, ignore_id=taxonomy.ignore_id)
    if points_base is None:
        ref = moved[0] if moved else points
        points_base = ref[:, :3] @ T[:3, :3].T.astype(np.float32) + T[:3, 3].astype(np.float32)
        max_motion = float(np.sqrt(np.max(np.sum((moved[0][:, :3] - points[:, :3]) ** 2, axis=1)))) if moved else 0.0
    compensated = bool(moved) or (fast and bool(masks))
    lane_id, road_id = taxonomy.id("lane_marking"), taxonomy.id("road")
    is_lane, is_road = cloud.class_id == lane_id, cloud.class_id == road_id
    plane = None
    if cfg.instance_refinement:
        plane = ground_plane(points_base[is_road | is_lane], cfg.ground_ransac_dist_m)
    objects = extract_objects(cloud, points_base, cfg, ground_plane=plane, class_names=tuple(taxonomy.names),
                              views=[v for v in (_field_of_view(rig.camera(m.camera)) for m in masks) if v])
    lanes = extract_lanes(points_base, is_lane, is_road, cfg)
    return FusionResult(cloud, objects, lanes, points_base, compensated, max_motion)


def _field_of_view(cam) -> tuple[np.ndarray, float, float] | None:
    """(origin xy, optical-axis yaw, half horizontal field of view) of a camera in the base frame;
    None for a model without a pinhole matrix (the box fit then ignores image edges)."""
    K = getattr(cam.model, "K", None)
    if K is None:
        return None
    T = np.asarray(cam.T_base_from_cam, np.float64)
    fwd = T[:3, :3] @ np.array([0.0, 0.0, 1.0])
    half = float(np.arctan2(cam.model.width / 2.0, float(np.asarray(K)[0, 0])))
    return T[:2, 3].copy(), float(np.arctan2(fwd[1], fwd[0])), half
