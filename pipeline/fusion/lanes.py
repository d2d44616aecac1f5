"""Lane lines from lane-marking points: on the ground plane (RANSAC, Open3D), grouped into
lines, each fitted with a cubic y = c0 + c1 x + c2 x^2 + c3 x^3 in the base frame with its
valid x range (as Apollo publishes them)."""
from __future__ import annotations

import numpy as np

from pipeline.fusion.config import FusionConfig
from pipeline.types import LaneLine

# DBSCAN over (x / STRETCH_X, y / STRETCH_Y): dashes 6 m apart along a line chain together,
# lines 3 m apart across do not.
STRETCH_X_M = 4.0
STRETCH_Y_M = 0.35
LINK = 2.0
# The ground plane is fitted on at most this many of the road points (an even stride through
# the cloud): RANSAC's cost is points x iterations, and 4096 points fix a plane to well under
# a centimetre; the iteration budget stays 200.
GROUND_SAMPLE = 4096


def fit_ground_plane(points_base: np.ndarray, dist_m: float, seed: int = 0) -> np.ndarray | None:
    """RANSAC plane (a, b, c, d) with a*x + b*y + c*z + d = 0, normal pointing up, fitted on at most
    GROUND_SAMPLE of the points; None if too few points."""
    import open3d as o3d

    if len(points_base) < 50:
        return None
    stride = -(-len(points_base) // GROUND_SAMPLE)
    if stride > 1:
        points_base = points_base[::stride]
    o3d.utility.random.seed(seed)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points_base.astype(np.float64)))
    plane, inliers = pcd.segment_plane(distance_threshold=dist_m, ransac_n=3, num_iterations=200)
    plane = np.asarray(plane, np.float64)
    if plane[2] < 0:
        plane = -plane
    if plane[2] < 0.9:          # not a road: too steep to be the ground
        return None
    return plane


def extract_lanes(points_base: np.ndarray, is_lane: np.ndarray, is_ground: np.ndarray, cfg: FusionConfig) -> list[LaneLine]:
    """``points_base`` (N, 3) in the base frame; ``is_lane`` lane-marking points; ``is_ground``
    points used for the ground plane (road and lane marking)."""
    from pipeline.fusion.kernels import dbscan

    ground = np.flatnonzero(is_ground | is_lane)
    ground = ground[::-(-len(ground) // GROUND_SAMPLE) or 1]     # fit_ground_plane's stride, without the copy
    plane = fit_ground_plane(points_base[ground], cfg.ground_ransac_dist_m)
    lane = points_base[is_lane]
    if plane is None or len(lane) < cfg.lane_min_points:
        return []
    on_ground = np.abs(lane @ plane[:3] + plane[3]) < 2 * cfg.ground_ransac_dist_m
    near = (np.abs(lane[:, 0]) < cfg.lane_max_range_m) & (np.abs(lane[:, 1]) < 25)
    lane = lane[on_ground & near]
    if len(lane) < cfg.lane_min_points:
        return []
    scaled = np.column_stack([lane[:, 0] / STRETCH_X_M, lane[:, 1] / STRETCH_Y_M, np.zeros(len(lane))])
    labels = dbscan(scaled, LINK, 3)          # Open3D's cluster_dbscan, label for label, in numba
    lines = []
    for c in range(labels.max() + 1 if labels.size else 0):
        p = lane[labels == c]
        if len(p) < cfg.lane_min_points:
            continue
        line = _fit(p)
        if line is not None:
            lines.append(line)
    lines.sort(key=lambda ln: -ln.coeffs[0])     # left to right
    return lines


def _fit(p: np.ndarray) -> LaneLine | None:
    x, y = p[:, 0].astype(np.float64), p[:, 1].astype(np.float64)
    span = x.max() - x.min()
    if span < 4.0:
        return None
    # no more freedom than the points support: cubic only over long spans
    deg = 3 if span > 25 else 2 if span > 12 else 1
    coef = np.polyfit(x, y, deg)[::-1]
    coeffs = np.zeros(4)
    coeffs[: deg + 1] = coef
    resid = y - np.polyval(coef[::-1], x)
    rms = float(np.sqrt(np.mean(resid ** 2)))
    near = np.sort(x[x < 22.0])
    gaps = np.diff(near) if near.size > 1 else np.zeros(0)
    if near.size < 6:
        kind = "unknown"
    else:
        kind = "dashed" if (gaps > 3.0).any() else "solid"
    conf = float(min(1.0, len(p) / 60.0) * np.exp(-rms / 0.1))
    return LaneLine(coeffs=coeffs, x_min_m=float(x.min()), x_max_m=float(x.max()), type=kind, confidence=conf)


def lane_y(line: LaneLine, x: np.ndarray) -> np.ndarray:
    c = line.coeffs
    return c[0] + c[1] * x + c[2] * x ** 2 + c[3] * x ** 3
