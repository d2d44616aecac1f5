"""Multi-object tracking of fused objects (AB3DMOT-style: a Kalman filter per track and Hungarian
assignment), the stage after fusion.

Each frame's objects (amodal box centres, base frame at the camera time) are moved into the
world frame with the ego pose at the camera time (``SyncedFrame.T_world_from_base``). Without
poses the tracker runs in the base frame of each frame: static things then appear to move with
the ego's speed and the velocities are relative to the ego (a documented limitation,
docs/architecture.md).

Per track a constant-velocity Kalman filter on the bird's-eye-view centre, state
(x, y, vx, vy), white-noise acceleration ``accel_std_mps2``, measurement noise
``measurement_std_m``; the height, the size and the yaw are smoothed apart (the box yaw is
ambiguous by pi; once a track moves faster than ``heading_min_speed_mps`` its heading follows
the velocity). Assignment: Hungarian (``scipy.optimize.linear_sum_assignment``) on the BEV
distance from each track's predicted centre to each object's box centre, gated at ``gate_m``
and by class (the same class, or both vehicles: car and truck swap in a detector). A new
object starts a tentative track; it is confirmed after ``min_hits`` detections (a tentative
track that misses a frame is dropped); a confirmed track coasts on its prediction through up
to ``max_misses`` frames without a detection and is deleted after that; it is output while it
has missed at most ``output_misses`` frames. Track ids are never
reused within a run. The tracker is stateful: it must see the frames in order (the graph runs
each stage on one thread, in order).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import parse_section, setting
from pipeline.types import FusionResult, Object3D, SyncedFrame, Track

WORLD_FRAME = "world"
BASE_FRAME = "base_link"
VEHICLES = ("car", "truck")            # classes that may swap between frames and still match


@dataclass(frozen=True)
class TrackerConfig:
    """``tracking:`` of a run config. Defaults chosen on validation drives 2001-2004
    (benchmarks/tune_tracker.py; README, *Tracking and amodal boxes*)."""

    enabled: bool = setting(True, doc="run the tracking stage after fusion (tracks in the recording and overlay)")
    gate_m: float = setting(2.5, unit="m", above=0, doc="largest BEV distance from a track's predicted centre to "
                            "an object's box centre for them to be assigned")
    min_hits: int = setting(2, unit="frames", min=1, doc="detections before a tentative track is confirmed")
    max_misses: int = setting(10, unit="frames", min=0, doc="frames a confirmed track coasts without a detection "
                              "before deletion")
    output_misses: int = setting(1, unit="frames", min=0, doc="a coasting track is output while it has missed at "
                                 "most this many frames (it lives on, unseen, up to max_misses)")
    output_tentative: bool = setting(False, doc="output a tentative track (fewer than min_hits detections) in the "
                                     "frames it is detected, not only once confirmed")
    accel_std_mps2: float = setting(2.0, unit="m/s^2", above=0, doc="process noise: standard deviation of the "
                                    "acceleration")
    measurement_std_m: float = setting(0.3, unit="m", above=0, doc="measurement noise of a box centre, per axis")
    init_velocity_std_mps: float = setting(8.0, unit="m/s", above=0, doc="velocity uncertainty of a new track, "
                                           "per axis")
    size_smoothing: float = setting(0.3, above=0, max=1, doc="weight of a new detection's size, height, yaw and "
                                    "score in the smoothed track")
    heading_min_speed_mps: float = setting(1.0, unit="m/s", min=0, doc="above this speed a track's yaw points "
                                           "along its velocity")
    trail_length: int = setting(10, unit="frames", min=1, doc="past centres kept per track for the overlay's trail")

    @staticmethod
    def from_dict(data: dict[str, Any] | None, *, path: str | Path = "<config>",
                  prefix: str = "tracking.") -> "TrackerConfig":
        return parse_section(TrackerConfig, data, path=path, prefix=prefix)


class Tracker:
    """``update(objects, stamp_ns, T_world_from_base)`` once per frame, in order; returns the
    confirmed tracks (detected this frame or coasting). The tracks' state lives in arrays (one
    row per track) so that a frame costs a few batched numpy operations, not a loop per track."""

    def __init__(self, cfg: TrackerConfig | None = None, class_names: tuple[str, ...] | None = None) -> None:
        self.cfg = cfg or TrackerConfig()
        self.class_names = class_names
        self._groups: dict[int, int] = {}
        self.next_id = 1
        self.last_ns: int | None = None
        self.frame_id: str | None = None
        self._reset()

    def _reset(self) -> None:
        self.x = np.zeros((0, 4))                  # (T, 4) x, y, vx, vy in the tracking frame
        self.P = np.zeros((0, 4, 4))
        self.z = np.zeros(0)                       # smoothed centre height
        self.size = np.zeros((0, 3))               # smoothed length, width, height
        self.yaw = np.zeros(0)                     # smoothed box axis (mod pi), tracking frame
        self.score = np.zeros(0)
        self.class_id = np.zeros(0, np.int64)
        self.track_id = np.zeros(0, np.int64)
        self.hits = np.zeros(0, np.int64)
        self.misses = np.zeros(0, np.int64)
        self.first_ns = np.zeros(0, np.int64)
        self.last_ns_seen = np.zeros(0, np.int64)
        self.instance_id = np.zeros(0, np.int64)
        self.group = np.zeros(0, np.int64)        # assignment class group (_group)
        self.trail = np.zeros((0, self.cfg.trail_length, 3))   # last centres, oldest first, tracking frame
        self.trail_n = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.track_id)

    # -- the filter --------------------------------------------------------------------------
    def _predict(self, dt: float) -> None:
        if not len(self) or dt <= 0:
            return
        F = np.eye(4)
        F[0, 2] = F[1, 3] = dt
        q = self.cfg.accel_std_mps2 ** 2
        G = np.array([[dt ** 4 / 4, dt ** 3 / 2], [dt ** 3 / 2, dt * dt]]) * q
        Q = np.zeros((4, 4))
        Q[np.ix_([0, 2], [0, 2])] = G
        Q[np.ix_([1, 3], [1, 3])] = G
        self.x = self.x @ F.T
        self.P = F @ self.P @ F.T + Q

    def _update(self, rows: np.ndarray, z: np.ndarray) -> None:
        """Measurement update of tracks ``rows`` with BEV centres ``z`` (K, 2), batched."""
        P = self.P[rows]
        S = P[:, :2, :2] + np.eye(2) * self.cfg.measurement_std_m ** 2
        K = P[:, :, :2] @ np.linalg.inv(S)                      # (K, 4, 2)
        innov = z - self.x[rows, :2]
        self.x[rows] += np.einsum("kij,kj->ki", K, innov)
        self.P[rows] = (np.eye(4)[None] - K @ np.eye(2, 4)[None]) @ P

    def _group(self, class_id: int) -> int:
        """Classes that may be assigned to each other share a group: vehicles, else each class."""
        g = self._groups.get(class_id)
        if g is None:
            names = self.class_names
            vehicle = names is not None and class_id < len(names) and names[class_id] in VEHICLES
            g = self._groups[class_id] = -1 if vehicle else class_id
        return g

    # -- one frame ---------------------------------------------------------------------------
    def update(self, objects: list[Object3D], stamp_ns: int, T_world_from_base: np.ndarray | None = None) -> list[Track]:
        from scipy.optimize import linear_sum_assignment

        cfg = self.cfg
        frame_id = WORLD_FRAME if T_world_from_base is not None else BASE_FRAME
        if self.frame_id is not None and frame_id != self.frame_id:
            self._reset()                              # poses came or went: tracks cannot carry over
        self.frame_id = frame_id
        T = np.eye(4) if T_world_from_base is None else np.asarray(T_world_from_base, np.float64)
        ego_yaw = float(np.arctan2(T[1, 0], T[0, 0]))
        stamp_ns = int(stamp_ns)
        dt = 0.0 if self.last_ns is None else (stamp_ns - self.last_ns) / 1e9
        if dt < 0:
            raise ValueError(f"tracker: frames out of order ({stamp_ns} after {self.last_ns})")
        self.last_ns = stamp_ns
        n = len(objects)
        centers = np.array([o.box_center for o in objects], np.float64).reshape(n, 3) @ T[:3, :3].T + T[:3, 3]
        d_cls = np.array([int(o.class_id) for o in objects], np.int64)
        d_size = np.array([o.box_size for o in objects], np.float64).reshape(n, 3)
        d_yaw = np.array([float(o.yaw) for o in objects]) + ego_yaw
        d_score = np.array([float(o.score) for o in objects])
        d_inst = np.array([int(o.instance_id) for o in objects], np.int64)
        self._predict(dt)
        t = len(self)
        rows = cols = np.zeros(0, np.int64)
        if t and n:
            cost = np.linalg.norm(self.x[:, None, :2] - centers[None, :, :2], axis=2)
            g_d = np.array([self._group(int(c)) for c in d_cls])
            cost[self.group[:, None] != g_d[None, :]] = np.inf
            r, c = linear_sum_assignment(np.where(cost <= cfg.gate_m, cost, cfg.gate_m * 10 + 1e3))
            ok = cost[r, c] <= cfg.gate_m
            rows, cols = r[ok], c[ok]
        matched = np.zeros(t, bool)
        matched[rows] = True
        if rows.size:
            self._update(rows, centers[cols, :2])
            a = cfg.size_smoothing
            self.hits[rows] += 1
            self.misses[rows] = 0
            self.last_ns_seen[rows] = stamp_ns
            take = (self.hits[rows] <= 2) | (d_score[cols] >= self.score[rows])   # the class of confident detections
            self.class_id[rows[take]] = d_cls[cols[take]]
            self.group[rows[take]] = [self._group(int(c)) for c in d_cls[cols[take]]]
            self.score[rows] += a * (d_score[cols] - self.score[rows])
            self.z[rows] += a * (centers[cols, 2] - self.z[rows])
            self.size[rows] += a * (d_size[cols] - self.size[rows])
            self.yaw[rows] = _axis(self.yaw[rows] + a * _axis(d_yaw[cols] - self.yaw[rows]))
            self.instance_id[rows] = d_inst[cols]
        # misses: tentative tracks die at once, confirmed ones coast up to max_misses frames
        self.misses[~matched] += 1
        self.instance_id[~matched] = -1
        keep = matched | ((self.hits >= cfg.min_hits) & (self.misses <= cfg.max_misses))
        if not keep.all():
            for name in ("x", "P", "z", "size", "yaw", "score", "class_id", "track_id", "hits", "misses",
                         "first_ns", "last_ns_seen", "instance_id", "group", "trail", "trail_n"):
                setattr(self, name, getattr(self, name)[keep])
        # births
        unmatched = np.ones(n, bool)
        unmatched[cols] = False
        new = np.flatnonzero(unmatched)
        if new.size:
            k = new.size
            r2, v2 = cfg.measurement_std_m ** 2, cfg.init_velocity_std_mps ** 2
            x0 = np.zeros((k, 4))
            x0[:, :2] = centers[new, :2]
            self.x = np.concatenate([self.x, x0])
            self.P = np.concatenate([self.P, np.broadcast_to(np.diag([r2, r2, v2, v2]), (k, 4, 4))])
            self.z = np.concatenate([self.z, centers[new, 2]])
            self.size = np.concatenate([self.size, d_size[new]])
            self.yaw = np.concatenate([self.yaw, _axis(d_yaw[new])])
            self.score = np.concatenate([self.score, d_score[new]])
            self.class_id = np.concatenate([self.class_id, d_cls[new]])
            self.track_id = np.concatenate([self.track_id, np.arange(self.next_id, self.next_id + k)])
            self.next_id += k
            self.hits = np.concatenate([self.hits, np.ones(k, np.int64)])
            self.misses = np.concatenate([self.misses, np.zeros(k, np.int64)])
            self.first_ns = np.concatenate([self.first_ns, np.full(k, stamp_ns, np.int64)])
            self.last_ns_seen = np.concatenate([self.last_ns_seen, np.full(k, stamp_ns, np.int64)])
            self.instance_id = np.concatenate([self.instance_id, d_inst[new]])
            self.group = np.concatenate([self.group, [self._group(int(c)) for c in d_cls[new]]]).astype(np.int64)
            self.trail = np.concatenate([self.trail, np.zeros((k, cfg.trail_length, 3))])
            self.trail_n = np.concatenate([self.trail_n, np.zeros(k, np.int64)])
        return self._output(stamp_ns, T)

    def _output(self, stamp_ns: int, T: np.ndarray) -> list[Track]:
        cfg = self.cfg
        centres = np.column_stack([self.x[:, :2], self.z])
        self.trail[:, :-1] = self.trail[:, 1:].copy()
        self.trail[:, -1] = centres
        self.trail_n = np.minimum(self.trail_n + 1, cfg.trail_length)
        confirmed = self.hits >= cfg.min_hits
        if cfg.output_tentative:
            confirmed |= self.misses == 0
        shown = np.flatnonzero(confirmed & (self.misses <= cfg.output_misses))
        if not shown.size:
            return []
        v = self.x[shown, 2:4]
        speed = np.hypot(v[:, 0], v[:, 1])
        yaw = self.yaw[shown]
        heading = np.arctan2(v[:, 1], v[:, 0])
        flip = np.abs(_wrap(heading - yaw)) > np.pi / 2                  # the box's axis, pointing where it goes
        yaw = np.where(speed >= cfg.heading_min_speed_mps, np.where(flip, _wrap(yaw + np.pi), yaw), yaw)
        T_inv = np.linalg.inv(T)
        trails = self.trail[shown] @ T_inv[:3, :3].T + T_inv[:3, 3]    # one transform for every trail
        first = (cfg.trail_length - self.trail_n[shown]).tolist()
        P = self.P[shown]
        c, size, score = centres[shown], self.size[shown], self.score[shown]
        age = (stamp_ns - self.first_ns[shown]) / 1e9
        ids, cls, hits, misses = (a[shown].tolist() for a in (self.track_id, self.class_id, self.hits, self.misses))
        last, inst = self.last_ns_seen[shown].tolist(), self.instance_id[shown].tolist()
        return [Track(track_id=ids[k], class_id=cls[k], score=float(score[k]), frame_id=self.frame_id or "",
                      center=c[k], velocity=v[k], velocity_cov=P[k, 2:4, 2:4], position_cov=P[k, :2, :2],
                      size=size[k], yaw=float(yaw[k]), age_s=float(age[k]), hits=hits[k], misses=misses[k],
                      last_seen_ns=last[k], instance_id=inst[k], center_base=trails[k, -1],
                      trail_base=trails[k, first[k]:])
                for k in range(shown.size)]


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def _axis(a: np.ndarray) -> np.ndarray:
    """An axis direction (ambiguous by pi) in [-pi/2, pi/2)."""
    return (a + np.pi / 2) % np.pi - np.pi / 2


class TrackingStage:
    """``SyncedFrame, FusionResult -> FusionResult`` with its tracks: the stage after ``fuse``. One
    tracker per run; it sees the frames in order (the graph runs a stage on one thread, in
    order). A camera-only frame (no FusionResult) gives none; the tracks coast until the next
    fused frame."""

    def __init__(self, cfg: TrackerConfig, class_names: tuple[str, ...]) -> None:
        self.tracker = Tracker(cfg, class_names)

    def __call__(self, frame: SyncedFrame, fusion: FusionResult | None) -> FusionResult | None:
        from dataclasses import replace

        if fusion is None:
            return None
        tracks = self.tracker.update(fusion.objects, int(frame.camera.stamp_ns), frame.T_world_from_base)
        return replace(fusion, tracks=tracks)
