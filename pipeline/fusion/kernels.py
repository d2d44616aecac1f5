"""Numba kernels of the fusion hot path (compiled on first use, cached on disk).

One kernel labels the points one camera sees: z-buffer occlusion test, mask lookup, the
multi-camera rule, and the output arrays updated in place, so no per-point numpy
temporaries are made."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

RULE_BORDER, RULE_SCORE = 0, 1
_FLAG_OUTSIDE, _FLAG_OCCLUDED = 1, 2


@lru_cache(maxsize=None)
def _kernels():
    from numba import njit

    @njit(cache=True, nogil=True)
    def label_view(idx, cols, rows, depth, semantic, ids, class_of, score_of, height, width,
                   occlusion, half_w, half_h, tol_m, tol_rel, tol_sq, mask_check, cam, rule,
                   class_id, instance_id, score, camera_index, flags, best):
        """Points ``idx`` land at (cols, rows) with ``depth`` in this camera.

        Occlusion: each point's depth is splatted over a (2*half_w+1) x (2*half_h+1) window
        (the LiDAR's angular footprint in pixels), remembering the nearest point per pixel. A
        point is hidden when that nearest point is nearer than depth - tol (tol = tol_m +
        tol_rel*d + tol_sq*d^2, the last term for a road seen at a grazing angle) and, with
        ``mask_check``, the masks show the same label at both points' pixels: the camera sees
        the occluder where the point would be. Background points just outside a foreground
        silhouette keep their label because their pixels show the background.

        Labels: semantic class at the pixel, the instance id/class/score from the id map; a
        point seen by several cameras keeps the camera with the larger merit (distance to the
        image border, or instance score)."""
        n = idx.shape[0]
        has_sem = semantic.shape[0] > 0
        has_ids = ids.shape[0] > 0
        keys = np.zeros(n, dtype=np.int64)
        for i in range(n):
            k = 0
            if has_ids:
                k = np.int64(ids[rows[i], cols[i]]) * 256
            if has_sem:
                k += semantic[rows[i], cols[i]]
            keys[i] = k
        visible = np.ones(n, dtype=np.bool_)
        if occlusion:
            r_lo = height
            r_hi = 0
            for i in range(n):
                r_lo = min(r_lo, rows[i])
                r_hi = max(r_hi, rows[i])
            r_lo = max(r_lo - half_h, 0)
            r_hi = min(r_hi + half_h, height - 1)
            span = r_hi - r_lo + 1 if n > 0 else 0
            zbuf = np.full(span * width, np.inf, dtype=np.float32)
            zidx = np.full(span * width, -1, dtype=np.int32)
            for i in range(n):
                d = depth[i]
                r0 = max(rows[i] - half_h, 0) - r_lo
                r1 = min(rows[i] + half_h, height - 1) - r_lo
                c0 = max(cols[i] - half_w, 0)
                c1 = min(cols[i] + half_w, width - 1)
                for rr in range(r0, r1 + 1):
                    base = rr * width
                    for cc in range(c0, c1 + 1):
                        if d < zbuf[base + cc]:
                            zbuf[base + cc] = d
                            zidx[base + cc] = i
            for i in range(n):
                d = depth[i]
                p = (rows[i] - r_lo) * width + cols[i]
                if d > zbuf[p] + tol_m + tol_rel * d + tol_sq * d * d:
                    visible[i] = mask_check and keys[zidx[p]] != keys[i]
        for i in range(n):
            j = idx[i]
            flags[j] &= ~np.uint8(_FLAG_OUTSIDE)
            if not visible[i]:
                if camera_index[j] < 0:
                    flags[j] |= np.uint8(_FLAG_OCCLUDED)
                continue
            inst = np.int64(ids[rows[i], cols[i]]) if has_ids else np.int64(0)
            s = score_of[inst] if inst > 0 else np.float32(0.0)
            if rule == 0:
                merit = np.float32(min(min(cols[i], width - 1 - cols[i]), min(rows[i], height - 1 - rows[i])))
            else:
                merit = s + np.float32(1e-6)
            if merit <= best[j]:
                continue
            best[j] = merit
            camera_index[j] = cam
            flags[j] &= ~np.uint8(_FLAG_OCCLUDED)
            if has_sem:
                class_id[j] = semantic[rows[i], cols[i]]
            if inst > 0:
                instance_id[j] = cam * 65536 + inst
                score[j] = s
                class_id[j] = class_of[inst]
            else:
                instance_id[j] = -1
                score[j] = 0.0
        return visible

    @njit(cache=True, nogil=True)
    def project_linear(xyz, A, width, height, min_depth, floor_rule):
        """Project with a (3, 4) pixel-from-LiDAR matrix; return only the points that land in
        the image: their indices, (col, row) and depth. Same arithmetic and inside rules as
        calibration.projection.project_lidar for linear camera models, in one pass."""
        n = xyz.shape[0]
        idx = np.empty(n, dtype=np.int64)
        cols = np.empty(n, dtype=np.int32)
        rows = np.empty(n, dtype=np.int32)
        depth = np.empty(n, dtype=np.float32)
        half = np.float32(0.0) if floor_rule else np.float32(0.5)
        w_hi = np.float32(width) - half
        h_hi = np.float32(height) - half
        lo = -half
        k = 0
        for i in range(n):
            x = xyz[i, 0]
            y = xyz[i, 1]
            z = xyz[i, 2]
            w = A[2, 0] * x + A[2, 1] * y + A[2, 2] * z + A[2, 3]
            if not w > min_depth:
                continue
            inv = np.float32(1.0) / w
            u = (A[0, 0] * x + A[0, 1] * y + A[0, 2] * z + A[0, 3]) * inv
            v = (A[1, 0] * x + A[1, 1] * y + A[1, 2] * z + A[1, 3]) * inv
            if u < lo or u >= w_hi or v < lo or v >= h_hi:
                continue
            idx[k] = i
            cols[k] = np.int32(np.floor(u + half))
            rows[k] = np.int32(np.floor(v + half))
            depth[k] = w
            k += 1
        return idx[:k], cols[:k], rows[:k], depth[:k]

    return label_view, project_linear


def project_linear(points_lidar: np.ndarray, A_pixel_from_lidar: np.ndarray, width: int, height: int,
                   min_depth_m: float, inside: str = "round") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(indices, cols, rows, depth_m) of the points of (N, >=3) float32 ``points_lidar`` that land
    inside the image; ``A_pixel_from_lidar`` (3, 4) = camera.linear_matrix() @ T_cam_from_lidar."""
    xyz = points_lidar if points_lidar.dtype == np.float32 else points_lidar.astype(np.float32)
    return _kernels()[1](xyz, np.ascontiguousarray(A_pixel_from_lidar, np.float32), int(width), int(height),
                         np.float32(min_depth_m), inside == "floor")


def label_view(idx, cols, rows, depth, semantic, ids, class_of, score_of, height, width, *, occlusion, half_w,
               half_h, tol_m, tol_rel, tol_sq, mask_check, cam, rule, out) -> np.ndarray:
    """Typed entry to the kernel; ``out`` holds the FusedCloud arrays and ``best`` (updated in place).
    ``semantic``/``ids`` may be None."""
    empty8 = np.zeros((0, 0), np.uint8)
    empty16 = np.zeros((0, 0), np.uint16)
    return _kernels()[0](
        np.ascontiguousarray(idx, np.int64), np.ascontiguousarray(cols, np.int32), np.ascontiguousarray(rows, np.int32),
        np.ascontiguousarray(depth, np.float32),
        empty8 if semantic is None else np.ascontiguousarray(semantic, np.uint8),
        empty16 if ids is None else np.ascontiguousarray(ids, np.uint16),
        np.zeros(1, np.uint8) if class_of is None else np.ascontiguousarray(class_of, np.uint8),
        np.zeros(1, np.float32) if score_of is None else np.ascontiguousarray(score_of, np.float32),
        int(height), int(width), bool(occlusion), int(half_w), int(half_h), np.float32(tol_m), np.float32(tol_rel),
        np.float32(tol_sq), bool(mask_check), int(cam), int(rule),
        out["class_id"], out["instance_id"], out["score"], out["camera_index"], out["flags"], out["best"])
