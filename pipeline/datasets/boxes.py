"""Labelled 3D boxes of real datasets as ground truth: points inside each box, and boxes drawn
as rectangular instance masks (the ``label_boxes`` mask provider, an ORACLE).

Real datasets (KITTI object, nuScenes) label objects with 3D boxes, not points or pixels. The
truth used here follows from the boxes alone:

- **per-point instances**: a point belongs to a labelled box when it lies inside it (the box
  grown by ``BOX_MARGIN_M`` on every side, as LiDAR returns sit on the surface); a point inside
  two boxes goes to the smaller one;
- **per-point classes**: the class of that box; points in no box have no true class (ignored);
- **rectangular instance masks**: each box's eight corners projected into a camera (clipped at
  the near plane), the enclosing rectangle clipped to the image, nearer boxes drawn over farther
  ones. A rectangle is not a silhouette: it also covers the road and whatever lies behind the
  object inside it, which is what the per-point precision of such a run measures.

Pure numpy; the boxes are ``pipeline.types.Box3D`` in the rig's base frame.
"""
from __future__ import annotations

import numpy as np

from pipeline.types import Box3D

BOX_MARGIN_M = 0.1             # boxes grown by this on every side when points are assigned to them
NEAR_M = 0.5                   # corners nearer than this to the camera are clipped to this depth
LABEL_BOXES_NOTE = ("labelled 3D boxes drawn as rectangles (ORACLE: the dataset's labels stand in for the "
                    "models; not a model)")


def box_corners(box: Box3D) -> np.ndarray:
    """(8, 3) corners of a box (centre at its middle; size l, w, h; yaw about +z)."""
    l, w, h = (float(v) / 2 for v in box.size)
    x = np.array([l, l, -l, -l, l, l, -l, -l])
    y = np.array([w, -w, -w, w, w, -w, -w, w])
    z = np.array([-h, -h, -h, -h, h, h, h, h])
    c, s = np.cos(box.yaw), np.sin(box.yaw)
    return np.stack([c * x - s * y, s * x + c * y, z], axis=1) + np.asarray(box.center, np.float64)


def points_in_boxes(points_base: np.ndarray, boxes: list[Box3D], *,
                    margin_m: float = BOX_MARGIN_M) -> np.ndarray:
    """(N,) int32: the ``instance_id`` of the (smallest) box each point lies in, 0 for none."""
    pts = np.asarray(points_base, np.float64)[:, :3]
    out = np.zeros(len(pts), np.int32)
    best = np.full(len(pts), np.inf)
    for b in boxes:
        half = np.asarray(b.size, np.float64) / 2 + margin_m
        q = pts - np.asarray(b.center, np.float64)
        near = np.abs(q).max(axis=1) <= np.linalg.norm(half)       # cheap sphere pre-cull
        if not near.any():
            continue
        idx = np.flatnonzero(near)
        c, s = np.cos(-b.yaw), np.sin(-b.yaw)
        lx = c * q[idx, 0] - s * q[idx, 1]
        ly = s * q[idx, 0] + c * q[idx, 1]
        inside = (np.abs(lx) <= half[0]) & (np.abs(ly) <= half[1]) & (np.abs(q[idx, 2]) <= half[2])
        vol = float(np.prod(b.size))
        take = idx[inside & (vol < best[idx])]
        out[take] = int(b.instance_id)
        best[take] = vol
    return out


def point_truth(points_base: np.ndarray, boxes: list[Box3D], ignore_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(point_class uint8 (ignore_id outside every box), point_instance uint16) from the boxes."""
    inst = points_in_boxes(points_base, boxes)
    cls = np.full(len(inst), ignore_id, np.uint8)
    by_id = {int(b.instance_id): int(b.class_id) for b in boxes}
    for iid, cid in by_id.items():
        cls[inst == iid] = cid
    return cls, inst.astype(np.uint16)


def _clip_near(corners_cam: np.ndarray, depth: np.ndarray, near: float) -> np.ndarray:
    """Corners in front of the near plane, plus where the box's edges cross it."""
    keep = [corners_cam[depth >= near]]
    edges = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))
    for a, b in edges:
        da, db = depth[a], depth[b]
        if (da - near) * (db - near) < 0:
            t = (near - da) / (db - da)
            keep.append((corners_cam[a] + t * (corners_cam[b] - corners_cam[a]))[None])
    return np.concatenate(keep, axis=0)


def box_rectangle(box: Box3D, T_cam_from_base: np.ndarray, camera_model) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2) pixel rectangle (exclusive end) of a box in a linear camera, clipped to the
    image; None when the box is behind the camera or outside the image."""
    M = camera_model.linear_matrix()
    if M is None:
        raise ValueError("box rectangles need a linear camera model (pinhole without distortion, rectified)")
    corners = box_corners(box)
    cam = corners @ T_cam_from_base[:3, :3].T + T_cam_from_base[:3, 3]
    uvw = cam @ M[:, :3].T + M[:, 3]
    depth = uvw[:, 2]
    if depth.max() < NEAR_M:
        return None
    if depth.min() < NEAR_M:
        cam = _clip_near(cam, depth, NEAR_M)
        uvw = cam @ M[:, :3].T + M[:, 3]
    uv = uvw[:, :2] / uvw[:, 2:3]
    W, H = camera_model.width, camera_model.height
    x1, y1 = int(np.floor(max(uv[:, 0].min(), 0))), int(np.floor(max(uv[:, 1].min(), 0)))
    x2, y2 = int(np.ceil(min(uv[:, 0].max(), W))), int(np.ceil(min(uv[:, 1].max(), H)))
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def box_masks(boxes: list[Box3D], T_cam_from_base: np.ndarray, camera_model, ignore_id: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """(semantic uint8, instance uint16) images of one camera: each box's rectangle filled with its
    class and instance id, far boxes first so near ones lie on top; ``ignore_id`` / 0 elsewhere."""
    H, W = camera_model.height, camera_model.width
    sem = np.full((H, W), ignore_id, np.uint8)
    inst = np.zeros((H, W), np.uint16)
    drawn = []
    for b in boxes:
        rect = box_rectangle(b, T_cam_from_base, camera_model)
        if rect is not None:
            c = T_cam_from_base[:3, :3] @ np.asarray(b.center) + T_cam_from_base[:3, 3]
            drawn.append((float(np.linalg.norm(c)), rect, b))
    for _, (x1, y1, x2, y2), b in sorted(drawn, key=lambda d: -d[0]):
        sem[y1:y2, x1:x2] = b.class_id
        inst[y1:y2, x1:x2] = b.instance_id
    return sem, inst
