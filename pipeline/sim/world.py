"""A procedural driving world from a seed: a curved road with lanes and paint, curbs,
sidewalks, grass, buildings, trees, poles, and moving or parked things (cars, trucks,
pedestrians, cyclists), each a distinct instance with an exact pose at any time.

Pure numpy: geometry and trajectories only. Rendering lives in ``render.py``.
World frame: x east, y north, z up, the road surface at z = 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.config import Taxonomy
from pipeline.sim import meshes
from pipeline.sim.meshes import Mesh

# Surface textures used by the shader (per triangle).
TEX_PLAIN, TEX_ASPHALT, TEX_PAVING, TEX_GRASS, TEX_FACADE, TEX_FOLIAGE, TEX_BARK = range(7)

CURB_HEIGHT_M = 0.15
DASH_LENGTH_M = 3.0
DASH_PERIOD_M = 9.0


@dataclass
class LaneBoundary:
    index: int
    d_m: float            # lateral offset from the centre line (left positive)
    type: str             # "solid" | "dashed"
    half_width_m: float   # half the paint width
    color: tuple[float, float, float]   # BGR 0..1


@dataclass
class Road:
    """Centre line sampled densely by arc length, and the cross-section."""

    s_m: np.ndarray              # (M,) arc length grid
    xy_m: np.ndarray             # (M, 2) centre line
    heading: np.ndarray          # (M,) radians, continuous
    n_lanes: int
    lane_width_m: float
    shoulder_m: float            # paved strip beyond each edge line (parking, cyclists)
    sidewalk_m: float
    boundaries: list[LaneBoundary]
    oncoming_lanes: tuple[int, ...]   # lane indices (0 = rightmost) that carry oncoming traffic

    @property
    def half_width_m(self) -> float:
        """Centre line to curb."""
        return self.n_lanes * self.lane_width_m / 2 + self.shoulder_m

    @property
    def edge_line_d_m(self) -> float:
        return self.n_lanes * self.lane_width_m / 2

    def lane_center_d(self, lane: int) -> float:
        """Lateral offset of lane `lane` (0 = rightmost, d < 0 on the right)."""
        return -self.edge_line_d_m + (lane + 0.5) * self.lane_width_m

    def frame_at(self, s_m: np.ndarray, d_m: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World (x, y, heading) of road coordinates (s, d); vectorised, linear on a 0.25 m grid."""
        s_m = np.asarray(s_m, np.float64)
        x = np.interp(s_m, self.s_m, self.xy_m[:, 0])
        y = np.interp(s_m, self.s_m, self.xy_m[:, 1])
        h = np.interp(s_m, self.s_m, self.heading)
        d_m = np.asarray(d_m, np.float64)
        return x - d_m * np.sin(h), y + d_m * np.cos(h), h

    def paint_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The lane paint as arrays for the renderer's kernel (``kernels.label_hits``): per
        boundary its offset d, half width (float32, as the paint test runs in float32), whether
        it is solid (dashed ones are painted where ``s mod DASH_PERIOD_M < DASH_LENGTH_M``) and
        its BGR colour (the last boundary covering a point gives its colour)."""
        b = self.boundaries
        return (np.array([x.d_m for x in b], np.float32), np.array([x.half_width_m for x in b], np.float32),
                np.array([x.type == "solid" for x in b], np.bool_), np.array([x.color for x in b], np.float32).reshape(-1, 3))


@dataclass
class Agent:
    """A thing with an instance id moving along the road at constant speed (or parked)."""

    instance_id: int
    class_name: str
    mesh: Mesh                   # local frame: x forward, origin at the bottom-face centre
    tri_color: np.ndarray        # (F, 3) BGR 0..1
    size_m: np.ndarray           # (3,) length, width, height of its box
    s0_m: float                  # road position at t = 0
    d_m: float
    speed_mps: float             # along +s (negative: towards -s)
    z_m: float                   # ground height it stands on
    yaw_offset: float = 0.0      # added to the road heading (pi for oncoming, anything if parked)
    reflectivity: float = 0.4

    def s_at(self, t_s: np.ndarray | float) -> np.ndarray:
        return self.s0_m + self.speed_mps * np.asarray(t_s, np.float64)


@dataclass
class StaticScene:
    vertices: np.ndarray         # (V, 3) float32 world
    faces: np.ndarray            # (F, 3) int32
    tri_class: np.ndarray        # (F,) uint8
    tri_color: np.ndarray        # (F, 3) float32 BGR 0..1
    tri_reflect: np.ndarray      # (F,) float32 LiDAR reflectivity
    tri_tex: np.ndarray          # (F,) uint8 texture kind
    vert_sd: np.ndarray          # (V, 2) float32 road coordinates (s, d) of road vertices


@dataclass
class World:
    seed: int
    road: Road
    static: StaticScene
    agents: list[Agent]
    ego_lane: int
    ego_s0_m: float
    ego_speed_mps: float
    taxonomy: Taxonomy
    stats: dict = field(default_factory=dict)

    @property
    def ego_d_m(self) -> float:
        return self.road.lane_center_d(self.ego_lane)

    def ego_pose(self, t_s: np.ndarray) -> np.ndarray:
        """(K, 4, 4) T_world_from_base at times t_s (seconds since the drive's start)."""
        t_s = np.atleast_1d(np.asarray(t_s, np.float64))
        x, y, h = self.road.frame_at(self.ego_s0_m + self.ego_speed_mps * t_s, self.ego_d_m)
        return _poses_from_xyh(x, y, h, 0.0)

    def agent_poses(self, agents: list[Agent], t_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(K, 3, 3) rotations and (K, 3) translations of the given agents at time t_s."""
        if not agents:
            return np.zeros((0, 3, 3)), np.zeros((0, 3))
        s = np.array([a.s_at(t_s) for a in agents])
        d = np.array([a.d_m for a in agents])
        x, y, h = self.road.frame_at(s, d)
        yaw = h + np.array([a.yaw_offset for a in agents])
        T = _poses_from_xyh(x, y, yaw, np.array([a.z_m for a in agents]))
        return T[:, :3, :3], T[:, :3, 3]


def _poses_from_xyh(x, y, h, z) -> np.ndarray:
    x, y, h = np.broadcast_arrays(np.atleast_1d(x), np.atleast_1d(y), np.atleast_1d(h))
    T = np.zeros((len(x), 4, 4))
    c, s = np.cos(h), np.sin(h)
    T[:, 0, 0], T[:, 0, 1], T[:, 1, 0], T[:, 1, 1] = c, -s, s, c
    T[:, 2, 2] = T[:, 3, 3] = 1.0
    T[:, 0, 3], T[:, 1, 3], T[:, 2, 3] = x, y, z
    return T


# ------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------

def build_world(seed: int, duration_s: float, taxonomy: Taxonomy, *, ego_speed_mps: float | None = None) -> World:
    """Generate the world for a drive of `duration_s` seconds. Same seed, same world."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    ego_speed = float(ego_speed_mps if ego_speed_mps is not None else rng.uniform(8.5, 11.5))
    ego_s0 = 150.0
    length = ego_s0 + ego_speed * duration_s + 260.0
    road = _make_road(rng, length)
    same_dir = [i for i in range(road.n_lanes) if i not in road.oncoming_lanes]
    ego_lane = int(rng.choice(same_dir))
    builder = _StaticBuilder(taxonomy)
    _add_road_surfaces(builder, road, length)
    _add_roadside(builder, rng, road, length)
    agents = _make_agents(rng, road, taxonomy, ego_lane, ego_s0, ego_speed, duration_s, length)
    static = builder.finish()
    world = World(seed, road, static, agents, ego_lane, ego_s0, ego_speed, taxonomy)
    world.stats = {"road_length_m": round(length, 1), "lanes": road.n_lanes, "lane_width_m": round(road.lane_width_m, 2),
                   "static_triangles": int(len(static.faces)), "agents": len(agents),
                   "ego_speed_mps": round(ego_speed, 2), "ego_lane": ego_lane}
    return world


def _make_road(rng: np.random.Generator, length: float) -> Road:
    ds = 0.25
    s = np.arange(0.0, length + ds, ds)
    # Curvature: straights and smooth curves (radius >= 120 m), as a sum of smooth bumps.
    kappa = np.zeros_like(s)
    pos = rng.uniform(40, 120)
    while pos < length:
        span = rng.uniform(40, 140)
        k = rng.choice([-1, 1]) * rng.uniform(1 / 600, 1 / 120)
        w = np.clip((s - pos) / span, 0, 1)
        kappa += k * np.sin(np.pi * w) ** 2
        pos += span + rng.uniform(20, 150)
    heading = rng.uniform(-np.pi, np.pi) + np.concatenate([[0], np.cumsum((kappa[1:] + kappa[:-1]) / 2 * ds)])
    mid = (heading[1:] + heading[:-1]) / 2
    xy = np.zeros((len(s), 2))
    xy[1:, 0] = np.cumsum(np.cos(mid) * ds)
    xy[1:, 1] = np.cumsum(np.sin(mid) * ds)

    n_lanes = int(rng.choice([2, 3, 4], p=[0.4, 0.3, 0.3]))
    lane_w = float(rng.uniform(3.2, 3.7))
    shoulder = float(rng.uniform(2.2, 2.8))
    sidewalk = float(rng.uniform(2.5, 3.8))
    # Right-hand traffic: the leftmost lane(s) are oncoming (two-way road).
    n_oncoming = {2: 1, 3: 1, 4: 2}[n_lanes]
    oncoming = tuple(range(n_lanes - n_oncoming, n_lanes))
    white = (0.92, 0.93, 0.93)
    yellow = (0.15, 0.75, 0.9)
    centre_color = yellow if rng.random() < 0.5 else white
    boundaries = []
    edge = n_lanes * lane_w / 2
    for k in range(n_lanes + 1):
        d = -edge + k * lane_w
        if k in (0, n_lanes):
            boundaries.append(LaneBoundary(k, d, "solid", 0.1, white))
        elif k == n_lanes - n_oncoming:   # between the two directions
            boundaries.append(LaneBoundary(k, d, "solid", 0.08, centre_color))
        else:
            boundaries.append(LaneBoundary(k, d, "dashed", 0.075, white))
    return Road(s, xy, heading, n_lanes, lane_w, shoulder, sidewalk, boundaries, oncoming)


class _StaticBuilder:
    def __init__(self, taxonomy: Taxonomy):
        self.tax = taxonomy
        self.parts: list[tuple[np.ndarray, np.ndarray, int, np.ndarray, float, int, np.ndarray | None]] = []

    def add(self, mesh: Mesh, class_name: str, color, reflect: float, tex: int = TEX_PLAIN,
            vert_sd: np.ndarray | None = None) -> None:
        v, f = mesh
        self.parts.append((v, f, self.tax.id(class_name), np.asarray(color, np.float32), reflect, tex, vert_sd))

    def add_placed(self, mesh: Mesh, x: float, y: float, z: float, yaw: float, *args, **kwargs) -> None:
        v, f = meshes.rotate_z(mesh, yaw)
        self.add((v + np.array([x, y, z], np.float32), f), *args, **kwargs)

    def finish(self) -> StaticScene:
        verts, faces, cls, col, refl, tex, sd = [], [], [], [], [], [], []
        offset = 0
        for v, f, c, color, r, t, vsd in self.parts:
            verts.append(v)
            faces.append(f + offset)
            offset += len(v)
            n = len(f)
            cls.append(np.full(n, c, np.uint8))
            col.append(np.broadcast_to(color, (n, 3)) if color.ndim == 1 else color)
            refl.append(np.full(n, r, np.float32))
            tex.append(np.full(n, t, np.uint8))
            sd.append(vsd if vsd is not None else np.zeros((len(v), 2), np.float32))
        return StaticScene(np.concatenate(verts).astype(np.float32), np.concatenate(faces).astype(np.int32),
                           np.concatenate(cls), np.concatenate(col).astype(np.float32),
                           np.concatenate(refl), np.concatenate(tex), np.concatenate(sd).astype(np.float32))


def _ribbon(road: Road, s: np.ndarray, d0: float, d1: float, z0: float, z1: float,
            max_width_m: float = 2.0) -> tuple[Mesh, np.ndarray]:
    """A strip between lateral offsets d0 and d1 (heights z0, z1), sampled at s; returns mesh, vertex (s, d).
    Wide strips are split into sub-strips at most ``max_width_m`` wide: long thin triangles make
    poor bounding boxes for the ray-casting BVH."""
    pieces = int(np.ceil(abs(d1 - d0) / max_width_m))
    if pieces > 1 and z0 == z1:
        edges = np.linspace(d0, d1, pieces + 1)
        parts = [_ribbon(road, s, a, b, z0, z1, max_width_m) for a, b in zip(edges[:-1], edges[1:])]
        verts, faces, sds, offset = [], [], [], 0
        for (v, f), sd in parts:
            verts.append(v)
            faces.append(f + offset)
            sds.append(sd)
            offset += len(v)
        return (np.concatenate(verts), np.concatenate(faces)), np.concatenate(sds)
    x0, y0, _ = road.frame_at(s, d0)
    x1, y1, _ = road.frame_at(s, d1)
    n = len(s)
    v = np.empty((2 * n, 3), np.float32)
    v[0::2] = np.column_stack([x0, y0, np.full(n, z0)])
    v[1::2] = np.column_stack([x1, y1, np.full(n, z1)])
    i = np.arange(n - 1) * 2
    f = np.concatenate([np.stack([i, i + 1, i + 3], 1), np.stack([i, i + 3, i + 2], 1)]).astype(np.int32)
    if d1 < d0:
        f = f[:, ::-1]
    sd = np.empty((2 * n, 2), np.float32)
    sd[0::2, 0] = sd[1::2, 0] = s
    sd[0::2, 1], sd[1::2, 1] = d0, d1
    return (v, f), sd


def _add_road_surfaces(b: _StaticBuilder, road: Road, length: float) -> None:
    s = np.arange(0.0, length, 1.0)
    hw = road.half_width_m
    mesh, sd = _ribbon(road, s, -hw, hw, 0.0, 0.0)
    b.add(mesh, "road", (0.33, 0.33, 0.34), 0.12, TEX_ASPHALT, sd)
    walk = road.sidewalk_m
    for side in (-1, 1):
        # curb face (vertical), sidewalk top, grass beyond
        d_curb = side * hw
        curb, _ = _ribbon(road, s, d_curb, d_curb, 0.0, CURB_HEIGHT_M)
        if side < 0:
            curb = (curb[0], curb[1][:, ::-1])
        b.add(curb, "sidewalk", (0.62, 0.62, 0.6), 0.25, TEX_PLAIN)
        lo, hi = sorted([d_curb, side * (hw + walk)])
        mesh, _ = _ribbon(road, s, lo, hi, CURB_HEIGHT_M, CURB_HEIGHT_M)
        b.add(mesh, "sidewalk", (0.66, 0.68, 0.7), 0.22, TEX_PAVING)
        lo, hi = sorted([side * (hw + walk), side * (hw + walk + 30.0)])
        mesh, _ = _ribbon(road, s, lo, hi, CURB_HEIGHT_M, CURB_HEIGHT_M)
        b.add(mesh, "vegetation", (0.22, 0.5, 0.36), 0.45, TEX_GRASS)


_FACADES = [(0.62, 0.72, 0.80), (0.55, 0.55, 0.58), (0.35, 0.42, 0.62), (0.72, 0.78, 0.82),
            (0.45, 0.52, 0.55), (0.30, 0.32, 0.45), (0.78, 0.76, 0.70)]


def _add_roadside(b: _StaticBuilder, rng: np.random.Generator, road: Road, length: float) -> None:
    hw, walk = road.half_width_m, road.sidewalk_m
    outer = hw + walk
    for side in (-1, 1):
        s = rng.uniform(0, 20)
        urban = rng.random() < 0.6
        switch_at = s + rng.uniform(40, 120)
        while s < length - 5:
            if s > switch_at:
                urban = not urban
                switch_at = s + rng.uniform(40, 120)
            if urban:
                blen = rng.uniform(8, 25)
                depth = rng.uniform(8, 15)
                height = rng.uniform(5, 24)
                setback = rng.uniform(0.5, 6)
                sc = s + blen / 2
                x, y, h = road.frame_at(sc, side * (outer + setback + depth / 2))
                b.add_placed(meshes.box(blen, depth, height), float(x), float(y), CURB_HEIGHT_M, float(h),
                             "building", _FACADES[rng.integers(len(_FACADES))], 0.3, TEX_FACADE)
                s += blen + rng.uniform(1.5, 12)
            else:
                # trees and bushes on the grass
                d = side * (outer + rng.uniform(1.0, 14.0))
                x, y, h = road.frame_at(s, d)
                if rng.random() < 0.7:
                    _add_tree(b, rng, float(x), float(y))
                else:
                    r = rng.uniform(0.5, 1.3)
                    b.add(meshes.ellipsoid(r * 1.3, r, r * 0.8, float(x), float(y), CURB_HEIGHT_M),
                          "vegetation", (0.18, 0.42, 0.25), 0.5, TEX_FOLIAGE)
                s += rng.uniform(4, 12)
        # street trees on the sidewalk's outer edge, now and then, and poles by the curb
        s = rng.uniform(5, 30)
        while s < length - 5:
            if rng.random() < 0.35:
                x, y, _ = road.frame_at(s, side * (outer - 0.6))
                _add_tree(b, rng, float(x), float(y), small=True)
            s += rng.uniform(12, 30)
        s = rng.uniform(5, 25)
        while s < length - 5:
            x, y, h = road.frame_at(s, side * (hw + 0.45))
            _add_pole(b, rng, float(x), float(y), float(h), side)
            s += rng.uniform(18, 40)


def _add_tree(b: _StaticBuilder, rng: np.random.Generator, x: float, y: float, small: bool = False) -> None:
    trunk_h = rng.uniform(1.6, 3.0) if not small else rng.uniform(1.8, 2.4)
    r = rng.uniform(1.6, 3.2) if not small else rng.uniform(1.0, 1.8)
    b.add(meshes.cylinder(rng.uniform(0.12, 0.25), trunk_h + r * 0.5, 8, x, y, CURB_HEIGHT_M),
          "vegetation", (0.16, 0.25, 0.33), 0.35, TEX_BARK)
    b.add(meshes.ellipsoid(r, r * rng.uniform(0.8, 1.1), r * rng.uniform(0.9, 1.4), x, y, CURB_HEIGHT_M + trunk_h),
          "vegetation", (0.15 + rng.uniform(0, 0.1), 0.45 + rng.uniform(0, 0.15), 0.25), 0.5, TEX_FOLIAGE)


def _add_pole(b: _StaticBuilder, rng: np.random.Generator, x: float, y: float, heading: float, side: int) -> None:
    height = rng.uniform(4.5, 8.0)
    radius = rng.uniform(0.08, 0.14)
    grey = (0.5, 0.5, 0.52)
    parts = [meshes.cylinder(radius, height, 8)]
    kind = rng.random()
    if kind < 0.5:    # street lamp: an arm over the road
        arm = rng.uniform(1.2, 2.5)
        parts.append(meshes.box(0.12, arm, 0.12, 0, -side * arm / 2, height - 0.3))
    elif kind < 0.8:  # traffic sign plate at 2.3 m, facing the traffic
        parts.append(meshes.box(0.04, 0.7, 0.7, 0, 0, 2.3))
    b.add_placed(meshes.merge(parts), x, y, CURB_HEIGHT_M, heading, "pole", grey, 0.55, TEX_PLAIN)


_CAR_PAINT = [(0.92, 0.92, 0.92), (0.08, 0.08, 0.09), (0.5, 0.5, 0.52), (0.72, 0.74, 0.75),
              (0.1, 0.1, 0.7), (0.6, 0.25, 0.1), (0.2, 0.45, 0.2), (0.15, 0.55, 0.85)]
_GLASS = (0.18, 0.16, 0.15)
_TIRE = (0.05, 0.05, 0.05)


def _colored(parts: list[tuple[Mesh, tuple]]) -> tuple[Mesh, np.ndarray]:
    mesh = meshes.merge([m for m, _ in parts])
    colors = np.concatenate([np.tile(np.asarray(c, np.float32), (len(m[1]), 1)) for m, c in parts])
    return mesh, colors


def car_mesh(rng: np.random.Generator) -> tuple[Mesh, np.ndarray, np.ndarray]:
    length, width = rng.uniform(3.9, 4.9), rng.uniform(1.70, 1.90)
    body_top = rng.uniform(0.95, 1.05)
    height = body_top + rng.uniform(0.45, 0.6)
    paint = _CAR_PAINT[rng.integers(len(_CAR_PAINT))]
    cabin_l = length * rng.uniform(0.48, 0.58)
    parts = [
        (meshes.box(length, width, body_top - 0.3, 0, 0, 0.3), paint),
        (meshes.box(cabin_l, width * 0.86, height - body_top, -length * 0.05, 0, body_top), _GLASS),
    ]
    for fx in (-1, 1):
        for fy in (-1, 1):
            parts.append((meshes.cylinder(0.32, 0.22, 10, fx * length * 0.32, fy * (width / 2 - 0.11), 0, axis="y"), _TIRE))
    mesh, colors = _colored(parts)
    return mesh, colors, np.array([length, width, height])


def truck_mesh(rng: np.random.Generator) -> tuple[Mesh, np.ndarray, np.ndarray]:
    length, width, height = rng.uniform(6.5, 10.0), rng.uniform(2.3, 2.5), rng.uniform(3.0, 3.8)
    cab_l = 2.2
    cargo = [(0.85, 0.85, 0.85), (0.2, 0.3, 0.6), (0.15, 0.5, 0.7), (0.3, 0.3, 0.3)][rng.integers(4)]
    cab = _CAR_PAINT[rng.integers(len(_CAR_PAINT))]
    parts = [
        (meshes.box(length - cab_l - 0.2, width, height - 0.9, -(cab_l + 0.2) / 2, 0, 0.9), cargo),
        (meshes.box(cab_l, width * 0.96, height * 0.8 - 0.5, length / 2 - cab_l / 2, 0, 0.5), cab),
        (meshes.box(0.05, width * 0.8, 0.7, length / 2 - 0.02, 0, height * 0.8 - 1.1), _GLASS),
    ]
    for fx in (-0.38, 0.38 - 2.2 / length, 0.3):
        for fy in (-1, 1):
            parts.append((meshes.cylinder(0.5, 0.3, 10, fx * length, fy * (width / 2 - 0.15), 0, axis="y"), _TIRE))
    mesh, colors = _colored(parts)
    return mesh, colors, np.array([length, width, height])


def pedestrian_mesh(rng: np.random.Generator) -> tuple[Mesh, np.ndarray, np.ndarray]:
    h = rng.uniform(1.55, 1.92)
    shirt = tuple(rng.uniform(0.1, 0.9, 3))
    trousers = tuple(rng.uniform(0.05, 0.4, 3))
    skin = [(0.55, 0.65, 0.85), (0.35, 0.45, 0.65), (0.2, 0.28, 0.4)][rng.integers(3)]
    leg_h = 0.47 * h
    torso_h = 0.33 * h
    head = 0.12 * h
    parts = [
        (meshes.box(0.2, 0.14, leg_h, 0, 0.1, 0), trousers),
        (meshes.box(0.2, 0.14, leg_h, 0, -0.1, 0), trousers),
        (meshes.box(0.26, 0.44, torso_h, 0, 0, leg_h), shirt),
        (meshes.ellipsoid(head * 0.75, head * 0.7, head, 0, 0, leg_h + torso_h + 0.01), skin),
    ]
    mesh, colors = _colored(parts)
    return mesh, colors, np.array([0.4, 0.5, leg_h + torso_h + 0.01 + 2 * head])


def cyclist_mesh(rng: np.random.Generator) -> tuple[Mesh, np.ndarray, np.ndarray]:
    frame_c = tuple(rng.uniform(0.1, 0.9, 3))
    shirt = tuple(rng.uniform(0.1, 0.9, 3))
    r_wheel = 0.34
    parts = [
        (meshes.cylinder(r_wheel, 0.05, 12, 0.55, 0, 0, axis="y"), _TIRE),
        (meshes.cylinder(r_wheel, 0.05, 12, -0.55, 0, 0, axis="y"), _TIRE),
        (meshes.box(1.0, 0.06, 0.08, 0, 0, 0.55), frame_c),
        (meshes.box(0.08, 0.06, 0.45, 0.1, 0, 0.55), frame_c),
        (meshes.box(0.06, 0.55, 0.05, 0.45, 0, 1.0), frame_c),            # handlebar
        (meshes.box(0.18, 0.14, 0.4, -0.1, 0.12, 0.6), (0.2, 0.2, 0.25)),  # legs
        (meshes.box(0.18, 0.14, 0.4, -0.1, -0.12, 0.6), (0.2, 0.2, 0.25)),
        (meshes.box(0.3, 0.4, 0.6, 0.0, 0, 1.0), shirt),                   # torso, leaning
        (meshes.ellipsoid(0.13, 0.12, 0.15, 0.1, 0, 1.6), (0.2, 0.2, 0.2)),  # helmet
    ]
    mesh, colors = _colored(parts)
    return mesh, colors, np.array([1.78, 0.6, 1.9])


_MESHERS = {"car": car_mesh, "truck": truck_mesh, "pedestrian": pedestrian_mesh, "cyclist": cyclist_mesh}
_REFLECT = {"car": 0.45, "truck": 0.4, "pedestrian": 0.3, "cyclist": 0.35}


def _make_agents(rng: np.random.Generator, road: Road, taxonomy: Taxonomy, ego_lane: int, ego_s0: float,
                 ego_speed: float, duration_s: float, length: float) -> list[Agent]:
    agents: list[Agent] = []
    hw, walk = road.half_width_m, road.sidewalk_m
    s_lo, s_hi = 10.0, length - 10.0
    ego_end = ego_s0 + ego_speed * duration_s

    def new(cls: str, s0: float, d: float, speed: float, z: float, yaw_offset: float) -> None:
        mesh, colors, size = _MESHERS[cls](rng)
        agents.append(Agent(len(agents) + 1, cls, mesh, colors, size, s0, d, speed, z, yaw_offset, _REFLECT[cls]))

    # Moving traffic, lane by lane; one speed per lane so vehicles in a lane never collide.
    for lane in range(road.n_lanes):
        oncoming = lane in road.oncoming_lanes
        d = road.lane_center_d(lane)
        if lane == ego_lane:
            speed = ego_speed          # a lead vehicle (and one behind) keeping their gap
            positions = [ego_s0 + rng.uniform(14, 35), ego_s0 + rng.uniform(60, 90), ego_s0 - rng.uniform(18, 30)]
        else:
            speed = rng.uniform(6, 14) * (-1 if oncoming else 1)
            # spread along the stretch the ego will see during the drive
            span_lo = min(ego_s0, ego_s0 - speed * duration_s) - 40
            span_hi = max(ego_end, ego_end - speed * duration_s) + 130
            positions = list(np.arange(span_lo + rng.uniform(0, 20), span_hi, rng.uniform(22, 45)))
        for s0 in positions:
            if not s_lo < s0 < s_hi:
                continue
            cls = "truck" if rng.random() < 0.15 else "car"
            new(cls, float(s0), d, float(speed), 0.0, np.pi if oncoming else 0.0)

    # Cyclists in the right shoulder, riding with traffic; guaranteed one ahead of the ego.
    d_cyc = -(road.edge_line_d_m + 0.9)
    cyc_speed = float(rng.uniform(4, 6))
    cyc_intervals = []
    for s0 in [ego_s0 + rng.uniform(22, 35)] + list(ego_s0 + rng.uniform(60, 200, size=int(rng.integers(0, 3)))):
        new("cyclist", float(s0), d_cyc, cyc_speed, 0.0, 0.0)
        cyc_intervals.append((s0 - 4, s0 + cyc_speed * duration_s + 4))

    # Parked cars and trucks in both shoulders, never where a cyclist rides.
    for side in (-1, 1):
        d = side * (road.edge_line_d_m + road.shoulder_m / 2)
        s = ego_s0 - 40 + rng.uniform(0, 15)
        while s < ego_end + 150:
            cls = "truck" if rng.random() < 0.12 else "car"
            gap = rng.uniform(1.0, 25.0)
            blocked = side < 0 and any(lo - 10 < s < hi + 10 for lo, hi in cyc_intervals)
            if not blocked and rng.random() < 0.55:
                new(cls, float(s), d, 0.0, 0.0, float(rng.normal(0, 0.04) + (np.pi if rng.random() < 0.3 else 0.0)))
                s += agents[-1].size_m[0]
            s += gap
    # Guarantee a truck early in the drive (parked on the left, or oncoming).
    if not any(a.class_name == "truck" and abs(a.s_at(0) - ego_s0 - 40) < 40 for a in agents):
        lane = road.oncoming_lanes[0]
        new("truck", ego_s0 + rng.uniform(60, 80), road.lane_center_d(lane), -8.0, 0.0, np.pi)

    # Pedestrians on the sidewalks: four lateral slots per side, one speed per slot.
    for side in (-1, 1):
        for slot in range(4):
            d = side * (hw + walk * (0.2 + 0.2 * slot))
            speed = 0.0 if slot == 3 else rng.uniform(0.9, 1.6) * rng.choice([-1, 1])
            count = int(rng.integers(1, 4))
            starts = ego_s0 + rng.uniform(-10, ego_end - ego_s0 + 90, size=count)
            if side < 0 and slot == 0:
                starts = np.append(starts, ego_s0 + rng.uniform(12, 30))   # one early, on the right
            for s0 in np.sort(starts):
                if speed == 0.0:
                    yaw = rng.uniform(-np.pi, np.pi)
                else:
                    yaw = 0.0 if speed > 0 else np.pi
                new("pedestrian", float(s0), d, float(speed), CURB_HEIGHT_M, float(yaw))
    # Drop pedestrians that overlap an earlier one in the same slot (same speed, so it lasts).
    kept: list[Agent] = []
    for a in agents:
        if a.class_name == "pedestrian" and any(
                b.class_name == "pedestrian" and b.d_m == a.d_m and abs(b.s0_m - a.s0_m) < 1.2 for b in kept):
            continue
        kept.append(a)
    for i, a in enumerate(kept):
        a.instance_id = i + 1
    return kept
