"""Drives from the synthetic world: frames with exact ground truth, from a seed.

Timing, as on KITTI: the LiDAR sweep of frame k starts at ``T0 + k * period`` facing
backwards and turns clockwise; the camera is exposed when the LiDAR faces forward,
half a sweep later. The ego moves during the sweep; each point is measured in the LiDAR
frame at its own time (``t_offset_ns`` after the sweep start).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pipeline.config import Taxonomy, load_taxonomy
from pipeline.drive.types import DriveCalib, DriveFrame, DriveMeta
from pipeline.sim.render import CameraSpec, LidarSpec, Lighting, Renderer
from pipeline.sim.world import World, build_world
from pipeline.types import Box3D, CameraFrame, LaneBoundaryGT, LidarSweep

T0_NS = 1_735_689_600_000_000_000          # 2025-01-01T00:00:00Z, start of every synthetic drive
POSE_PERIOD_NS = 10_000_000                # ego poses at 100 Hz
CAMERA_ID = "camera_front"
LIDAR_ID = "lidar_top"


@dataclass
class SimConfig:
    """The sensor rig and rates of a synthetic drive (KITTI-like by default)."""

    width: int = 1242
    height: int = 375
    fx: float = 721.5
    fy: float = 721.5
    cx: float = 609.6
    cy: float = 172.9
    camera_xyz_m: tuple[float, float, float] = (1.27, 0.06, 1.65)   # in base_link
    lidar_xyz_m: tuple[float, float, float] = (1.0, 0.0, 1.73)
    mount_jitter_deg: float = 0.6      # per-drive random rotation of each mount
    beams: int = 64
    elevation_top_deg: float = 2.0
    elevation_bottom_deg: float = -24.9
    azimuth_steps: int = 2000
    rate_hz: float = 10.0
    max_range_m: float = 120.0
    ego_speed_mps: float | None = None  # None: drawn per drive around 10 m/s

    def scaled(self, factor: float) -> "SimConfig":
        """The same rig with a camera `factor` times smaller (fast tests and training)."""
        from dataclasses import replace
        return replace(self, width=int(round(self.width * factor)), height=int(round(self.height * factor)),
                       fx=self.fx * factor, fy=self.fy * factor, cx=(self.cx + 0.5) * factor - 0.5,
                       cy=(self.cy + 0.5) * factor - 0.5)


@dataclass
class SimFrame:
    """A drive frame plus what only the simulator knows (for tests and evaluation)."""

    frame: DriveFrame
    camera_depth_m: np.ndarray     # (H, W) float32 optical-frame depth, inf for sky


def _rot(roll: float, pitch: float, yaw: float) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return Rz @ Ry @ Rx


# optical (x right, y down, z forward) -> body (x forward, y left, z up)
R_BODY_FROM_OPTICAL = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], np.float64)


def make_rig(cfg: SimConfig, rng: np.random.Generator) -> tuple[CameraSpec, LidarSpec]:
    jit = np.radians(cfg.mount_jitter_deg)
    T_bc = np.eye(4)
    T_bc[:3, :3] = _rot(*rng.uniform(-jit, jit, 3)) @ R_BODY_FROM_OPTICAL
    T_bc[:3, 3] = cfg.camera_xyz_m
    T_bl = np.eye(4)
    T_bl[:3, :3] = _rot(*rng.uniform(-jit, jit, 3))
    T_bl[:3, 3] = cfg.lidar_xyz_m
    K = np.array([[cfg.fx, 0, cfg.cx], [0, cfg.fy, cfg.cy], [0, 0, 1]])
    cam = CameraSpec(cfg.width, cfg.height, K, T_bc)
    lid = LidarSpec(T_bl, np.linspace(cfg.elevation_top_deg, cfg.elevation_bottom_deg, cfg.beams),
                    azimuth_steps=cfg.azimuth_steps, period_ns=int(round(1e9 / cfg.rate_hz)),
                    max_range_m=cfg.max_range_m)
    return cam, lid


class Simulator:
    """Renders frame i of the drive (seed, num_frames) on demand; same seed, same arrays."""

    def __init__(self, seed: int, num_frames: int, config: SimConfig | None = None,
                 taxonomy: Taxonomy | None = None, threads: int = 0):
        self.seed, self.num_frames = int(seed), int(num_frames)
        self.threads = int(threads)          # Open3D ray-casting threads (0: all cores); never changes the arrays
        self.config = config or SimConfig()
        self.taxonomy = taxonomy or load_taxonomy()
        period_s = 1.0 / self.config.rate_hz
        self.period_ns = int(round(1e9 / self.config.rate_hz))
        self.world: World = build_world(self.seed, (self.num_frames + 1) * period_s, self.taxonomy,
                                        ego_speed_mps=self.config.ego_speed_mps)
        rig_rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0xCA1B]))
        self.camera_spec, self.lidar_spec = make_rig(self.config, rig_rng)
        self.lighting = Lighting.random(np.random.default_rng(np.random.SeedSequence([self.seed, 0x119])))
        self._renderer: Renderer | None = None
        self.calib = DriveCalib(CAMERA_ID, self.config.width, self.config.height, self.camera_spec.K.copy(),
                                np.zeros(5), self.camera_spec.T_base_from_cam.copy(), LIDAR_ID,
                                self.lidar_spec.T_base_from_lidar.copy())
        self.meta = DriveMeta(self.seed, self.num_frames, self.config.rate_hz, extra={
            "world": self.world.stats,
            "lighting": {"sun_dir_world": np.round(self.lighting.sun_dir_world, 4).tolist(),
                         "exposure": round(self.lighting.exposure, 3), "shadows": self.lighting.shadows},
            "camera_time": "sweep start + half a period (LiDAR facing forward)",
        })

    @property
    def renderer(self) -> Renderer:
        """Built on first use (the Open3D scene): a process that only records frames rendered
        elsewhere never pays for it."""
        if self._renderer is None:
            self._renderer = Renderer(self.world, self.camera_spec, self.lidar_spec, self.lighting,
                                      threads=self.threads)
        return self._renderer

    # stamps
    def sweep_start_ns(self, index: int) -> int:
        return T0_NS + index * self.period_ns

    def camera_stamp_ns(self, index: int) -> int:
        return self.sweep_start_ns(index) + self.period_ns // 2

    @staticmethod
    def seconds(stamp_ns: int | np.ndarray) -> np.ndarray | float:
        return (np.asarray(stamp_ns, np.int64) - T0_NS) / 1e9

    def ego_pose(self, stamp_ns: int | np.ndarray) -> np.ndarray:
        """(K, 4, 4) T_world_from_base at the given stamps."""
        return self.world.ego_pose(self.seconds(np.atleast_1d(stamp_ns)))

    def render(self, index: int) -> SimFrame:
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} outside 0..{self.num_frames - 1}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0xF4, index]))
        t_cam_ns = self.camera_stamp_ns(index)
        t_sweep_ns = self.sweep_start_ns(index)
        T_wb_cam = self.ego_pose(t_cam_ns)[0]
        cam = self.renderer.render_camera(float(self.seconds(t_cam_ns)), T_wb_cam, rng)
        lid = self.renderer.render_lidar(float(self.seconds(t_sweep_ns)), rng)
        pose_stamps = t_sweep_ns + POSE_PERIOD_NS * np.arange(-1, self.period_ns // POSE_PERIOD_NS + 2, dtype=np.int64)
        frame = DriveFrame(
            index=index,
            camera=CameraFrame(CAMERA_ID, t_cam_ns, cam.image),
            lidar=LidarSweep(LIDAR_ID, t_sweep_ns, lid.points, lid.t_offset_ns),
            semantic=cam.semantic, instance=cam.instance,
            point_class=lid.point_class, point_instance=lid.point_instance,
            boxes=self._boxes(float(self.seconds(t_cam_ns)), T_wb_cam),
            lanes=self._lanes(float(self.seconds(t_cam_ns)), T_wb_cam),
            pose_stamps_ns=pose_stamps, T_world_from_base=self.ego_pose(pose_stamps),
        )
        return SimFrame(frame, cam.depth_m)

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[SimFrame]:
        for i in range(start, self.num_frames if stop is None else stop):
            yield self.render(i)

    # ground truth in the base frame at the camera stamp
    def _boxes(self, t_s: float, T_world_from_base: np.ndarray, radius_m: float = 130.0) -> list[Box3D]:
        world = self.world
        ego_s = world.ego_s0_m + world.ego_speed_mps * t_s
        agents = [a for a in world.agents if abs(a.s_at(t_s) - ego_s) < radius_m]
        R, t = world.agent_poses(agents, t_s)
        T_bw = np.linalg.inv(T_world_from_base)
        yaw_base = np.arctan2(T_world_from_base[1, 0], T_world_from_base[0, 0])
        boxes = []
        for a, Ri, ti in zip(agents, R, t):
            center_w = ti + Ri @ np.array([0.0, 0.0, a.size_m[2] / 2])
            center_b = T_bw[:3, :3] @ center_w + T_bw[:3, 3]
            yaw = float(np.arctan2(Ri[1, 0], Ri[0, 0]) - yaw_base)
            yaw = float((yaw + np.pi) % (2 * np.pi) - np.pi)
            boxes.append(Box3D(a.instance_id, self.taxonomy.id(a.class_name), center_b, a.size_m.astype(np.float64), yaw))
        return boxes

    def _lanes(self, t_s: float, T_world_from_base: np.ndarray) -> list[LaneBoundaryGT]:
        road, world = self.world.road, self.world
        ego_s = world.ego_s0_m + world.ego_speed_mps * t_s
        s = np.arange(ego_s - 10.0, ego_s + 80.0, 1.0)
        T_bw = np.linalg.inv(T_world_from_base)
        lanes = []
        for b in road.boundaries:
            x, y, _ = road.frame_at(s, b.d_m)
            pw = np.column_stack([x, y, np.zeros_like(x)])
            lanes.append(LaneBoundaryGT(b.index, b.type, pw @ T_bw[:3, :3].T + T_bw[:3, 3]))
        return lanes
