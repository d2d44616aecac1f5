"""Numba kernels of the camera shader: one pass per pixel instead of numpy temporaries
(compiled on first use, cached on disk). They are module-level functions: numba's disk
cache cannot find kernels defined inside a closure again, so every process recompiled
them (~1.7 s) before. This module is imported only when a camera frame is shaded."""
from __future__ import annotations

import numpy as np
from numba import njit

from pipeline.sim.world import TEX_ASPHALT, TEX_FACADE, TEX_FOLIAGE, TEX_GRASS, TEX_PAVING


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


def face_and_lambert(normal: np.ndarray, dirs: np.ndarray, hit: np.ndarray, sun: np.ndarray) -> np.ndarray:
    return _face_and_lambert(normal, dirs, hit, sun.astype(np.float32))


def shade_codes(hit, dist, normal, pts, dirs, albedo, tex, lam, *, amb, sun_c, horizon, zenith, sun, fog_m,
                gain) -> np.ndarray:
    f32 = np.float32
    return _shade(hit, dist.astype(f32, copy=False), normal, pts, dirs, albedo, tex, lam, amb.astype(f32),
                  sun_c.astype(f32), horizon.astype(f32), zenith.astype(f32), sun.astype(f32), f32(fog_m), f32(gain))
