"""Pixel-level fusion: every LiDAR point gets a class, an instance, a score and a camera.

Per camera: project (calibration.project_lidar: distortion, minimum depth, field-of-view
pre-cull), drop points another surface hides from the camera (a z-buffer built from the
cloud itself, with a depth tolerance that grows with range), then read the semantic mask
and the instance-id map at each remaining point's pixel.

Several cameras: a point seen by more than one takes its labels from the camera where it
lies furthest from the image border (``multi_camera: border``) or where its instance score
is highest (``multi_camera: score``); ties keep the earlier camera.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.fusion.config import FusionConfig
from pipeline.fusion.kernels import RULE_BORDER, RULE_SCORE, label_view, project_linear
from pipeline.types import FLAG_EDGE, FLAG_OUTSIDE, NO_CAMERA, NO_INSTANCE, FusedCloud, Instances


@dataclass
class InstanceMap:
    """Instances as one id image: ``ids`` (H, W) uint16, 0 = none; per id its class and score."""

    ids: np.ndarray
    class_of: np.ndarray      # (max_id + 1,) uint8 taxonomy id (index 0 unused)
    score_of: np.ndarray      # (max_id + 1,) float32

    @staticmethod
    def from_instances(inst: Instances, *, min_score: float = 0.0, first_id: int = 1) -> "InstanceMap":
        """Paint masks lowest score first so the highest-scoring instance wins each pixel.
        Instance k (in ``inst`` order) gets id ``first_id + k``."""
        H, W = inst.masks.shape[1:] if inst.masks.ndim == 3 else (0, 0)   # (0, H, W) when nothing was found
        n = len(inst)
        ids = np.zeros((H, W), np.uint16)
        class_of = np.zeros(first_id + n, np.uint8)
        score_of = np.zeros(first_id + n, np.float32)
        for k in np.argsort(inst.scores, kind="stable"):
            if inst.scores[k] < min_score:
                continue
            ids[inst.masks[k]] = first_id + k
            class_of[first_id + k] = inst.class_ids[k]
            score_of[first_id + k] = inst.scores[k]
        return InstanceMap(ids, class_of, score_of)

    @staticmethod
    def from_id_image(ids: np.ndarray, semantic: np.ndarray) -> "InstanceMap":
        """From a ground-truth style instance-id image: each id's class is the semantic class
        under most of its pixels; score 1."""
        ids = ids.astype(np.uint16, copy=False)
        top = int(ids.max()) if ids.size else 0
        class_of = np.zeros(top + 1, np.uint8)
        score_of = np.zeros(top + 1, np.float32)
        m = ids > 0
        if m.any():
            pair = ids[m].astype(np.int64) * 256 + semantic[m]
            uniq, counts = np.unique(pair, return_counts=True)
            order = np.lexsort((counts, uniq // 256))          # per id, the most frequent class last
            last = np.r_[np.diff(uniq[order] // 256) != 0, True]
            best = uniq[order][last]
            class_of[best // 256] = best % 256
            score_of[best // 256] = 1.0
        return InstanceMap(ids, class_of, score_of)

    def at_least(self, min_score: float) -> "InstanceMap":
        """The instances scored ``min_score`` or more (the others' pixels become 0)."""
        low = (self.score_of < min_score)
        low[0] = False
        if not low.any() or not low[self.ids].any():
            return self
        return InstanceMap(np.where(low[self.ids], 0, self.ids).astype(np.uint16), self.class_of, self.score_of)

    def eroded(self, px: int) -> "InstanceMap":
        """Withdraw ids within `px` pixels of any id change (mask edges)."""
        if px <= 0:
            return self
        import cv2

        k = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
        lo, hi = cv2.erode(self.ids, k), cv2.dilate(self.ids, k)
        return InstanceMap(np.where(lo == hi, self.ids, 0).astype(np.uint16), self.class_of, self.score_of)


@dataclass
class CameraView:
    """What one camera contributes to the fusion of one sweep."""

    name: str
    model: object                     # calibration.camera.CameraModel
    T_cam_from_lidar: np.ndarray      # (4, 4)
    semantic: np.ndarray | None       # (H, W) uint8 taxonomy ids
    instances: InstanceMap | None
    points_lidar: np.ndarray | None = None   # this camera's motion-compensated copy of the cloud, if any
    projection: tuple | None = None          # (indices, cols, rows, depth_m) already computed (kernels.ego_project)


def fuse(points_lidar: np.ndarray, views: list[CameraView], cfg: FusionConfig, *, stamp_ns: int = 0,
         ignore_id: int = 255) -> FusedCloud:
    """Label every point of ``points_lidar`` (N, 4) from the cameras' masks."""
    from calibration.projection import project_lidar

    n = len(points_lidar)
    out = {"class_id": np.full(n, ignore_id, np.uint8), "instance_id": np.full(n, NO_INSTANCE, np.int32),
           "score": np.zeros(n, np.float32), "camera_index": np.full(n, NO_CAMERA, np.int8),
           "flags": np.full(n, FLAG_OUTSIDE, np.uint8), "best": np.full(n, -np.inf, np.float32)}
    rule = RULE_BORDER if cfg.multi_camera == "border" else RULE_SCORE
    for ci, view in enumerate(views):
        pts = view.points_lidar if view.points_lidar is not None else points_lidar
        M = view.model.linear_matrix()
        if view.projection is not None:
            idx, cols, rows, depth = view.projection
        elif M is not None and pts.dtype == np.float32:     # one numba pass: same result, no temporaries
            idx, cols, rows, depth = project_linear(pts, M @ view.T_cam_from_lidar, view.model.width,
                                                    view.model.height, cfg.min_depth_m)
        else:
            proj = project_lidar(pts, view.T_cam_from_lidar, view.model, min_depth_m=cfg.min_depth_m)
            idx, px = proj.index, proj.pixels
            cols, rows, depth = px[:, 0], px[:, 1], proj.depth_m[idx]
        if idx.size == 0:
            continue
        height, width = view.model.height, view.model.width
        inst = view.instances
        visible = label_view(idx, cols, rows, depth, view.semantic,
                             None if inst is None else inst.ids, None if inst is None else inst.class_of,
                             None if inst is None else inst.score_of, height, width,
                             occlusion=cfg.occlusion, half_w=cfg.splat_half_px[0], half_h=cfg.splat_half_px[1],
                             tol_m=cfg.occlusion_tol_m, tol_rel=cfg.occlusion_tol_rel, tol_sq=cfg.occlusion_tol_sq,
                             mask_check=cfg.occlusion_mask_check, cam=ci, rule=rule, out=out)
        if cfg.edge_mode == "depth_gate" and inst is not None:
            took = idx[visible]
            took = took[(out["camera_index"][took] == ci) & (out["instance_id"][took] != NO_INSTANCE)]
            depth_of = np.empty(n, np.float32)
            depth_of[idx] = depth
            _depth_gate(took, depth_of[took], out["instance_id"], out["class_id"], out["score"], out["flags"],
                        cfg.depth_gate_gap_m, ignore_id)
    return FusedCloud(stamp_ns, points_lidar, out["class_id"], out["instance_id"], out["score"],
                      out["camera_index"], out["flags"])


def _depth_gate(idx: np.ndarray, depth: np.ndarray, instance_id: np.ndarray, class_id: np.ndarray,
                score: np.ndarray, flags: np.ndarray, gap_m: float, ignore_id: int) -> None:
    """Per instance, keep the largest run of depth-continuous points (consecutive depths closer
    than ``gap_m``); the rest (background seen past a mask edge, a foreground occluder inside a
    loose mask) have their labels withheld (ignore class, no instance) and are flagged FLAG_EDGE."""
    if idx.size == 0:
        return
    ids = instance_id[idx]
    order = np.lexsort((depth, ids))
    ids_s, d_s = ids[order], depth[order]
    new_seg = np.r_[True, (np.diff(ids_s) != 0) | (np.diff(d_s) > gap_m)]
    seg = np.cumsum(new_seg) - 1
    counts = np.bincount(seg)
    seg_inst = ids_s[new_seg]
    # the largest segment of each instance
    seg_order = np.lexsort((counts, seg_inst))
    is_last = np.r_[np.diff(seg_inst[seg_order]) != 0, True]
    keep_seg = np.zeros(len(counts), bool)
    keep_seg[seg_order[is_last]] = True
    drop = idx[order[~keep_seg[seg]]]
    instance_id[drop] = NO_INSTANCE
    class_id[drop] = ignore_id
    score[drop] = 0.0
    flags[drop] |= FLAG_EDGE
