"""Amodal boxes from an object's visible points: search-based L-shape fitting and class size priors.

As Autoware's ``shape_estimation`` (L-shape fitting after Zhang et al., "Efficient L-Shape
Fitting for Vehicle Detection Using Laser Scanners", IV 2017): the bird's-eye-view points are
projected on the axes of every candidate heading in [0, 90°) and the heading whose rectangle
edges the points hug best (the *closeness* criterion) wins: a coarse search every
``coarse_step_deg``, then a fine one around the best. The rectangle of the points at that
heading is the box of the visible points; it is then grown to the class's size prior
(``SIZE_PRIORS``: length, width) away from the sensor, since a LiDAR sees the near faces of a
thing: a car seen from behind gets a car-sized box whose centre is the car's centre.

Which rectangle axis is the length: the axis whose visible extent is longer than the prior
width can hold (the side of a vehicle is in view); otherwise the axis nearer the line of sight
(a vehicle ahead or behind shows its rear or front). A thing cut by a camera's image edge (a
parked car beside the ego, half out of view) is grown across the cut end instead. Pure numpy,
no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# length, width (metres): the smallest box a thing of the class gets. Typical road users (and the
# synthetic world's ranges: cars 3.9-4.9 x 1.7-1.9, trucks 6.5-10 x 2.3-2.5, cyclists 1.78 x 0.6).
SIZE_PRIORS: dict[str, tuple[float, float]] = {
    "car": (4.4, 1.8),
    "truck": (6.5, 2.3),
    "pedestrian": (0.4, 0.4),
    "cyclist": (1.7, 0.6),
}
CLOSENESS_D0_M = 0.01        # Zhang et al.'s d0: a point on an edge counts 1/d0 at most
MAX_FIT_POINTS = 400         # the search runs on at most this many BEV points (a 0.1 m grid, then strided)


@dataclass
class BoxFit:
    center: np.ndarray       # (3,) base frame: the box's centre (amodal when a prior applied)
    size: np.ndarray         # (3,) length, width, height
    yaw: float               # radians of the length axis, in [-pi/2, pi/2)
    visible_center: np.ndarray   # (3,) the rectangle of the visible points at the fitted heading
    visible_size: np.ndarray     # (3,)


def closeness_yaw(xy: np.ndarray, *, coarse_step_deg: float = 2.0, fine_step_deg: float = 0.2) -> float:
    """The heading in [0, pi/2) maximising the closeness criterion of ``xy`` (N, 2)."""
    xy = np.asarray(xy, np.float64)
    if len(xy) < 3:
        return 0.0
    xy = xy - xy.mean(axis=0)

    def best(angles: np.ndarray) -> float:
        c, s = np.cos(angles), np.sin(angles)
        c1 = xy[:, :1] * c + xy[:, 1:] * s          # (N, A) along e1
        c2 = -xy[:, :1] * s + xy[:, 1:] * c         # along e2
        d1 = np.minimum(c1.max(axis=0) - c1, c1 - c1.min(axis=0))
        d2 = np.minimum(c2.max(axis=0) - c2, c2 - c2.min(axis=0))
        score = (1.0 / np.maximum(np.minimum(d1, d2), CLOSENESS_D0_M)).sum(axis=0)
        return float(angles[int(np.argmax(score))])

    coarse = np.radians(np.arange(0.0, 90.0, coarse_step_deg))
    a0 = best(coarse)
    half = np.radians(coarse_step_deg)
    fine = a0 + np.arange(-half, half + 1e-12, np.radians(fine_step_deg))
    return float(best(fine) % (np.pi / 2))


def _thin(xy: np.ndarray) -> np.ndarray:
    if len(xy) <= MAX_FIT_POINTS:
        return xy
    keys = np.floor(xy / 0.1).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    xy = xy[np.sort(first)]
    if len(xy) > MAX_FIT_POINTS:
        xy = xy[:: int(np.ceil(len(xy) / MAX_FIT_POINTS))]
    return xy


FOV_EDGE_MARGIN_RAD = np.radians(3.0)   # an end this close to a camera's image edge is cut by it


def _cut_by_view(xy: np.ndarray, views: list[tuple[np.ndarray, float, float]]) -> bool:
    """True when ``xy`` lies at (or past) the horizontal edge of a camera's field of view."""
    for origin, yaw, half_fov in views:
        d = xy - origin
        bearing = (np.arctan2(d[1], d[0]) - yaw + np.pi) % (2 * np.pi) - np.pi
        if abs(bearing) >= half_fov - FOV_EDGE_MARGIN_RAD:
            return True
    return False


def fit_box(points: np.ndarray, class_name: str | None, *, priors: dict[str, tuple[float, float]] | None = None,
            coarse_step_deg: float = 2.0, fine_step_deg: float = 0.2,
            views: list[tuple[np.ndarray, float, float]] | None = None) -> BoxFit:
    """An oriented box for ``points`` (N, 3) in a frame whose origin is the sensor (base frame).
    ``class_name`` picks the size prior (None or unknown: the visible rectangle only).
    ``views``: the cameras as (origin xy, yaw of the optical axis, half horizontal field of view),
    base frame: a thing cut by the image edge is grown across the cut end, not away from the
    sensor (labels exist only inside the image)."""
    p = np.asarray(points, np.float64)
    xy = p[:, :2]
    z0, z1 = float(p[:, 2].min()), float(p[:, 2].max())
    theta = closeness_yaw(_thin(xy), coarse_step_deg=coarse_step_deg, fine_step_deg=fine_step_deg)
    axes = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])   # rows e1, e2
    proj = xy @ axes.T
    lo, hi = proj.min(axis=0), proj.max(axis=0)
    ext = hi - lo
    vis_c = axes.T @ ((lo + hi) / 2)
    prior = (priors or SIZE_PRIORS).get(class_name or "")
    length_axis = 0 if ext[0] >= ext[1] else 1
    if prior is not None:
        L, W = prior
        if max(ext) <= W * 1.15 + 0.2:               # no side in view: the length lies along the line of sight
            ray = vis_c / max(np.linalg.norm(vis_c), 1e-9)
            length_axis = int(np.argmax(np.abs(axes @ ray)))
        want = np.empty(2)
        want[length_axis], want[1 - length_axis] = L, W
        for k in range(2):
            need = want[k] - ext[k]
            if need <= 0:
                continue
            mid = (lo + hi) / 2
            ends = []
            for v in (lo[k], hi[k]):
                q = mid.copy()
                q[k] = v
                ends.append(bool(views) and _cut_by_view(axes.T @ q, views))
            if ends[0] != ends[1]:                     # one end is cut by the image edge: grow across it
                if ends[0]:
                    lo[k] = hi[k] - want[k]
                else:
                    hi[k] = lo[k] + want[k]
            elif lo[k] <= 0.0 <= hi[k]:               # the sensor is level with this span: grow both ways
                lo[k] -= need / 2
                hi[k] += need / 2
            elif abs(lo[k]) < abs(hi[k]):              # the near face is at lo: the far side is hidden
                hi[k] = lo[k] + want[k]
            else:
                lo[k] = hi[k] - want[k]
    size2 = hi - lo
    c2 = axes.T @ ((lo + hi) / 2)
    yaw = theta if length_axis == 0 else theta + np.pi / 2
    yaw = float((yaw + np.pi / 2) % np.pi - np.pi / 2)
    zc, h = (z0 + z1) / 2, z1 - z0
    vis_size = np.array([ext[length_axis], ext[1 - length_axis], h])
    return BoxFit(center=np.array([c2[0], c2[1], zc]), size=np.array([size2[length_axis], size2[1 - length_axis], h]),
                  yaw=yaw, visible_center=np.array([vis_c[0], vis_c[1], zc]), visible_size=vis_size)
