"""3D objects from a fused cloud: per instance, its points without outliers, centroid,
amodal oriented box (pipeline.fusion.shape: L-shape fit + class size prior) beside the box of
the visible points, range, point count, class and score (base frame).

Instance refinement (``FusionConfig.instance_refinement``, on by default): a mask covers
whatever lies behind its pixels, so a loose mask (a box, a bleeding edge) gives its id to
road and background points. Those of an instance's points that lie within
``instance_ground_clearance_m`` of the ground plane, or outside the 3D cluster chosen for the
object and outside the object's box grown by ``instance_box_margin_m`` (all of them when no object
comes of the instance), lose the instance id in the cloud (``FLAG_NOT_IN_OBJECT``), so the cloud's instance
labels agree with the objects. Their class stays (it came from the instance's class)."""
from __future__ import annotations

import numpy as np

from pipeline.fusion.config import FusionConfig
from pipeline.types import FLAG_NOT_IN_OBJECT, NO_INSTANCE, FusedCloud, Object3D


def extract_objects(fused: FusedCloud, points_base: np.ndarray, cfg: FusionConfig, *,
                    ground_plane: np.ndarray | None = None, class_names: tuple[str, ...] | None = None,
                    views: list | None = None) -> list[Object3D]:
    """``points_base`` (N, 3): the fused cloud's points in the base frame (motion-compensated to
    the camera time where available), aligned with ``fused``. ``ground_plane`` (a, b, c, d),
    normal up (lanes.fit_ground_plane), for the refinement's ground test; ``class_names`` (the
    taxonomy's) pick the size priors; ``views`` the cameras' fields of view
    (shape.fit_box). With refinement on, ``fused.instance_id`` and
    ``fused.flags`` are updated in place."""
    ids = fused.instance_id
    labelled = np.flatnonzero(ids != NO_INSTANCE)
    if labelled.size == 0:
        return []
    refine = cfg.instance_refinement
    if refine and ground_plane is not None and cfg.instance_ground_clearance_m > 0:
        height = points_base[labelled] @ ground_plane[:3] + ground_plane[3]
        low = labelled[height < cfg.instance_ground_clearance_m]
        _withdraw(fused, low)
        labelled = labelled[height >= cfg.instance_ground_clearance_m]
        if labelled.size == 0:
            return []
    order = labelled[np.argsort(ids[labelled], kind="stable")]
    uniq, starts = np.unique(ids[order], return_index=True)
    bounds = np.r_[starts, len(order)]
    objects = []
    for k, iid in enumerate(uniq):
        sel = order[bounds[k]: bounds[k + 1]]
        keep = None
        if sel.size >= cfg.object_min_points:
            keep = _main_cluster(points_base[sel], cfg.object_cluster_eps_m, cfg.object_min_points)
        if keep is None:                       # no object: with refinement none of its points keeps the id
            if refine:
                _withdraw(fused, sel)
            continue
        inst_all = sel
        sel = sel[keep]
        p = points_base[sel]
        o = _describe(int(iid), p, fused.class_id[sel], fused.score[sel], class_names, views)
        objects.append(o)
        if refine:
            # the object's cluster and whatever else of the instance lies inside its (amodal) box: a far
            # thing seen through sparse beams can fall apart into several clusters
            inside = _in_box(points_base[inst_all], o.box_center, o.box_size, o.yaw, cfg.instance_box_margin_m)
            _withdraw(fused, inst_all[~(keep | inside)])
    return objects


def _in_box(p: np.ndarray, center: np.ndarray, size: np.ndarray, yaw: float, margin_m: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    d = p[:, :2] - center[:2]
    along, across = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c
    return (np.abs(along) <= size[0] / 2 + margin_m) & (np.abs(across) <= size[1] / 2 + margin_m)


def ground_plane(points: np.ndarray, dist_m: float, *, iterations: int = 100, max_points: int = 4000,
                 seed: int = 0) -> np.ndarray | None:
    """A deterministic RANSAC ground plane (a, b, c, d), normal up, refitted by least squares on its
    inliers; None for fewer than 50 points or a plane too steep to be the ground. (Open3D's
    segment_plane, which the lanes use, is multi-threaded and not repeatable even with a seed: a
    replay must give the same instance ids.)"""
    if len(points) < 50:
        return None
    pts = np.asarray(points, np.float64)[:: int(np.ceil(len(points) / max_points))]
    idx = np.random.default_rng(seed).integers(0, len(pts), (iterations, 3))
    a, b, c = pts[idx[:, 0]], pts[idx[:, 1]], pts[idx[:, 2]]
    n = np.cross(b - a, c - a)
    norm = np.linalg.norm(n, axis=1)
    ok = norm > 1e-9
    if not ok.any():
        return None
    n, a = n[ok] / norm[ok, None], a[ok]
    d = -np.sum(n * a, axis=1)
    inliers = np.abs(pts @ n.T + d) < dist_m                     # (N, iterations)
    best = inliers[:, int(np.argmax(inliers.sum(axis=0)))]
    q = pts[best]
    centre = q.mean(axis=0)
    normal = np.linalg.svd(q - centre, full_matrices=False)[2][-1]
    if normal[2] < 0:
        normal = -normal
    if normal[2] < 0.9:
        return None
    return np.r_[normal, -normal @ centre]


def _withdraw(fused: FusedCloud, idx: np.ndarray) -> None:
    if idx.size:
        fused.instance_id[idx] = NO_INSTANCE
        fused.flags[idx] |= FLAG_NOT_IN_OBJECT


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


def _describe(iid: int, p: np.ndarray, classes: np.ndarray, scores: np.ndarray,
              class_names: tuple[str, ...] | None, views: list | None = None) -> Object3D:
    from pipeline.fusion.shape import fit_box

    centroid = p.mean(axis=0)
    cls = int(np.bincount(classes).argmax())
    name = class_names[cls] if class_names is not None and cls < len(class_names) else None
    fit = fit_box(p, name, views=views)
    return Object3D(instance_id=iid, class_id=cls, score=float(scores.mean()), centroid=centroid,
                    box_center=fit.center, box_size=fit.size, yaw=fit.yaw,
                    range_m=float(np.linalg.norm(centroid[:2])), num_points=int(len(p)),
                    visible_center=fit.visible_center, visible_size=fit.visible_size)
