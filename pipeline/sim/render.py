"""Ray-cast rendering of a World with Open3D's RaycastingScene: one camera and one spinning
LiDAR see exactly the same geometry, so their ground truth agrees by construction.

The static world is one BVH built once per drive. Things (cars, pedestrians, ...) are
rebuilt into a small second BVH at each instant they are seen: once for the camera's
exposure, and once per time slice of the LiDAR sweep, so moving things move during the
sweep as the ego does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.sim.world import Agent, World

_INVALID = np.uint32(0xFFFFFFFF)


@dataclass
class CameraSpec:
    width: int
    height: int
    K: np.ndarray                  # (3, 3)
    T_base_from_cam: np.ndarray    # (4, 4), optical frame (x right, y down, z forward)


@dataclass
class LidarSpec:
    T_base_from_lidar: np.ndarray  # (4, 4), x forward, y left, z up
    elevation_deg: np.ndarray      # (B,) beam elevations, top beam first
    azimuth_steps: int = 2000      # firings per revolution
    period_ns: int = 100_000_000   # 10 Hz
    max_range_m: float = 120.0
    min_range_m: float = 1.0
    range_noise_m: float = 0.02
    dropout: float = 0.015         # base probability of a missing return
    time_slices: int = 20          # things are re-posed this many times per sweep

    @property
    def num_rays(self) -> int:
        return self.azimuth_steps * len(self.elevation_deg)


@dataclass
class Lighting:
    sun_dir_world: np.ndarray      # (3,) unit vector towards the sun
    sun_bgr: np.ndarray            # (3,)
    ambient_bgr: np.ndarray        # (3,)
    sky_horizon_bgr: np.ndarray
    sky_zenith_bgr: np.ndarray
    fog_m: float
    exposure: float
    noise_dn: float
    shadows: bool = True

    @staticmethod
    def random(rng: np.random.Generator) -> "Lighting":
        elev = np.radians(rng.uniform(12, 70))
        azim = rng.uniform(-np.pi, np.pi)
        sun = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])
        mood = rng.choice(["clear", "overcast", "evening"], p=[0.5, 0.3, 0.2])
        if mood == "clear":
            sun_c, amb = np.array([0.95, 1.0, 1.0]) * rng.uniform(0.9, 1.2), np.array([0.42, 0.38, 0.34])
            horizon, zenith = np.array([0.92, 0.85, 0.78]), np.array([0.85, 0.55, 0.3])
        elif mood == "overcast":
            sun_c, amb = np.array([0.8, 0.8, 0.8]) * rng.uniform(0.25, 0.5), np.array([0.6, 0.6, 0.6])
            horizon, zenith = np.array([0.85, 0.85, 0.85]), np.array([0.7, 0.68, 0.66])
        else:
            sun_c, amb = np.array([0.55, 0.8, 1.05]) * rng.uniform(0.8, 1.1), np.array([0.4, 0.33, 0.32])
            horizon, zenith = np.array([0.55, 0.7, 0.95]), np.array([0.6, 0.4, 0.3])
        return Lighting(sun, sun_c, amb * rng.uniform(0.8, 1.2), horizon, zenith, fog_m=float(rng.uniform(250, 900)),
                        exposure=float(rng.uniform(0.8, 1.25)), noise_dn=float(rng.uniform(1.0, 4.0)),
                        shadows=mood != "overcast")


@dataclass
class CameraRender:
    image: np.ndarray      # (H, W, 3) uint8 BGR
    semantic: np.ndarray   # (H, W) uint8
    instance: np.ndarray   # (H, W) uint16
    depth_m: np.ndarray    # (H, W) float32 z in the optical frame, inf where sky


@dataclass
class LidarRender:
    points: np.ndarray         # (N, 4) float32 x, y, z, intensity in the LiDAR frame at each point's time
    t_offset_ns: np.ndarray    # (N,) int64 after the sweep start
    point_class: np.ndarray    # (N,) uint8
    point_instance: np.ndarray  # (N,) uint16


@dataclass
class _Hits:
    t: np.ndarray            # (R,) float32 distance along the unit ray, inf on a miss
    dynamic: np.ndarray      # (R,) bool: the hit is a thing
    prim: np.ndarray         # (R,) int64 triangle index (static mesh or things' concatenated mesh)
    uv: np.ndarray           # (R, 2) barycentric coordinates
    normal: np.ndarray       # (R, 3) world normal of the hit triangle


class _Things:
    """The agents' meshes concatenated once; posed at any time into one small BVH."""

    def __init__(self, world: World):
        agents = world.agents
        self.agents = agents
        self.class_ids = np.array([world.taxonomy.id(a.class_name) for a in agents], np.uint8)
        self.instance_ids = np.array([a.instance_id for a in agents], np.uint16)
        self.reflect = np.array([a.reflectivity for a in agents], np.float32)
        self.v_start = np.cumsum([0] + [len(a.mesh[0]) for a in agents])
        self.f_start = np.cumsum([0] + [len(a.mesh[1]) for a in agents])
        self.vertices = np.concatenate([a.mesh[0] for a in agents]).astype(np.float32) if agents else np.zeros((0, 3), np.float32)
        self.faces = np.concatenate([a.mesh[1] + self.v_start[i] for i, a in enumerate(agents)]) if agents else np.zeros((0, 3), np.int32)
        self.tri_color = np.concatenate([a.tri_color for a in agents]).astype(np.float32) if agents else np.zeros((0, 3), np.float32)
        self.tri_agent = np.repeat(np.arange(len(agents)), np.diff(self.f_start))
        self.v_agent = np.repeat(np.arange(len(agents)), np.diff(self.v_start))

    def near(self, world: World, t_s: float, ego_s: float, radius_m: float) -> np.ndarray:
        s = np.array([a.s_at(t_s) for a in self.agents])
        return np.flatnonzero(np.abs(s - ego_s) < radius_m) if len(s) else np.zeros(0, int)

    def subset(self, idx: np.ndarray) -> "_ThingSubset":
        return _ThingSubset(self, idx)


class _ThingSubset:
    def __init__(self, things: _Things, idx: np.ndarray):
        self.things = things
        self.agent_idx = idx
        vsel = np.concatenate([np.arange(things.v_start[i], things.v_start[i + 1]) for i in idx]) if len(idx) else np.zeros(0, int)
        fsel = np.concatenate([np.arange(things.f_start[i], things.f_start[i + 1]) for i in idx]) if len(idx) else np.zeros(0, int)
        remap = np.full(len(things.vertices), -1, np.int64)
        remap[vsel] = np.arange(len(vsel))
        self.vertices = things.vertices[vsel]
        self.local_agent = np.searchsorted(idx, things.v_agent[vsel])   # position of each vertex's agent in idx
        self.faces = remap[things.faces[fsel]].astype(np.uint32)
        self.face_global = fsel            # subset triangle -> things triangle

    def agents(self) -> list[Agent]:
        return [self.things.agents[i] for i in self.agent_idx]


class Renderer:
    def __init__(self, world: World, camera: CameraSpec, lidar: LidarSpec, lighting: Lighting, *, threads: int = 0):
        import open3d as o3d

        self._o3d = o3d
        self.threads = threads           # Open3D ray-casting threads, 0: all cores
        self.world, self.camera, self.lidar, self.light = world, camera, lidar, lighting
        st = world.static
        self._static = o3d.t.geometry.RaycastingScene()
        self._static.add_triangles(o3d.core.Tensor(st.vertices), o3d.core.Tensor(st.faces.astype(np.uint32)))
        self._things = _Things(world)
        self._paint = world.road.paint_table()
        # Per-pixel unit ray directions in the camera optical frame, and their z (for depth).
        H, W = camera.height, camera.width
        u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
        Kinv = np.linalg.inv(camera.K)
        d = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3) @ Kinv.T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        self._cam_dirs = d.astype(np.float32)
        # LiDAR ray directions per (column, beam) in the LiDAR frame; column-major order.
        el = np.radians(lidar.elevation_deg)
        cols = np.arange(lidar.azimuth_steps)
        az = np.pi - 2 * np.pi * cols / lidar.azimuth_steps     # starts facing backwards, turns clockwise
        ce, se = np.cos(el), np.sin(el)
        dirs = np.stack([np.cos(az)[:, None] * ce[None, :], np.sin(az)[:, None] * ce[None, :],
                         np.broadcast_to(se, (len(cols), len(el)))], -1)
        self._lidar_dirs = dirs.reshape(-1, 3).astype(np.float32)
        self._lidar_col_t_ns = (cols * lidar.period_ns // lidar.azimuth_steps).astype(np.int64)
        # Display gamma as a table over 12-bit linear codes; sensor noise drawn once per drive.
        self._gamma_lut = ((np.arange(4096) / 4095.0) ** (1 / 2.2) * 255.0).astype(np.float32)
        bank_rng = np.random.default_rng(np.random.SeedSequence([world.seed, 0x0153]))
        self._noise_bank = bank_rng.normal(0, lighting.noise_dn, 2 * H * W * 3 + 1).astype(np.float32)

    # -- ray casting ----------------------------------------------------------------------
    def _thing_scene(self, sub: _ThingSubset, t_s: float):
        if len(sub.faces) == 0:
            return None
        R, t = self.world.agent_poses(sub.agents(), t_s)
        verts = (np.einsum("nij,nj->ni", R[sub.local_agent], sub.vertices) + t[sub.local_agent]).astype(np.float32)
        scene = self._o3d.t.geometry.RaycastingScene()
        scene.add_triangles(self._o3d.core.Tensor(verts), self._o3d.core.Tensor(sub.faces))
        return scene

    def _cast(self, scene, rays: np.ndarray):
        r = scene.cast_rays(self._o3d.core.Tensor(rays), nthreads=self.threads)
        return (r["t_hit"].numpy(), r["primitive_ids"].numpy(), r["primitive_uvs"].numpy(),
                r["primitive_normals"].numpy())

    def _cast_both(self, rays: np.ndarray, thing_scenes: list[tuple[object, slice | np.ndarray, "_ThingSubset"]]) -> _Hits:
        """Nearest hit of each ray in the static world or in the things' scene that covers it
        (each scene built from its own subset of the things)."""
        t, prim, uv, nrm = self._cast(self._static, rays)
        dynamic = np.zeros(len(rays), bool)
        prim = prim.astype(np.int64)
        for scene, sel, sub in thing_scenes:
            if scene is None or (not isinstance(sel, slice) and len(sel) == 0):
                continue
            t2, p2, uv2, n2 = self._cast(scene, rays[sel])
            closer = t2 < t[sel]
            idx = (np.flatnonzero(closer) + (sel.start or 0)) if isinstance(sel, slice) else sel[closer]
            t[idx], uv[idx], nrm[idx] = t2[closer], uv2[closer], n2[closer]
            prim[idx] = sub.face_global[p2[closer].astype(np.int64)]
            dynamic[idx] = True
        return _Hits(t, dynamic, prim, uv, nrm)

    def _labels(self, hits: _Hits) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """class ids, instance ids, albedo (BGR), reflectivity of each hit (sky: class sky;
        lane paint from the road coordinates of the hit: kernels.label_hits)."""
        from pipeline.sim.kernels import label_hits

        tax, st, th = self.world.taxonomy, self.world.static, self._things
        return label_hits(hits.t, hits.dynamic, hits.prim, hits.uv, tax.id("sky"), tax.id("road"), tax.id("lane_marking"),
                          st.tri_class, st.tri_color, st.tri_reflect, st.faces, st.vert_sd, *self._paint,
                          th.class_ids, th.instance_ids, th.reflect, th.tri_agent, th.tri_color)

    # -- camera ---------------------------------------------------------------------------
    def render_camera(self, t_s: float, T_world_from_base: np.ndarray, rng: np.random.Generator) -> CameraRender:
        from pipeline.sim.kernels import finish_image, hit_points, rotate_rays

        cam, light = self.camera, self.light
        H, W = cam.height, cam.width
        T_world_from_cam = T_world_from_base @ cam.T_base_from_cam
        R, o = T_world_from_cam[:3, :3], T_world_from_cam[:3, 3]
        rays = rotate_rays(self._cam_dirs, R.astype(np.float32), o.astype(np.float32))
        dirs_w = rays[:, 3:]
        ego_s = self.world.ego_s0_m + self.world.ego_speed_mps * t_s
        sub = self._things.subset(self._things.near(self.world, t_s, ego_s, 160.0))
        scene = self._thing_scene(sub, t_s)
        # Things can only be hit inside the image rectangles their boxes project to.
        thing_px = self._thing_pixels(sub, t_s, np.linalg.inv(T_world_from_cam)) if scene is not None else None
        hits = self._cast_both(rays, [(scene, thing_px, sub)])
        hit = np.isfinite(hits.t)
        pts = hit_points(rays, hits.t)
        cls, inst, albedo, _ = self._labels(hits)
        depth = np.where(hit, hits.t * self._cam_dirs[:, 2], np.inf).astype(np.float32)

        codes = self._shade(hits, pts, dirs_w, albedo, hit, scene)
        # display gamma through a lookup table over 12-bit codes; sensor noise from a per-drive bank
        off = int(rng.integers(0, len(self._noise_bank) - codes.size))
        image = finish_image(codes, self._gamma_lut, self._noise_bank, off).reshape(H, W, 3)
        return CameraRender(image, cls.reshape(H, W), inst.reshape(H, W), depth.reshape(H, W))

    def _thing_pixels(self, sub: "_ThingSubset", t_s: float, T_cam_from_world: np.ndarray) -> np.ndarray:
        """Indices of the pixels inside the union of the things' projected bounding rectangles:
        each agent's box (5% larger), clipped at the camera's near plane, projected."""
        cam = self.camera
        H, W = cam.height, cam.width
        agents = sub.agents()
        if not agents:
            return np.zeros(0, np.int64)
        R, t = self.world.agent_poses(agents, t_s)
        size = np.array([a.size_m for a in agents]) * 1.05
        signs = np.array([[sx, sy, sz] for sx in (-0.5, 0.5) for sy in (-0.5, 0.5) for sz in (0.0, 1.0)])
        local = signs[None, :, :] * size[:, None, :] + np.array([0, 0, -0.025])[None, None, :] * size[:, None, :]
        corners_w = np.einsum("kij,kcj->kci", R, local) + t[:, None, :]           # (K, 8, 3)
        c = corners_w @ T_cam_from_world[:3, :3].T + T_cam_from_world[:3, 3]
        near = 0.05
        # the box's 12 edges: corner pairs differing in one coordinate
        edges = [(i, j) for i in range(8) for j in range(i + 1, 8) if bin(i ^ j).count("1") == 1]
        a_, b_ = c[:, [e[0] for e in edges]], c[:, [e[1] for e in edges]]
        za, zb = a_[..., 2], b_[..., 2]
        cross = (za - near) * (zb - near) < 0
        f = np.where(cross, (near - za) / np.where(cross, zb - za, 1.0), 0.0)
        clip_pts = a_ + f[..., None] * (b_ - a_)                                      # on the near plane
        pts = np.concatenate([c, np.where(cross[..., None], clip_pts, np.nan)], axis=1)
        front = pts[..., 2] >= near - 1e-9
        z = np.where(front, pts[..., 2], np.nan)
        u = cam.K[0, 0] * pts[..., 0] / z + cam.K[0, 2]
        v = cam.K[1, 1] * pts[..., 1] / z + cam.K[1, 2]
        mask = np.zeros((H, W), bool)
        for k in np.flatnonzero(front.any(axis=1)):
            uk, vk = u[k][front[k]], v[k][front[k]]
            u0, u1 = int(max(np.floor(uk.min()) - 2, 0)), int(min(np.ceil(uk.max()) + 3, W))
            v0, v1 = int(max(np.floor(vk.min()) - 2, 0)), int(min(np.ceil(vk.max()) + 3, H))
            if u0 < u1 and v0 < v1:
                mask[v0:v1, u0:u1] = True
        return np.flatnonzero(mask.reshape(-1))

    def _shade(self, hits: _Hits, pts: np.ndarray, dirs: np.ndarray, albedo: np.ndarray, hit: np.ndarray,
               thing_scene) -> np.ndarray:
        """12-bit linear BGR codes per pixel: textured Lambert + ambient, sun shadows, haze, sky
        (numba kernels in pipeline/sim/kernels.py; the shadow rays go to Open3D)."""
        from pipeline.sim.kernels import face_and_lambert, shade_codes, shadow_rays

        light, st = self.light, self.world.static
        lam = face_and_lambert(hits.normal, dirs, hit, light.sun_dir_world)
        if light.shadows:
            li, srays = shadow_rays(pts, hits.normal, lam, light.sun_dir_world.astype(np.float32), np.float32(0.03))
            occ = self._static.test_occlusions(self._o3d.core.Tensor(srays), nthreads=self.threads).numpy()
            if thing_scene is not None:
                occ |= thing_scene.test_occlusions(self._o3d.core.Tensor(srays), nthreads=self.threads).numpy()
            lam[li[occ]] = 0
        tex = st.tri_tex[np.where(hits.dynamic | ~hit, 0, hits.prim)]
        tex[hits.dynamic] = 0
        return shade_codes(hit, hits.t, hits.normal, pts, dirs, albedo, tex, lam, amb=light.ambient_bgr,
                           sun_c=light.sun_bgr, horizon=light.sky_horizon_bgr, zenith=light.sky_zenith_bgr,
                           sun=light.sun_dir_world, fog_m=light.fog_m, gain=light.exposure * 4095.0)

    # -- LiDAR ----------------------------------------------------------------------------
    def _slices_seeing(self, idx: np.ndarray, t_s: float, T_world_from_lidar: np.ndarray,
                       margin_m: float = 2.0, margin_rad: float = np.radians(3.0)) -> np.ndarray:
        """(K, time_slices) bool: which LiDAR time slices' azimuth sectors can hit each of the
        things ``idx``. Conservative: the things' footprints grown by ``margin_m`` (their own
        motion and the ego's within a sweep) and their azimuth spans by ``margin_rad``; a thing
        close to the sensor, or around it, is in every slice. Dropping a thing from a slice
        that cannot see it leaves the hits unchanged and saves building it into that slice's BVH."""
        lid = self.lidar
        cols, n = lid.azimuth_steps, lid.time_slices
        out = np.ones((len(idx), n), bool)
        if not len(idx):
            return out
        agents = [self._things.agents[i] for i in idx]
        R, t = self.world.agent_poses(agents, t_s)
        half = np.array([a.size_m[:2] for a in agents]) / 2 + margin_m                   # (K, 2)
        signs = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float64)
        local = np.concatenate([signs[None] * half[:, None], np.zeros((len(idx), 4, 1))], -1)   # (K, 4, 3)
        corners_w = np.einsum("kij,kcj->kci", R, local) + t[:, None, :]
        T_lw = np.linalg.inv(T_world_from_lidar)
        c_l = corners_w @ T_lw[:3, :3].T + T_lw[:3, 3]
        centre = (t @ T_lw[:3, :3].T + T_lw[:3, 3])[:, :2]
        az_c = np.arctan2(centre[:, 1], centre[:, 0])
        rel = (np.arctan2(c_l[..., 1], c_l[..., 0]) - az_c[:, None] + np.pi) % (2 * np.pi) - np.pi
        lo, hi = az_c + rel.min(1) - margin_rad, az_c + rel.max(1) + margin_rad
        around = (np.linalg.norm(centre, axis=1) < np.linalg.norm(half, axis=1) + 1.0) | (hi - lo > np.pi)
        per = cols // n
        for k in np.flatnonzero(~around):
            # column of azimuth a: (pi - a) / 2pi * cols (render_lidar's az = pi - 2 pi c / cols)
            c_from = int(np.floor((np.pi - hi[k]) / (2 * np.pi) * cols))
            c_to = int(np.ceil((np.pi - lo[k]) / (2 * np.pi) * cols))
            c = np.arange(c_from, c_to + 1) % cols
            out[k] = False
            out[k, np.unique(np.minimum(c // per, n - 1))] = True
        return out

    def render_lidar(self, sweep_start_s: float, rng: np.random.Generator) -> LidarRender:
        from pipeline.sim.kernels import hit_points, lidar_rays

        lid, world = self.lidar, self.world
        cols = lid.azimuth_steps
        beams = len(lid.elevation_deg)
        t_col_s = sweep_start_s + self._lidar_col_t_ns / 1e9
        T_wb = world.ego_pose(t_col_s)                                 # (cols, 4, 4)
        T_wl = T_wb @ lid.T_base_from_lidar
        rays = lidar_rays(self._lidar_dirs, np.ascontiguousarray(T_wl[:, :3, :3], np.float32),
                          np.ascontiguousarray(T_wl[:, :3, 3], np.float32), beams)
        dirs_w = rays[:, 3:]
        mid_s = sweep_start_s + lid.period_ns / 2e9
        ego_s = world.ego_s0_m + world.ego_speed_mps * mid_s
        near = self._things.near(world, mid_s, ego_s, lid.max_range_m + 30)
        # each time slice's scene holds only the things its azimuth sector can see
        in_slice = self._slices_seeing(near, mid_s, world.ego_pose(np.array([mid_s]))[0] @ lid.T_base_from_lidar)
        per = cols // lid.time_slices
        scenes = []
        for k in range(lid.time_slices):
            idx = near[in_slice[:, k]]
            if not len(idx):
                continue
            c0, c1 = k * per, (cols if k == lid.time_slices - 1 else (k + 1) * per)
            t_mid = sweep_start_s + (c0 + c1) / 2 / cols * lid.period_ns / 1e9
            sub = self._things.subset(idx)
            scenes.append((self._thing_scene(sub, t_mid), slice(c0 * beams, c1 * beams), sub))
        hits = self._cast_both(rays, scenes)
        rng_m = hits.t + rng.normal(0, lid.range_noise_m, len(hits.t)).astype(np.float32)
        cls, inst, _, refl = self._labels(hits)
        cos_inc = np.abs(np.einsum("ij,ij->i", hits.normal, dirs_w))
        intensity = refl * (0.35 + 0.65 * cos_inc) * (1 + rng.normal(0, 0.05, len(refl)))
        p_drop = lid.dropout + 0.25 * (np.clip(rng_m, 0, None) / lid.max_range_m) ** 2 * (1 - np.clip(refl, 0, 1))
        keep = (np.isfinite(hits.t) & (rng_m > lid.min_range_m) & (rng_m < lid.max_range_m)
                & (rng.random(len(rng_m)) >= p_drop))
        pts = np.empty((int(keep.sum()), 4), np.float32)
        pts[:, :3] = self._lidar_dirs[keep] * rng_m[keep, None]
        pts[:, 3] = np.clip(intensity[keep], 0, 1)
        t_off = np.repeat(self._lidar_col_t_ns, beams)[keep]
        return LidarRender(pts, t_off, cls[keep], inst[keep])
