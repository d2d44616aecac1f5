"""Typed values that flow between stages: dataclasses of numpy arrays.

Times are int64 nanoseconds (``stamp_ns``), distances metres, images BGR uint8.
Frames are in the names: ``points_lidar`` are in the LiDAR frame,
``T_world_from_base`` maps base (vehicle) coordinates to world coordinates.
Leaf module: imports only numpy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:                          # annotations only: this module imports nothing of ours
    from pipeline.fusion.label import InstanceMap

NO_INSTANCE = -1          # instance_id of points/pixels that belong to no instance (FusedCloud)
NO_CAMERA = -1            # camera index of points outside every camera


@dataclass
class CameraFrame:
    camera_id: str
    stamp_ns: int
    image: np.ndarray                      # (H, W, 3) uint8 BGR


@dataclass
class LidarSweep:
    lidar_id: str
    stamp_ns: int                          # sweep start
    points: np.ndarray                     # (N, 4) float32: x, y, z, intensity in the LiDAR frame
    t_offset_ns: np.ndarray | None = None  # (N,) int64, time of each point after stamp_ns

    def __post_init__(self) -> None:
        if self.points.ndim != 2 or self.points.shape[1] != 4:
            raise ValueError(f"LidarSweep.points must be (N, 4), got {self.points.shape}")


@dataclass
class FrameTrace:
    """Stamps in and out of every stage (wall clock, ns). Only the profiler reads it."""

    frame_index: int
    sensor_stamp_ns: int
    stages: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Poses:
    """Ego poses ``T_world_from_base`` at ``stamps_ns`` (sorted), e.g. those covering one sweep."""

    stamps_ns: np.ndarray                  # (M,) int64
    T_world_from_base: np.ndarray          # (M, 4, 4) float64


@dataclass(frozen=True)
class MaskTruth:
    """A camera frame's ground-truth masks, from drives that have them (``segfuse sim``)."""

    semantic: np.ndarray | None            # (H, W) uint8 class ids
    instance_ids: np.ndarray | None        # (H, W) uint16 instance ids, 0 = none


@dataclass(frozen=True)
class SyncedFrame:
    """The sync's output: the camera frames of one instant with the LiDAR sweep paired to them."""

    frame_index: int
    cameras: list[CameraFrame]
    lidar: LidarSweep | None               # None: LiDAR late or missing (flagged downstream)
    T_world_from_base: np.ndarray | None = None   # ego pose at the camera stamp, if known
    poses: Poses | None = None             # the ego poses covering the sweep and the exposure
    truth: dict[str, MaskTruth] = field(default_factory=dict)    # camera id -> ground truth, if any
    camera_seq: int = 0                    # index of the (first) camera image in its source
    rig: object = None                     # the frame's own calibration.rig.Rig when it varies per frame (KITTI object)

    @property
    def camera(self) -> CameraFrame:
        return self.cameras[0]

    @property
    def stamp_ns(self) -> int:
        return int(self.cameras[0].stamp_ns)


@dataclass
class SemanticMask:
    camera_id: str
    class_ids: np.ndarray                  # (H, W) uint8, taxonomy ids


@dataclass
class Instances:
    camera_id: str
    boxes: np.ndarray                      # (K, 4) float32 x1, y1, x2, y2 pixels
    class_ids: np.ndarray                  # (K,) int32 taxonomy ids
    scores: np.ndarray                     # (K,) float32
    masks: np.ndarray                      # (K, H, W) bool at camera resolution

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass(frozen=True)
class Masks:
    """One frame's masks per camera id: from the models (Postprocess) or the ground truth."""

    semantic: dict[str, SemanticMask] = field(default_factory=dict)
    instances: dict[str, Instances] = field(default_factory=dict)          # the detections (models only)
    instance_maps: dict[str, "InstanceMap"] = field(default_factory=dict)  # per-pixel ids fusion reads


@dataclass(frozen=True)
class ModelOutput:
    """One engine's raw outputs for one batch (``Infer``)."""

    kind: str                              # deeplab | maskrcnn
    outputs: dict[str, np.ndarray] | list[dict[str, np.ndarray]]   # list: a camera set on a one-frame engine


@dataclass(frozen=True)
class ModelOutputs:
    """Every engine's outputs for one frame: the join of the parallel ``Infer`` branches."""

    by_kind: dict[str, dict[str, np.ndarray]]

    @staticmethod
    def join(parts: list[ModelOutput]) -> "ModelOutputs":
        return ModelOutputs({p.kind: p.outputs for p in parts})


# Per-point flags of a FusedCloud.
FLAG_OUTSIDE = np.uint8(1)     # outside every camera's image (or behind it)
FLAG_OCCLUDED = np.uint8(2)    # in an image but hidden from the camera by a nearer surface
FLAG_EDGE = np.uint8(4)        # on a depth edge: label withheld by the edge gate
FLAG_NOT_IN_OBJECT = np.uint8(8)   # instance id withdrawn: the point lies outside its instance's chosen 3D
                                   # cluster, or its class is not the instance's (instance refinement)


@dataclass
class FusedCloud:
    stamp_ns: int
    points: np.ndarray                     # (N, 4) float32 x, y, z, intensity (LiDAR frame)
    class_id: np.ndarray                   # (N,) uint8, taxonomy ignore_id where unlabelled
    instance_id: np.ndarray                # (N,) int32, NO_INSTANCE where none
    score: np.ndarray                      # (N,) float32
    camera_index: np.ndarray               # (N,) int8, NO_CAMERA where none
    flags: np.ndarray                      # (N,) uint8 bit set of FLAG_*


@dataclass
class Object3D:
    instance_id: int
    class_id: int
    score: float
    centroid: np.ndarray                   # (3,) metres, base frame: centroid of the visible points
    box_center: np.ndarray                 # (3,) the amodal box's centre (L-shape fit + class size prior,
                                           #      pipeline.fusion.shape; z: middle of the points)
    box_size: np.ndarray                   # (3,) length, width, height of the amodal box
    yaw: float                             # radians, about +z of the base frame (length axis, mod pi)
    range_m: float
    num_points: int
    visible_center: np.ndarray | None = None   # (3,) the box of the visible points at the same yaw
    visible_size: np.ndarray | None = None     # (3,)


@dataclass
class Track:
    """A tracked object (pipeline.tracking): state in the tracking frame (``frame_id``: world when
    the input has ego poses, else base_link at each frame's time: see docs/architecture.md)."""

    track_id: int                          # stable over the track's life, never reused in a run
    class_id: int
    score: float
    frame_id: str                          # "world" | "base_link"
    center: np.ndarray                     # (3,) filtered box centre, tracking frame
    velocity: np.ndarray                   # (2,) m/s in the tracking frame's x, y
    velocity_cov: np.ndarray               # (2, 2) (m/s)^2
    position_cov: np.ndarray               # (2, 2) m^2
    size: np.ndarray                       # (3,) length, width, height (smoothed)
    yaw: float                             # radians in the tracking frame
    age_s: float                           # since the first detection
    hits: int                              # frames with a detection
    misses: int                            # consecutive frames without one (coasting when > 0)
    last_seen_ns: int                      # stamp of the last detection
    instance_id: int                       # the fused object's instance id of the last detection (-1: none)
    center_base: np.ndarray | None = None  # (3,) the centre in the base frame of the current frame
    trail_base: np.ndarray | None = None   # (K, 3) the last centres, base frame of the current frame

    @property
    def speed_mps(self) -> float:
        return float(np.hypot(self.velocity[0], self.velocity[1]))


@dataclass
class LaneLine:
    coeffs: np.ndarray                     # (4,) c0..c3 of y(x) = c0 + c1 x + c2 x^2 + c3 x^3, base frame
    x_min_m: float
    x_max_m: float
    type: str                              # "solid" | "dashed" | "unknown"
    confidence: float


@dataclass(frozen=True)
class FusionResult:
    """``Fuse``'s output (pipeline.fusion.frame.fuse_frame): the labelled cloud and what came of it."""

    cloud: FusedCloud
    objects: list[Object3D]
    lanes: list[LaneLine]
    points_base: np.ndarray          # (N, 3) base frame, at the first camera's time when compensated
    ego_motion_applied: bool
    max_motion_m: float              # largest shift ego-motion compensation applied to a point
    tracks: list[Track] = field(default_factory=list)   # the tracking stage's (pipeline.tracking); [] before it


@dataclass(frozen=True)
class Counters:
    """The run's counters when a result was made (the graph's, handed to sinks)."""

    done: int = 0                          # frames through every stage before this one
    dropped: int = 0                       # live: older frames dropped for newer ones
    failed: int = 0                        # frames dropped on an input or engine error


@dataclass(frozen=True)
class FrameResult:
    """What every sink gets: one frame's inputs and results, frozen. Made by the graph."""

    index: int
    frame: SyncedFrame
    masks: Masks
    fusion: FusionResult | None            # None: camera-only (LiDAR late or missing) or no rig
    received_ns: int                       # monotonic clock when the source produced the image (0: unknown)
    counters: Counters = Counters()

    @property
    def stamp_ns(self) -> int:
        return self.frame.stamp_ns

    @property
    def camera(self) -> CameraFrame:
        return self.frame.cameras[0]

    @property
    def lidar_missing(self) -> bool:
        return self.frame.lidar is None


# --- Ground truth written by the synthetic world -------------------------------------------

@dataclass
class Box3D:
    """A ground-truth 3D box: centre at the middle of the box, size = length, width, height."""

    instance_id: int
    class_id: int
    center: np.ndarray                     # (3,) metres
    size: np.ndarray                       # (3,) l, w, h
    yaw: float                             # radians about +z


@dataclass
class LaneBoundaryGT:
    """A ground-truth painted lane boundary as a polyline in the base frame."""

    lane_id: int
    type: str                              # "solid" | "dashed"
    points_base: np.ndarray                # (M, 3)
