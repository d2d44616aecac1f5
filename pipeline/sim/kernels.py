"""Numba kernels of the renderer: one pass per ray instead of numpy temporaries (compiled
on first use, cached on disk). They are module-level functions: numba's disk cache cannot
find kernels defined inside a closure again, so every process recompiled them (~1.7 s)
before. Each computes what the numpy code it replaced computed, in the same float32
arithmetic and order, so drives are bit-identical to those rendered before."""
from __future__ import annotations

import numpy as np
from numba import njit

from pipeline.sim.world import DASH_LENGTH_M, DASH_PERIOD_M, TEX_ASPHALT, TEX_FACADE, TEX_FOLIAGE, TEX_GRASS, TEX_PAVING


@njit(cache=True, nogil=True, inline="always")
def cell_hash(x, y, z, scale, salt):
    h = np.sin(np.floor(x * scale) * 12.9898 + np.floor(y * scale) * 78.233 + np.floor(z * scale) * 37.719
               + salt) * 43758.5453
    return h - np.floor(h)


@njit(cache=True, nogil=True)
def _face_and_lambert(normal, dirs, hit, sun):
    """Turn each normal towards the camera (in place); Lambert term towards the sun (0 for sky)."""
    n = hit.shape[0]
    lam = np.zeros(n, dtype=np.float32)
    for i in range(n):
        if not hit[i]:
            continue
        d = normal[i, 0] * dirs[i, 0] + normal[i, 1] * dirs[i, 1] + normal[i, 2] * dirs[i, 2]
        if d > 0:
            normal[i, 0] = -normal[i, 0]
            normal[i, 1] = -normal[i, 1]
            normal[i, 2] = -normal[i, 2]
        v = normal[i, 0] * sun[0] + normal[i, 1] * sun[1] + normal[i, 2] * sun[2]
        lam[i] = v if v > 0 else 0.0
    return lam


@njit(cache=True, nogil=True)
def _shade(hit, dist, normal, pts, dirs, albedo, tex, lam, amb, sun_c, horizon, zenith, sun, fog_m, gain):
    """12-bit linear codes (N, 3): textured albedo x (ambient + sun), haze, and the sky."""
    n = hit.shape[0]
    out = np.empty((n, 3), dtype=np.uint16)
    for i in range(n):
        if hit[i]:
            px, py, pz = pts[i, 0], pts[i, 1], pts[i, 2]
            k = tex[i]
            f = 1.0
            if k == TEX_ASPHALT or k == TEX_GRASS or k == TEX_FOLIAGE:
                if k == TEX_ASPHALT:
                    scale, amp = 6.0, 0.25
                elif k == TEX_GRASS:
                    scale, amp = 3.0, 0.35
                else:
                    scale, amp = 2.5, 0.45
                fine = cell_hash(px, py, pz, scale, 0.0)
                coarse = cell_hash(px, py, pz, scale / 8.0, 1.0)
                f = 1.0 + amp * (fine - 0.5) + 0.5 * amp * (coarse - 0.5)
            elif k == TEX_PAVING:
                qx, qy = px / 0.6, py / 0.6
                seam = abs(qx - np.floor(qx + 0.5)) < 0.05 or abs(qy - np.floor(qy + 0.5)) < 0.05
                f = (0.7 if seam else 1.0) * (0.95 + 0.1 * cell_hash(px, py, pz, 1.66, 0.0))
            elif k == TEX_FACADE and abs(normal[i, 2]) < 0.5:
                along = px * -normal[i, 1] + py * normal[i, 0]
                a = along / 3.0 - np.floor(along / 3.0)
                b = pz / 3.2 - np.floor(pz / 3.2)
                if a > 0.3 and a < 0.72 and b > 0.35 and b < 0.8 and pz > 1.2:
                    f = 0.35
            fog = np.exp(-dist[i] / fog_m)
            up = 0.75 + 0.25 * normal[i, 2]
            for c in range(3):
                v = albedo[i, c] * f * (amb[c] * up + lam[i] * sun_c[c]) * fog + horizon[c] * (1.0 - fog)
                v = v * gain
                out[i, c] = np.uint16(min(max(v, 0.0), 4095.0))
        else:
            el = dirs[i, 2]
            el = np.sqrt(min(max(el, 0.0), 1.0))
            g = dirs[i, 0] * sun[0] + dirs[i, 1] * sun[1] + dirs[i, 2] * sun[2]
            g = min(max(g, 0.0), 1.0) ** 48
            for c in range(3):
                v = (horizon[c] * (1.0 - el) + zenith[c] * el + 0.6 * g * sun_c[c]) * gain
                out[i, c] = np.uint16(min(max(v, 0.0), 4095.0))
    return out


@njit(cache=True, nogil=True)
def rotate_rays(dirs, R, origin):
    """(N, 6) float32 rays: ``origin`` and ``dirs @ R.T`` (each direction rotated by R),
    rounded as OpenBLAS's float32 GEMM does (a product, then two fused multiply-adds, emulated
    in float64), which the camera used before: the same drives, bit for bit."""
    n = dirs.shape[0]
    rays = np.empty((n, 6), dtype=np.float32)
    for i in range(n):
        for j in range(3):
            rays[i, j] = origin[j]
            acc = dirs[i, 0] * R[j, 0]
            acc = np.float32(np.float64(dirs[i, 1]) * np.float64(R[j, 1]) + np.float64(acc))
            rays[i, 3 + j] = np.float32(np.float64(dirs[i, 2]) * np.float64(R[j, 2]) + np.float64(acc))
    return rays


@njit(cache=True, nogil=True)
def lidar_rays(dirs, R, origins, beams):
    """(C * B, 6) float32 rays of a sweep: column c's B directions ``dirs[c * B + b]`` rotated by
    its own ``R[c]`` and starting at ``origins[c]`` (the sensor pose at that column's time)."""
    n = dirs.shape[0]
    rays = np.empty((n, 6), dtype=np.float32)
    for i in range(n):
        c = i // beams
        for j in range(3):
            rays[i, j] = origins[c, j]
            rays[i, 3 + j] = R[c, j, 0] * dirs[i, 0] + R[c, j, 1] * dirs[i, 1] + R[c, j, 2] * dirs[i, 2]
    return rays


@njit(cache=True, nogil=True)
def hit_points(rays, dist):
    """(N, 3) float32 hit points ``origin + dir * t`` (the origin where the ray hit nothing)."""
    n = rays.shape[0]
    pts = np.empty((n, 3), dtype=np.float32)
    for i in range(n):
        t = dist[i] if np.isfinite(dist[i]) else np.float32(0.0)
        for j in range(3):
            pts[i, j] = rays[i, j] + rays[i, 3 + j] * t
    return pts


@njit(cache=True, nogil=True)
def label_hits(dist, dynamic, prim, uv, sky_id, road_id, lane_id, s_class, s_color, s_reflect, s_faces, s_vert_sd,
               paint_d, paint_half, paint_solid, paint_color, a_class, a_instance, a_reflect, d_tri_agent, d_tri_color):
    """Class, instance, BGR albedo and reflectivity of each hit. A miss is sky. A static hit
    takes its triangle's; on the road, the hit's road coordinates (s, d), interpolated from
    the triangle's vertices with the barycentric ``uv``, decide lane paint: within a
    boundary's half width of its d, and solid or on a dash (s mod DASH_PERIOD_M <
    DASH_LENGTH_M). Paint is lane_marking with reflectivity 0.8 and its boundary's colour. A
    thing's hit (``dynamic``) takes its agent's class, instance and reflectivity."""
    n = dist.shape[0]
    cls = np.full(n, sky_id, dtype=np.uint8)
    inst = np.zeros(n, dtype=np.uint16)
    albedo = np.zeros((n, 3), dtype=np.float32)
    refl = np.zeros(n, dtype=np.float32)
    one, period, dash = np.float32(1.0), np.float32(DASH_PERIOD_M), np.float32(DASH_LENGTH_M)
    for i in range(n):
        if not np.isfinite(dist[i]):
            continue
        p = prim[i]
        if dynamic[i]:
            a = d_tri_agent[p]
            cls[i], inst[i], refl[i] = a_class[a], a_instance[a], a_reflect[a]
            for c in range(3):
                albedo[i, c] = d_tri_color[p, c]
            continue
        cls[i], refl[i] = s_class[p], s_reflect[p]
        for c in range(3):
            albedo[i, c] = s_color[p, c]
        if s_class[p] != road_id:
            continue
        u, v = uv[i, 0], uv[i, 1]
        w0 = one - u - v
        f0, f1, f2 = s_faces[p, 0], s_faces[p, 1], s_faces[p, 2]
        s = w0 * s_vert_sd[f0, 0] + u * s_vert_sd[f1, 0] + v * s_vert_sd[f2, 0]
        d = w0 * s_vert_sd[f0, 1] + u * s_vert_sd[f1, 1] + v * s_vert_sd[f2, 1]
        on_dash = np.mod(s, period) < dash
        painted = False
        colour = -1
        for b in range(paint_d.shape[0]):
            if np.abs(d - paint_d[b]) <= paint_half[b]:
                colour = b
                if paint_solid[b] or on_dash:
                    painted = True
        if painted:
            cls[i], refl[i] = lane_id, np.float32(0.8)
            for c in range(3):
                albedo[i, c] = paint_color[colour, c]
    return cls, inst, albedo, refl


@njit(cache=True, nogil=True)
def shadow_rays(pts, normal, lam, sun, offset):
    """Indices of the sunlit hits (``lam > 0``) and their shadow rays towards the sun, each
    starting ``offset`` metres off the surface along its normal."""
    n = lam.shape[0]
    k = 0
    for i in range(n):
        if lam[i] > 0:
            k += 1
    idx = np.empty(k, dtype=np.int64)
    rays = np.empty((k, 6), dtype=np.float32)
    k = 0
    for i in range(n):
        if lam[i] > 0:
            idx[k] = i
            for j in range(3):
                rays[k, j] = pts[i, j] + normal[i, j] * offset
                rays[k, 3 + j] = sun[j]
            k += 1
    return idx, rays


@njit(cache=True, nogil=True)
def finish_image(codes, gamma_lut, noise, offset):
    """uint8 image ``clip(gamma_lut[codes] + noise[offset:], 0, 255)`` (truncated, as astype)."""
    flat = codes.reshape(-1)
    out = np.empty(flat.shape[0], dtype=np.uint8)
    for i in range(flat.shape[0]):
        v = gamma_lut[flat[i]] + noise[offset + i]
        out[i] = np.uint8(min(max(v, np.float32(0.0)), np.float32(255.0)))
    return out


def face_and_lambert(normal: np.ndarray, dirs: np.ndarray, hit: np.ndarray, sun: np.ndarray) -> np.ndarray:
    return _face_and_lambert(normal, dirs, hit, sun.astype(np.float32))


def shade_codes(hit, dist, normal, pts, dirs, albedo, tex, lam, *, amb, sun_c, horizon, zenith, sun, fog_m,
                gain) -> np.ndarray:
    f32 = np.float32
    return _shade(hit, dist.astype(f32, copy=False), normal, pts, dirs, albedo, tex, lam, amb.astype(f32),
                  sun_c.astype(f32), horizon.astype(f32), zenith.astype(f32), sun.astype(f32), f32(fog_m), f32(gain))
