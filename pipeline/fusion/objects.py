"""3D objects from a fused cloud: per instance, its points without outliers, centroid,
bird's-eye-view oriented box, range, point count, class and score (base frame)."""
from __future__ import annotations

import numpy as np

from pipeline.fusion.config import FusionConfig
from pipeline.types import NO_INSTANCE, FusedCloud, Object3D


def extract_objects(fused: FusedCloud, points_base: np.ndarray, cfg: FusionConfig) -> list[Object3D]:
    """``points_base`` (N, 3): the fused cloud's points in the base frame (motion-compensated to
    the camera time where available), aligned with ``fused``."""
    ids = fused.instance_id
    labelled = np.flatnonzero(ids != NO_INSTANCE)
    if labelled.size == 0:
        return []
    order = labelled[np.argsort(ids[labelled], kind="stable")]
    uniq, starts = np.unique(ids[order], return_index=True)
    bounds = np.r_[starts, len(order)]
    objects = []
    for k, iid in enumerate(uniq):
        sel = order[bounds[k]: bounds[k + 1]]
        if sel.size < cfg.object_min_points:
            continue
        keep = _main_cluster(points_base[sel], cfg.object_cluster_eps_m, cfg.object_min_points)
        if keep is None:
            continue
        sel = sel[keep]
        p = points_base[sel]
        objects.append(_describe(int(iid), p, fused.class_id[sel], fused.score[sel]))
    return objects


VOXEL_M = 0.2   # DBSCAN runs on voxel centroids (eps is several voxels): same clusters, far fewer points


def _main_cluster(p: np.ndarray, eps_m: float, min_points: int) -> np.ndarray | None:
    """Keep the nearest depth-continuous cluster (DBSCAN): the nearest of the clusters holding
    at least a third of the largest one's points; background seen past a loose mask edge lies
    behind it, stray single returns are noise. Clustering runs on the centroids of occupied
    0.2 m voxels, weighted by their point counts, and labels map back to the points; the
    voxelisation and the DBSCAN are one numba kernel (pipeline.fusion.kernels.voxel_dbscan,
    the same labels as Open3D's cluster_dbscan on the centroids, without the GIL)."""
    from pipeline.fusion.kernels import voxel_dbscan

    if len(p) < 2 * min_points:
        return np.ones(len(p), bool)
    # a voxel stands for its points: min_points counts voxels, at least one
    labels = voxel_dbscan(p, VOXEL_M, eps_m, max(1, min_points // 3))
    valid = labels >= 0
    if not valid.any():
        return None
    sizes = np.bincount(labels[valid])
    big = np.flatnonzero(sizes >= max(min_points, sizes.max() / 3))
    if big.size == 0:
        return None
    rng = np.linalg.norm(p[:, :2], axis=1)
    med = [np.median(rng[labels == c]) for c in big]
    best = big[int(np.argmin(med))]
    return labels == best


def _describe(iid: int, p: np.ndarray, classes: np.ndarray, scores: np.ndarray) -> Object3D:
    import cv2

    centroid = p.mean(axis=0)
    (cx, cy), (w, h), angle = cv2.minAreaRect(p[:, :2].astype(np.float32))
    yaw = np.radians(angle)
    length, width = w, h
    if h > w:                                   # length along the longer side
        length, width, yaw = h, w, yaw + np.pi / 2
    yaw = float((yaw + np.pi / 2) % np.pi - np.pi / 2)   # a box's heading is ambiguous by pi
    z0, z1 = float(p[:, 2].min()), float(p[:, 2].max())
    cls = int(np.bincount(classes).argmax())
    return Object3D(instance_id=iid, class_id=cls, score=float(scores.mean()), centroid=centroid,
                    box_center=np.array([cx, cy, (z0 + z1) / 2]), box_size=np.array([length, width, z1 - z0]),
                    yaw=yaw, range_m=float(np.linalg.norm(centroid[:2])), num_points=int(len(p)))
