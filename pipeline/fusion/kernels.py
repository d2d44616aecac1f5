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


@lru_cache(maxsize=None)
def _ego_kernel():
    from numba import njit

    @njit(cache=True, nogil=True, error_model="numpy")
    def _move(xyz, qf, rel, B, C, D, angle, T_bl, k, s, e, out):
        """Points s..e-1 of pose interval k to the camera time (float64 math, float32 result):
        ``Y[0:3] cos(f a) + Y[3:6] sin(f a) + Y[6:9] + C[k] + f D[k]`` with ``Y = B[k] @ p_base``
        and f the point's fraction of the interval (calibration.motion's Rodrigues fold)."""
        r0 = np.float64(rel[k])
        span = np.float64(rel[k + 1] - rel[k])
        ang = angle[k]
        small = ang <= 0.2
        # every constant in a local: the loop then neither reloads them (``out`` might alias) nor
        # stays scalar
        c0, c1, c2 = C[k, 0], C[k, 1], C[k, 2]
        d0, d1, d2 = D[k, 0], D[k, 1], D[k, 2]
        t00, t01, t02, t03 = T_bl[0, 0], T_bl[0, 1], T_bl[0, 2], T_bl[0, 3]
        t10, t11, t12, t13 = T_bl[1, 0], T_bl[1, 1], T_bl[1, 2], T_bl[1, 3]
        t20, t21, t22, t23 = T_bl[2, 0], T_bl[2, 1], T_bl[2, 2], T_bl[2, 3]
        b00, b01, b02 = B[k, 0, 0], B[k, 0, 1], B[k, 0, 2]
        b10, b11, b12 = B[k, 1, 0], B[k, 1, 1], B[k, 1, 2]
        b20, b21, b22 = B[k, 2, 0], B[k, 2, 1], B[k, 2, 2]
        b30, b31, b32 = B[k, 3, 0], B[k, 3, 1], B[k, 3, 2]
        b40, b41, b42 = B[k, 4, 0], B[k, 4, 1], B[k, 4, 2]
        b50, b51, b52 = B[k, 5, 0], B[k, 5, 1], B[k, 5, 2]
        b60, b61, b62 = B[k, 6, 0], B[k, 6, 1], B[k, 6, 2]
        b70, b71, b72 = B[k, 7, 0], B[k, 7, 1], B[k, 7, 2]
        b80, b81, b82 = B[k, 8, 0], B[k, 8, 1], B[k, 8, 2]
        for i in range(s, e):
            x0 = np.float64(xyz[i, 0])
            y0 = np.float64(xyz[i, 1])
            z0 = np.float64(xyz[i, 2])
            bx = t00 * x0 + t01 * y0 + t02 * z0 + t03
            by = t10 * x0 + t11 * y0 + t12 * z0 + t13
            bz = t20 * x0 + t21 * y0 + t22 * z0 + t23
            f = (qf[i] - r0) / span                  # exact: integers below 2^53
            a = f * ang
            a2 = a * a                                  # calibration.transforms.sincos's polynomial
            sn = a * (1.0 - a2 * (1.0 / 6.0 - a2 * (1.0 / 120.0 - a2 * (1.0 / 5040.0 - a2 / 362880.0))))
            cs = 1.0 - a2 * (0.5 - a2 * (1.0 / 24.0 - a2 * (1.0 / 720.0 - a2 * (1.0 / 40320.0 - a2 / 3628800.0))))
            if not small:
                cs = np.cos(a)
                sn = np.sin(a)
            out[i, 0] = np.float32((b00 * bx + b01 * by + b02 * bz) * cs
                                   + (b30 * bx + b31 * by + b32 * bz) * sn
                                   + (b60 * bx + b61 * by + b62 * bz) + c0 + d0 * f)
            out[i, 1] = np.float32((b10 * bx + b11 * by + b12 * bz) * cs
                                   + (b40 * bx + b41 * by + b42 * bz) * sn
                                   + (b70 * bx + b71 * by + b72 * bz) + c1 + d1 * f)
            out[i, 2] = np.float32((b20 * bx + b21 * by + b22 * bz) * cs
                                   + (b50 * bx + b51 * by + b52 * bz) * sn
                                   + (b80 * bx + b81 * by + b82 * bz) + c2 + d2 * f)

    @njit(cache=True, nogil=True, error_model="numpy")
    def ego_project(xyz, q, rel, B, C, D, angle, T_bl, A, width, height, min_depth, floor_rule, want_base,
                    points_base):
        """Ego-motion compensation and projection of every point (no N x 4 float64 copies).

        Point i (time ``q[i]`` ns after the first pose) lies in pose interval k (rel[k] <= q <
        rel[k+1]; the ends extend the first and last intervals); it is moved to the camera
        time as compensate_ego_motion moves it (``_move``, float32 result), then projected
        with the (3, 4) float32 pixel-from-LiDAR ``A`` exactly as ``project_linear``. With
        ``want_base`` the moved point is also written to ``points_base`` (N, 3) float32 (base
        frame) and the largest motion (m) returned."""
        n = xyz.shape[0]
        m = rel.shape[0]
        moved = np.empty((n, 3), dtype=np.float32)
        qf = q.astype(np.float64)                      # (AVX2 has no vector int64 -> float64)
        in_order = True
        for i in range(1, n):
            if q[i] < q[i - 1]:
                in_order = False
                break
        if in_order:                                   # each interval one contiguous run
            s = 0
            for k in range(m - 1):
                e = n if k == m - 2 else np.searchsorted(q, rel[k + 1], side="left")
                if e > s:
                    _move(xyz, qf, rel, B, C, D, angle, T_bl, k, s, e, moved)
                s = max(s, e)
        else:
            for i in range(n):
                lo_k = 0                               # count of rel[1 .. m-2] <= q[i]
                hi_k = m - 2
                while lo_k < hi_k:
                    mid = (lo_k + hi_k) // 2
                    if rel[mid + 1] <= q[i]:
                        lo_k = mid + 1
                    else:
                        hi_k = mid
                _move(xyz, qf, rel, B, C, D, angle, T_bl, lo_k, i, i + 1, moved)
        idx = np.empty(n, dtype=np.int64)
        cols = np.empty(n, dtype=np.int32)
        rows = np.empty(n, dtype=np.int32)
        depth = np.empty(n, dtype=np.float32)
        half = np.float32(0.0) if floor_rule else np.float32(0.5)
        w_hi = np.float32(width) - half
        h_hi = np.float32(height) - half
        lo = -half
        max_sq = np.float32(0.0)
        if want_base:
            Tf = T_bl.astype(np.float32)
            for i in range(n):
                x = moved[i, 0]
                y = moved[i, 1]
                z = moved[i, 2]
                points_base[i, 0] = Tf[0, 0] * x + Tf[0, 1] * y + Tf[0, 2] * z + Tf[0, 3]
                points_base[i, 1] = Tf[1, 0] * x + Tf[1, 1] * y + Tf[1, 2] * z + Tf[1, 3]
                points_base[i, 2] = Tf[2, 0] * x + Tf[2, 1] * y + Tf[2, 2] * z + Tf[2, 3]
                dx = x - xyz[i, 0]
                dy = y - xyz[i, 1]
                dz = z - xyz[i, 2]
                max_sq = max(max_sq, dx * dx + dy * dy + dz * dz)
        kk = 0
        for i in range(n):
            x = moved[i, 0]
            y = moved[i, 1]
            z = moved[i, 2]
            w = A[2, 0] * x + A[2, 1] * y + A[2, 2] * z + A[2, 3]
            if not w > min_depth:
                continue
            inv = np.float32(1.0) / w
            u = (A[0, 0] * x + A[0, 1] * y + A[0, 2] * z + A[0, 3]) * inv
            v = (A[1, 0] * x + A[1, 1] * y + A[1, 2] * z + A[1, 3]) * inv
            if u < lo or u >= w_hi or v < lo or v >= h_hi:
                continue
            idx[kk] = i
            cols[kk] = np.int32(np.floor(u + half))
            rows[kk] = np.int32(np.floor(v + half))
            depth[kk] = w
            kk += 1
        return idx[:kk], cols[:kk], rows[:kk], depth[:kk], np.sqrt(max_sq)

    return ego_project


def ego_project(points_lidar: np.ndarray, stamp_ns: int, t_offset_ns: np.ndarray, pose_stamps_ns: np.ndarray,
                T_world_from_base: np.ndarray, T_base_from_lidar: np.ndarray, target_ns: int,
                A_pixel_from_lidar: np.ndarray, width: int, height: int, min_depth_m: float,
                points_base: np.ndarray | None = None, *, tolerance_ns: int = 1_000_000):
    """calibration.motion.compensate_ego_motion (timed poses, >= 2 of them) followed by
    ``project_linear``, fused: (indices, cols, rows, depth_m, max_motion_m). With
    ``points_base`` (N, 3) float32 given, the moved points are written there in the base frame.
    The per-interval set-up (slerp increments, the chain to the camera time) is the same numpy
    as compensate_ego_motion; the kernel does the per-point work."""
    from calibration.transforms import check_query_range, interpolate_poses, invert_T, so3_log

    n = len(points_lidar)
    stamps = np.asarray(pose_stamps_ns, dtype=np.int64).reshape(-1)
    T_wb = np.asarray(T_world_from_base, dtype=np.float64)
    T_bl = np.ascontiguousarray(T_base_from_lidar, dtype=np.float64)
    T_c = interpolate_poses(stamps, T_wb, np.array([target_ns]), tolerance_ns=tolerance_ns)[0]
    T_lc = invert_T(T_bl) @ invert_T(T_c)                                   # lidar(target) from world
    rel = stamps - stamps[0]
    q = np.asarray(t_offset_ns).astype(np.int64, copy=False) + np.int64(int(stamp_ns) - int(stamps[0]))
    if n:
        check_query_range(rel, int(q.min()), int(q.max()), tolerance_ns)
    R0 = T_wb[:-1, :3, :3]
    omega = so3_log(np.swapaxes(R0, -1, -2) @ T_wb[1:, :3, :3])
    angle = np.linalg.norm(omega, axis=1)
    R_lw = T_lc[:3, :3]
    K = len(R0)
    B = np.zeros((K, 9, 3))
    for k in range(K):
        A_k = R_lw @ R0[k]
        if angle[k] > 1e-15:
            ax = omega[k] / angle[k]
            kkT = np.outer(ax, ax)
            skew = np.array([[0, -ax[2], ax[1]], [ax[2], 0, -ax[0]], [-ax[1], ax[0], 0]])
            B[k] = np.vstack([A_k @ (np.eye(3) - kkT), A_k @ skew, A_k @ kkT])
        else:
            B[k, 6:9] = A_k
    C = (T_wb[:-1, :3, 3] @ R_lw.T) + T_lc[:3, 3]
    D = (T_wb[1:, :3, 3] - T_wb[:-1, :3, 3]) @ R_lw.T
    xyz = points_lidar if points_lidar.dtype == np.float32 else points_lidar.astype(np.float32)
    want = points_base is not None
    base = points_base if want else np.zeros((0, 3), np.float32)
    idx, cols, rows, depth, motion = _ego_kernel()(
        xyz, q, rel, B, np.ascontiguousarray(C), np.ascontiguousarray(D), angle, T_bl,
        np.ascontiguousarray(A_pixel_from_lidar, np.float32), int(width), int(height), np.float32(min_depth_m),
        False, want, base)
    return idx, cols, rows, depth, float(motion)


@lru_cache(maxsize=None)
def _cluster_kernel():
    from numba import njit

    @njit(cache=True, nogil=True, error_model="numpy")
    def _near(pts, xs, order, j, eps, eps2, out):
        """Indices of the points within eps of point j (squared distance < eps^2, j included),
        found through the x-sorted ``xs``/``order``; written to ``out``, count returned."""
        a = np.searchsorted(xs, pts[j, 0] - eps, side="left")
        b = np.searchsorted(xs, pts[j, 0] + eps, side="right")
        c = 0
        for t in range(a, b):
            m = order[t]
            dx = pts[j, 0] - pts[m, 0]
            dy = pts[j, 1] - pts[m, 1]
            dz = pts[j, 2] - pts[m, 2]
            if dx * dx + dy * dy + dz * dz < eps2:
                out[c] = m
                c += 1
        return c

    @njit(cache=True, nogil=True, error_model="numpy")
    def dbscan(pts, eps, min_points):
        """Open3D's cluster_dbscan, same labels: neighbourhoods by squared distance < eps^2
        (nanoflann's radius search; the point itself included), clusters numbered in the order
        of their first core point, a border point joins the first cluster reaching it, noise -1."""
        nv = pts.shape[0]
        order = np.argsort(pts[:, 0], kind="mergesort")
        xs = pts[order, 0].copy()
        eps2 = eps * eps
        buf = np.empty(nv, np.int64)
        nbs = np.zeros(nv, np.int64)
        for j in range(nv):
            nbs[j] = _near(pts, xs, order, j, eps, eps2, buf)
        labels = np.full(nv, -2, np.int64)
        stack = np.empty(nv, np.int64)
        queued = np.zeros(nv, np.bool_)
        cluster = 0
        for j in range(nv):
            if labels[j] != -2:
                continue
            if nbs[j] < min_points:
                labels[j] = -1
                continue
            labels[j] = cluster
            top = 0
            c = _near(pts, xs, order, j, eps, eps2, buf)
            queued[j] = True
            touched = [j]
            for t in range(c):
                m = buf[t]
                if not queued[m]:
                    queued[m] = True
                    touched.append(m)
                    stack[top] = m
                    top += 1
            while top > 0:
                top -= 1
                q = stack[top]
                if labels[q] == -1:
                    labels[q] = cluster
                if labels[q] != -2:
                    continue
                labels[q] = cluster
                if nbs[q] >= min_points:
                    c = _near(pts, xs, order, q, eps, eps2, buf)
                    for t in range(c):
                        m = buf[t]
                        if not queued[m]:
                            queued[m] = True
                            touched.append(m)
                            stack[top] = m
                            top += 1
            for m in touched:
                queued[m] = False
            cluster += 1
        return labels

    @njit(cache=True, nogil=True, error_model="numpy")
    def voxel_dbscan(p, voxel_m, eps_m, min_points):
        """``dbscan`` on the centroids of the occupied voxels of ``p`` (N, 3) float32, in the
        order np.unique(axis=0) gives them (x index, then y, then z), centroids as float64 sums
        in point order: Open3D's cluster_dbscan on those centroids, label for label. Returns
        the labels per point."""
        n = p.shape[0]
        vox = np.float32(voxel_m)
        kx = np.empty(n, np.int64)
        ky = np.empty(n, np.int64)
        kz = np.empty(n, np.int64)
        for i in range(n):
            kx[i] = np.int64(np.floor(p[i, 0] / vox))
            ky[i] = np.int64(np.floor(p[i, 1] / vox))
            kz[i] = np.int64(np.floor(p[i, 2] / vox))
        mx, my, mz = kx.min(), ky.min(), kz.min()
        ry = ky.max() - my + 1
        rz = kz.max() - mz + 1
        key = ((kx - mx) * ry + (ky - my)) * rz + (kz - mz)
        order = np.argsort(key, kind="mergesort")
        inverse = np.empty(n, np.int64)
        v = -1
        last = np.int64(-1)
        for t in range(n):
            i = order[t]
            if v < 0 or key[i] != last:
                v += 1
                last = key[i]
            inverse[i] = v
        nv = v + 1
        cen = np.zeros((nv, 3))
        cnt = np.zeros(nv, np.int64)
        for i in range(n):
            j = inverse[i]
            cen[j, 0] += p[i, 0]
            cen[j, 1] += p[i, 1]
            cen[j, 2] += p[i, 2]
            cnt[j] += 1
        for j in range(nv):
            cen[j, 0] /= cnt[j]
            cen[j, 1] /= cnt[j]
            cen[j, 2] /= cnt[j]
        labels = dbscan(cen, eps_m, min_points)
        out = np.empty(n, np.int64)
        for i in range(n):
            out[i] = labels[inverse[i]]
        return out

    return voxel_dbscan, dbscan


def voxel_dbscan(points: np.ndarray, voxel_m: float, eps_m: float, min_points: int) -> np.ndarray:
    """Per-point DBSCAN labels (-1 noise) of ``points`` (N, 3) clustered as voxel centroids
    (the same labels as Open3D's cluster_dbscan on those centroids), without the GIL."""
    p = np.ascontiguousarray(points, np.float32)
    if len(p) == 0:
        return np.zeros(0, np.int64)
    return _cluster_kernel()[0](p, float(voxel_m), float(eps_m), int(min_points))


def dbscan(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """DBSCAN labels (-1 noise) of ``points`` (N, 3): Open3D's cluster_dbscan, label for label
    (float64 distances), without the GIL."""
    p = np.ascontiguousarray(points, np.float64)
    if len(p) == 0:
        return np.zeros(0, np.int64)
    return _cluster_kernel()[1](p, float(eps), int(min_points))


def warm_up() -> None:
    """Load (or compile, on a cold cache) every fusion kernel on tiny inputs, so the first real
    frame does not pay for it (a live run's first frames would be late and dropped)."""
    pts = np.array([[5.0, 0.0, 0.0, 0.0], [5.2, 0.1, 0.0, 0.0], [9.0, 1.0, 0.5, 0.0]], np.float32)
    A = np.array([[0.0, -100.0, 0.0, 50.0], [0.0, 0.0, -100.0, 50.0], [1.0, 0.0, 0.0, 0.0]])
    T = np.tile(np.eye(4), (2, 1, 1))
    T[1, 0, 3] = 0.1
    ego_project(pts, 0, np.zeros(3, np.int64), np.array([0, 10_000_000]), T, np.eye(4), 5_000_000, A, 100, 100, 1.0,
                np.empty((3, 3), np.float32))
    project_linear(pts, A, 100, 100, 1.0)
    voxel_dbscan(pts[:, :3], 0.2, 0.7, 1)
    dbscan(pts[:, :3], 0.7, 1)
