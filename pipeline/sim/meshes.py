"""Small triangle-mesh primitives in numpy (vertices (V,3) float32, faces (F,3) int32).

Local frame of every primitive: x forward, y left, z up; the origin at the centre of the
bottom face, so a mesh placed at (x, y, z_ground) stands on the ground.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

Mesh = tuple[np.ndarray, np.ndarray]

_BOX_FACES = np.array([
    [0, 2, 1], [0, 3, 2],        # bottom (z = 0)
    [4, 5, 6], [4, 6, 7],        # top
    [0, 1, 5], [0, 5, 4],        # y = -w/2
    [2, 3, 7], [2, 7, 6],        # y = +w/2
    [1, 2, 6], [1, 6, 5],        # x = +l/2
    [3, 0, 4], [3, 4, 7],        # x = -l/2
], np.int32)


def box(length: float, width: float, height: float, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> Mesh:
    """Axis-aligned box of the given size whose bottom-face centre sits at (x, y, z)."""
    hl, hw = length / 2, width / 2
    v = np.array([
        [-hl, -hw, 0], [hl, -hw, 0], [hl, hw, 0], [-hl, hw, 0],
        [-hl, -hw, height], [hl, -hw, height], [hl, hw, height], [-hl, hw, height],
    ], np.float32) + np.array([x, y, z], np.float32)
    return v, _BOX_FACES.copy()


def cylinder(radius: float, height: float, segments: int = 10, x: float = 0.0, y: float = 0.0,
             z: float = 0.0, axis: str = "z") -> Mesh:
    """Closed cylinder; along z (standing) or y (a wheel rolling along x)."""
    a = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    ring = np.stack([radius * np.cos(a), radius * np.sin(a)], 1)
    n = segments
    bottom = np.column_stack([ring, np.zeros(n)])
    top = np.column_stack([ring, np.full(n, height)])
    v = np.vstack([bottom, top, [[0, 0, 0], [0, 0, height]]]).astype(np.float32)
    i = np.arange(n)
    j = (i + 1) % n
    sides = np.concatenate([np.stack([i, j, j + n], 1), np.stack([i, j + n, i + n], 1)])
    caps = np.concatenate([np.stack([np.full(n, 2 * n), j, i], 1), np.stack([np.full(n, 2 * n + 1), i + n, j + n], 1)])
    f = np.concatenate([sides, caps]).astype(np.int32)
    if axis == "y":  # lay it down: its axis along y, centred on y, bottom of the wheel at z
        v = np.stack([v[:, 0], v[:, 2] - height / 2, v[:, 1] + radius], 1)
        f = f[:, ::-1]
    return v.astype(np.float32) + np.array([x, y, z], np.float32), f


@lru_cache(maxsize=4)
def _unit_sphere(subdivisions: int) -> Mesh:
    """Icosphere of radius 1 centred at the origin (computed once, on first use)."""
    t = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t],
                  [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], np.float64)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
                  [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
                  [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]], np.int64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for _ in range(subdivisions):
        edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        uniq, inv = np.unique(edges, axis=0, return_inverse=True)
        mid = v[uniq[:, 0]] + v[uniq[:, 1]]
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        m = inv.reshape(3, -1).T + len(v)   # midpoints of edges (01, 12, 20) per face
        v = np.vstack([v, mid])
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        f = np.concatenate([np.stack([a, m[:, 0], m[:, 2]], 1), np.stack([b, m[:, 1], m[:, 0]], 1),
                            np.stack([c, m[:, 2], m[:, 1]], 1), np.stack([m[:, 0], m[:, 1], m[:, 2]], 1)])
    return v.astype(np.float32), f.astype(np.int32)


def ellipsoid(rx: float, ry: float, rz: float, x: float = 0.0, y: float = 0.0, z: float = 0.0,
              subdivisions: int = 1) -> Mesh:
    """Ellipsoid whose bottom touches z (its centre at z + rz)."""
    v, f = _unit_sphere(subdivisions)
    v = v * np.array([rx, ry, rz], np.float32) + np.array([x, y, z + rz], np.float32)
    return v, f.copy()


def merge(parts: list[Mesh]) -> Mesh:
    verts, faces, offset = [], [], 0
    for v, f in parts:
        verts.append(v)
        faces.append(f + offset)
        offset += len(v)
    return np.concatenate(verts).astype(np.float32), np.concatenate(faces).astype(np.int32)


def rotate_z(mesh: Mesh, yaw: float) -> Mesh:
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float32)
    return mesh[0] @ R.T, mesh[1]
