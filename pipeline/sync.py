"""Sync: pair each camera frame with a LiDAR sweep by timestamp (Autoware's fusion collector rule).

Every sensor's stamps are shifted by its offset (``sync.offsets_ms[sensor]``, else
``camera_offset_ms`` / ``lidar_offset_ms``); a camera frame pairs with the unused sweep whose
shifted stamp is nearest to its own, within ``tolerance_ms``. A frame goes out as soon as no
later sweep could be nearer (sweeps arrive in stamp order), and, when the source has ego
poses, once the poses covering the sweep have arrived. When the LiDAR is late or missing the
frame goes out camera-only (``SyncedFrame.lidar is None``) and the miss is counted:

- replay: decided by the data alone (a later sweep, or the end of the source): deterministic;
- live: also after ``lidar_timeout_ms`` of waiting (``poll(now_ns)``), so latency stays bounded.

A sweep no camera frame took is counted as unused. Plain class, no threads: the graph calls it.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import setting
from pipeline.sources.base import CameraInput, LidarInput, PoseInput
from pipeline.types import MaskTruth, Poses, SyncedFrame

MAX_BUFFERED_SWEEPS = 32
POSE_KEEP_NS = 2_000_000_000          # poses kept before the oldest stamp still in play


@dataclass
class SyncConfig:
    """``sync:`` of a run config."""

    tolerance_ms: float = setting(20.0, unit="ms", min=0, doc="largest |camera time - LiDAR time| (after offsets) "
                                  "that still pairs")
    camera_offset_ms: float = setting(0.0, unit="ms", doc="added to every camera stamp")
    lidar_offset_ms: float = setting(0.0, unit="ms", doc="added to every LiDAR sweep stamp (e.g. half a sweep when "
                                     "stamps are sweep starts)")
    offsets_ms: dict[str, float] = setting(factory=dict, unit="ms", doc="per sensor id: its offset, instead of the "
                                           "two above")
    lidar_timeout_ms: float = setting(150.0, unit="ms", min=0, doc="live: how long a camera frame waits for its "
                                      "sweep before it goes camera-only")
    use_poses: bool = setting(True, doc="attach the ego poses covering each sweep (ego-motion compensation needs "
                              "them)")


@dataclass
class SyncStats:
    cameras_in: int = 0
    sweeps_in: int = 0
    paired: int = 0
    camera_only: int = 0             # frames that went out without a sweep
    lidar_missed: int = 0            # of those, frames whose LiDAR was late or missing (a LiDAR is configured)
    sweeps_unused: int = 0           # sweeps no camera frame took (late, or more sweeps than frames)
    pose_waits_timed_out: int = 0    # live: frames that went out before their poses were complete
    ego_motion_skipped: int = 0      # frames sent on (stop, live timeout) with their poses incomplete: fused
                                     # without ego-motion compensation (their partial poses would fail it)
    max_pair_dt_ns: int = 0          # largest |camera - LiDAR| (after offsets) of a pair

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Synchronizer:
    def __init__(self, cfg: SyncConfig, *, has_lidar: bool, has_poses: bool, live: bool) -> None:
        self.cfg = cfg
        self.has_lidar = has_lidar
        self.use_poses = has_poses and cfg.use_poses
        self.live = live
        self.tol_ns = int(round(cfg.tolerance_ms * 1e6))
        self.timeout_ns = int(round(cfg.lidar_timeout_ms * 1e6))
        self.stats = SyncStats()
        self._cameras: deque[tuple[CameraInput, int, Any]] = deque()
        self._sweeps: list[tuple[int, LidarInput]] = []        # (shifted stamp, sweep), arrival order
        self._max_sweep_ns: int | None = None
        self._last_target_ns: int | None = None
        self._pose_stamps: list[int] = []
        self._pose_T: list[np.ndarray] = []
        self._pose_complete_ns: int | None = None
        self._emitted = 0

    def offset_ns(self, sensor_id: str, default_ms: float) -> int:
        return int(round(self.cfg.offsets_ms.get(sensor_id, default_ms) * 1e6))

    # -- input -----------------------------------------------------------------------------
    def push(self, item: CameraInput | LidarInput | PoseInput, now_ns: int = 0,
             token: Any = None) -> list[tuple[SyncedFrame, Any]]:
        """One input; returns the frames now decided, each with the ``token`` its camera came with."""
        if isinstance(item, CameraInput):
            self.stats.cameras_in += 1
            self._cameras.append((item, now_ns, token))
        elif isinstance(item, LidarInput):
            self.stats.sweeps_in += 1
            shifted = item.stamp_ns + self.offset_ns(item.sweep.lidar_id, self.cfg.lidar_offset_ms)
            self._sweeps.append((shifted, item))
            self._max_sweep_ns = shifted if self._max_sweep_ns is None else max(self._max_sweep_ns, shifted)
            if len(self._sweeps) > MAX_BUFFERED_SWEEPS:
                self._sweeps.pop(0)
                self.stats.sweeps_unused += 1
        elif isinstance(item, PoseInput):
            self._add_poses(item)
        else:
            raise TypeError(f"sync takes CameraInput, LidarInput or PoseInput, got {type(item).__name__}")
        return self._resolve(now_ns, flush=False)

    def poll(self, now_ns: int) -> list[tuple[SyncedFrame, Any]]:
        """Live: let frames whose LiDAR (or poses) timed out go."""
        return self._resolve(now_ns, flush=False) if self.live else []

    def flush(self) -> list[tuple[SyncedFrame, Any]]:
        """The sources ended (or the run stops): decide every waiting frame with what is here."""
        out = self._resolve(0, flush=True)
        self.stats.sweeps_unused += len(self._sweeps)
        self._sweeps.clear()
        return out

    @property
    def waiting(self) -> int:
        return len(self._cameras)

    # -- pairing ---------------------------------------------------------------------------
    def _target_ns(self, cam: CameraInput) -> int:
        """The shifted stamp a camera item pairs by; a camera set the dataset already paired with a
        sweep (``set_stamp_ns``) carries that sweep's stamp, shifted as the sweep is."""
        if cam.set_stamp_ns is not None:
            return cam.stamp_ns + self.offset_ns(cam.set_lidar_id or "", self.cfg.lidar_offset_ms)
        return cam.stamp_ns + self.offset_ns(cam.frame.camera_id, self.cfg.camera_offset_ms)

    def _add_poses(self, p: PoseInput) -> None:
        if p.stamps_ns.size:
            last = self._pose_stamps[-1] if self._pose_stamps else None
            have = set(self._pose_stamps[-4 * len(p.stamps_ns) - 8:])   # overlapping windows repeat a few
            for s, T in zip(p.stamps_ns.tolist(), p.T_world_from_base):
                if s not in have:
                    self._pose_stamps.append(int(s))
                    self._pose_T.append(np.asarray(T, np.float64))
            if last is not None and int(p.stamps_ns.min()) < last:     # out of order: sort, one pose per stamp
                order = np.argsort(self._pose_stamps, kind="stable")
                stamps = [self._pose_stamps[i] for i in order]
                keep = [k for k in range(len(stamps)) if k == 0 or stamps[k] != stamps[k - 1]]
                self._pose_stamps = [stamps[k] for k in keep]
                self._pose_T = [self._pose_T[order[k]] for k in keep]
        c = int(p.complete_until_ns)
        self._pose_complete_ns = c if self._pose_complete_ns is None else max(self._pose_complete_ns, c)

    def _match(self, target_ns: int) -> tuple[bool, int | None]:
        """(decided, index into self._sweeps of the pair or None)."""
        if not self.has_lidar:
            return True, None
        best, best_dt = None, None
        for i, (shifted, _) in enumerate(self._sweeps):
            dt = abs(shifted - target_ns)
            if dt <= self.tol_ns and (best_dt is None or dt < best_dt):
                best, best_dt = i, dt
        if self._max_sweep_ns is None:
            return False, None
        ahead = self._max_sweep_ns - target_ns           # later sweeps are at least this far from the target
        if best is not None:
            return best_dt <= ahead, best
        return ahead > self.tol_ns, None

    def _resolve(self, now_ns: int, *, flush: bool) -> list[tuple[SyncedFrame, Any]]:
        from pipeline.drive.common import pose_window_ns

        out: list[tuple[SyncedFrame, Any]] = []
        while self._cameras:
            cam, arrived_ns, token = self._cameras[0]
            target = self._target_ns(cam)
            timed_out = self.live and now_ns - arrived_ns >= self.timeout_ns
            decided, idx = self._match(target)
            if not (decided or flush or timed_out):
                break
            sweep = self._sweeps[idx][1] if idx is not None else None
            window = None
            complete = True
            if sweep is not None and self.use_poses:
                window = pose_window_ns(cam.stamp_ns, sweep.stamp_ns)
                complete = self._pose_complete_ns is not None and self._pose_complete_ns >= window[1]
                if not complete:
                    if not (flush or timed_out):
                        break
                    if timed_out and not flush:
                        self.stats.pose_waits_timed_out += 1
            self._cameras.popleft()
            if idx is not None:
                self.stats.max_pair_dt_ns = max(self.stats.max_pair_dt_ns, abs(self._sweeps[idx][0] - target))
                self._sweeps.pop(idx)
                self.stats.paired += 1
            else:
                self.stats.camera_only += 1
                if self.has_lidar:
                    self.stats.lidar_missed += 1
            self._last_target_ns = target
            out.append((self._frame(cam, sweep, window, complete), token))
        self._prune()
        return out

    def _frame(self, cam: CameraInput, sweep: LidarInput | None, window: tuple[int, int] | None,
               complete: bool = True) -> SyncedFrame:
        index = self._emitted
        self._emitted += 1
        poses = pose = None
        if window is not None and self._pose_stamps:
            lo = int(np.searchsorted(self._pose_stamps, window[0], side="left"))
            hi = int(np.searchsorted(self._pose_stamps, window[1], side="right"))
            if hi > lo:
                stamps = np.array(self._pose_stamps[lo:hi], np.int64)
                Ts = np.stack(self._pose_T[lo:hi])
                pose = Ts[int(np.argmin(np.abs(stamps - cam.stamp_ns)))]
                poses = Poses(stamps, Ts) if complete else None    # partial poses: no compensation
        if not complete:
            self.stats.ego_motion_skipped += 1
        truth = {cid: MaskTruth(*t) for cid, t in cam.more_truth.items()}    # a camera set: the others' truth
        if cam.semantic_truth is not None or cam.instance_truth is not None:
            truth[cam.frame.camera_id] = MaskTruth(cam.semantic_truth, cam.instance_truth)
        return SyncedFrame(frame_index=index, cameras=cam.frames, lidar=sweep.sweep if sweep else None,
                           T_world_from_base=pose, poses=poses, truth=truth, camera_seq=cam.seq, rig=cam.rig)

    def _prune(self) -> None:
        # Sweeps no future camera frame can take: cameras come in stamp order.
        if self._last_target_ns is not None:
            floor = self._last_target_ns - self.tol_ns
            if self._cameras:
                c = self._cameras[0][0]
                floor = max(floor, self._target_ns(c) - self.tol_ns)
            keep = [s for s in self._sweeps if s[0] >= floor]
            self.stats.sweeps_unused += len(self._sweeps) - len(keep)
            self._sweeps = keep
        if self._pose_stamps:
            live = [s.stamp_ns for _, s in self._sweeps] + [c.stamp_ns for c, _, _ in self._cameras]
            oldest = min(live) if live else self._pose_stamps[-1]
            cut = int(np.searchsorted(self._pose_stamps, oldest - POSE_KEEP_NS, side="left"))
            if cut:
                del self._pose_stamps[:cut]
                del self._pose_T[:cut]
