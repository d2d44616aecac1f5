"""What sources emit, and what every source offers.

A source yields, in the order it has them, :class:`CameraInput`, :class:`LidarInput` and
:class:`PoseInput` values; the sync stage (pipeline/sync.py) pairs cameras with LiDAR
sweeps. Sources know nothing of threads or pacing: ``pipeline/graph.py`` iterates them on
its own thread, paces replay by the stamps, and calls ``stop()`` from another thread.

Leaf module: numpy and pipeline.types only.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from pipeline.types import CameraFrame, LidarSweep

LOGGED_SKIPS = 5                              # per kind of input; the rest are counted only


@dataclass
class CameraInput:
    """One camera image, or a synchronised camera set (nuScenes' six cameras of one keyframe):
    ``frame`` is the first camera, ``more`` the others of the same instant. A set that the
    dataset already paired with its sweep carries that sweep's stamp in ``set_stamp_ns``, so the
    sync pairs the whole set with it; each frame keeps its own exposure stamp for fusion."""

    frame: CameraFrame
    seq: int                                  # index of this image in its source
    semantic_truth: np.ndarray | None = None  # (H, W) uint8 class ids, drives with ground truth
    instance_truth: np.ndarray | None = None  # (H, W) uint16 instance ids, 0 = none
    more: list[CameraFrame] = field(default_factory=list)   # the other cameras of a synchronised set
    more_truth: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = field(default_factory=dict)  # cam: (sem, inst)
    set_stamp_ns: int | None = None           # the stamp the sync pairs by (a set paired by the dataset) ...
    set_lidar_id: str | None = None           # ... the stamp of this LiDAR's sweep (shifted by its offset)
    rig: Any = None                           # this frame's own calibration (KITTI object: per frame), else None
    paced: ClassVar[bool] = True              # replay paces by its stamp (pipeline.graph.SourceItem)
    starts_frame: ClassVar[bool] = True       # a camera image: the graph notes its receive time

    @property
    def stamp_ns(self) -> int:
        return int(self.frame.stamp_ns if self.set_stamp_ns is None else self.set_stamp_ns)

    @property
    def frames(self) -> list[CameraFrame]:
        return [self.frame, *self.more]


@dataclass
class LidarInput:
    sweep: LidarSweep
    seq: int
    received_ns: int = 0                      # live sources: monotonic clock at arrival (0: unknown)
    paced: ClassVar[bool] = True
    starts_frame: ClassVar[bool] = False

    @property
    def stamp_ns(self) -> int:
        return int(self.sweep.stamp_ns)


@dataclass
class PoseInput:
    """Ego poses ``T_world_from_base`` at ``stamps_ns`` (sorted). ``complete_until_ns``: the
    source promises no later input holds a pose stamped at or before it."""

    stamps_ns: np.ndarray                     # (M,) int64
    T_world_from_base: np.ndarray             # (M, 4, 4) float64
    complete_until_ns: int
    paced: ClassVar[bool] = False             # poses come in windows ahead of the frames: never paced
    starts_frame: ClassVar[bool] = False

    @property
    def stamp_ns(self) -> int:
        return int(self.stamps_ns[0]) if self.stamps_ns.size else int(self.complete_until_ns)


SourceItem = CameraInput | LidarInput | PoseInput


@dataclass
class Skipped:
    """An input a source could not read: skipped, counted and reported; the run goes on."""

    what: str            # "frame", "image", "cloud", "message"
    where: str           # file, topic or URI
    reason: str


@dataclass
class SourceInfo:
    name: str                                 # what the summary calls it
    uri: str
    kind: str                                 # rosbag2 | ros1 | kitti-raw | video | images | v4l2 | csi | rtsp | zenoh
    live: bool                                # a device that produces frames whether or not we read them
    rate_hz: float | None = None              # nominal camera rate, when known
    num_frames: int | None = None             # camera frames it will give, when known
    has_lidar: bool = True
    has_poses: bool = False
    has_truth: bool = False                   # ground-truth masks ride along with the camera frames
    extra: dict[str, Any] = field(default_factory=dict)


class Source:
    """Base class: subclasses set ``info`` and ``rig`` (a calibration.rig.Rig or None) and
    implement ``_items``. ``stop()`` may be called from any thread."""

    info: SourceInfo
    rig: Any = None

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.skipped: list[Skipped] = []
        self._skip_counts: dict[str, int] = {}
        self.dropped = 0           # inputs a live source let go for newer ones (its queue was full)

    def __iter__(self) -> Iterator[SourceItem]:
        for item in self._items():
            if self._stop.is_set():
                return
            yield item

    def _items(self) -> Iterator[SourceItem]:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def skip(self, what: str, where: str, reason: str) -> None:
        """Record an input that could not be read; the first few of each kind are logged."""
        self.skipped.append(Skipped(what, where, reason))
        n = self._skip_counts[what] = self._skip_counts.get(what, 0) + 1
        if n <= LOGGED_SKIPS:
            logging.getLogger(type(self).__module__).warning(
                "skipped %s (%s): %s%s", what, where, reason,
                f" (further skipped {what}s are counted, not logged)" if n == LOGGED_SKIPS else "")

    def close(self) -> None:
        """Release files and devices (idempotent)."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
