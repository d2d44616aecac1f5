"""Real dataset folders read frame by frame, with their labelled 3D boxes as ground truth.

- **KITTI object** (``image_2/``, ``velodyne/``, ``calib/``, optional ``label_2/``): every frame its
  own image size and calibration (``calibration.io_kitti.load_kitti_object_calib``), the left
  colour camera ``cam2``, LiDAR ``velo`` (base frame ``velo_link``: x forward, y left, z up).
  label_2 boxes (camera coordinates, bottom centre, ``rotation_y``) become ``Box3D`` in the base
  frame. The benchmark has no timestamps: frame k is stamped ``k * FRAME_PERIOD_NS``, camera and
  sweep alike (each frame is an independent, already paired sample).
- **nuScenes keyframe** (a folder with ``calib.json``: mmdetection3d's info as plain JSON): six
  cameras and LIDAR_TOP (``.pcd.bin``, 5 float32 fields), base frame the ego ``base_link``
  (``calibration.io_nuscenes``); ``instances[].bbox_3d`` ``[x, y, z, l, w, h, yaw]`` in the
  LIDAR_TOP frame with z at the box bottom become ``Box3D`` in the ego frame.

Class maps onto the taxonomy are below; labels with no taxonomy class (KITTI Tram, Misc,
DontCare; nuScenes traffic_cone, barrier) are not ground truth. No threads, no pipeline imports
beyond the leaf modules.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import InputDataError
from pipeline.types import Box3D, CameraFrame, LidarSweep

log = logging.getLogger(__name__)

FRAME_PERIOD_NS = 100_000_000
KITTI_CAMERA = "cam2"
KITTI_LIDAR = "velo"
KITTI_CLASSES = {"Car": "car", "Van": "car", "Truck": "truck", "Pedestrian": "pedestrian",
                 "Person_sitting": "pedestrian", "Cyclist": "cyclist"}
NUSCENES_CLASSES = {"car": "car", "truck": "truck", "trailer": "truck", "bus": "truck",
                    "construction_vehicle": "truck", "bicycle": "cyclist", "motorcycle": "cyclist",
                    "pedestrian": "pedestrian"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class DatasetFrame:
    index: int
    cameras: list[CameraFrame]                 # the first is the frame's main camera
    lidar: LidarSweep
    rig: object                                # calibration.rig.Rig of this frame
    boxes: list[Box3D] = field(default_factory=list)   # labelled boxes in the rig's base frame
    name: str = ""

    @property
    def camera(self) -> CameraFrame:
        return self.cameras[0]


def is_kitti_object(path: Path) -> bool:
    return all((path / d).is_dir() for d in ("image_2", "velodyne", "calib"))


def is_nuscenes(path: Path) -> bool:
    return (path / "calib.json").is_file()


def _read_image(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputDataError("missing or undecodable image", path=path, field="image")
    return img


class KittiObjectFolder:
    """``frames()`` of a KITTI object-benchmark folder (training or testing split)."""

    kind = "kitti-object"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not is_kitti_object(self.path):
            raise InputDataError("not a KITTI object folder (needs image_2/, velodyne/, calib/)", path=self.path)
        stems = {p.stem for p in (self.path / "velodyne").glob("*.bin")}
        images = {p.stem: p for p in (self.path / "image_2").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        calibs = {p.stem for p in (self.path / "calib").glob("*.txt")}
        self.names = sorted(stems & set(images) & calibs)
        lost = sorted((stems | set(images)) - set(self.names))
        if lost:
            log.warning("%s: %d frames lack a scan, image or calib and are left out (e.g. %s)", self.path,
                        len(lost), lost[0])
        if not self.names:
            raise InputDataError("no frame has all of velodyne/N.bin, image_2/N.png and calib/N.txt", path=self.path)
        self._images = images
        self.has_labels = (self.path / "label_2").is_dir()

    def __len__(self) -> int:
        return len(self.names)

    def rig(self, k: int = 0):
        from calibration.io_kitti import load_kitti_object_calib

        name = self.names[k]
        return load_kitti_object_calib(self.path / "calib" / f"{name}.txt", image_path=self._images[name])

    def read(self, k: int) -> DatasetFrame:
        from calibration.io_kitti import read_kitti_velodyne

        name = self.names[k]
        rig = self.rig(k)
        image = _read_image(self._images[name])
        cam = rig.camera(KITTI_CAMERA)
        if image.shape[:2] != (cam.height, cam.width):
            raise InputDataError(f"image is {image.shape[1]}x{image.shape[0]}, calibration {cam.width}x{cam.height}",
                                 path=self._images[name], field="image_2")
        points = read_kitti_velodyne(self.path / "velodyne" / f"{name}.bin").astype(np.float32)
        stamp = k * FRAME_PERIOD_NS
        boxes = []
        label = self.path / "label_2" / f"{name}.txt"
        if label.is_file():
            boxes = kitti_label_boxes(label, rig)
        return DatasetFrame(k, [CameraFrame(KITTI_CAMERA, stamp, image)], LidarSweep(KITTI_LIDAR, stamp, points),
                            rig, boxes, name)


def kitti_label_boxes(path: Path, rig) -> list[Box3D]:
    """label_2 lines -> Box3D in the rig's base frame (velo_link); taxonomy classes only."""
    from pipeline.config import load_taxonomy

    tax = load_taxonomy()
    cam = rig.camera(KITTI_CAMERA)
    R_rect = np.asarray(cam.model.R_rect, np.float64)
    T = np.asarray(cam.T_base_from_cam, np.float64)          # reference camera (cam0) -> velo
    boxes = []
    for n, line in enumerate(path.read_text().splitlines()):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 15:
            raise InputDataError(f"line {n + 1} has {len(parts)} fields, KITTI labels have 15", path=path,
                                 field=f"line {n + 1}")
        cls = KITTI_CLASSES.get(parts[0])
        if cls is None:
            continue
        try:
            h, w, l, x, y, z, ry = (float(v) for v in parts[8:15])
        except ValueError:
            raise InputDataError(f"line {n + 1}: not numbers", path=path, field=f"line {n + 1}") from None
        centre_rect = np.array([x, y - h / 2, z])             # camera y points down: the middle is above
        to_base = lambda v: T[:3, :3] @ (R_rect.T @ v)        # noqa: E731 (rectified -> reference -> velo)
        centre = to_base(centre_rect) + T[:3, 3]
        heading = to_base(np.array([np.cos(ry), 0.0, -np.sin(ry)]))
        boxes.append(Box3D(len(boxes) + 1, tax.id(cls), centre, np.array([l, w, h]),
                           float(np.arctan2(heading[1], heading[0]))))
    return boxes


class NuScenesSample:
    """One nuScenes keyframe folder (``calib.json`` + six camera JPEGs + LIDAR_TOP .pcd.bin)."""

    kind = "nuscenes"

    def __init__(self, path: str | Path, *, cloud_fields: str | None = None) -> None:
        from calibration.io_nuscenes import load_nuscenes_calib

        self.path = Path(path)
        self.calib_path = self.path / "calib.json"
        try:
            self.data = json.loads(self.calib_path.read_text())
        except (OSError, ValueError) as exc:
            raise InputDataError(f"cannot read: {exc}", path=self.calib_path) from None
        self._rig = load_nuscenes_calib(self.calib_path)
        for key in ("lidar_path", "lidar_timestamp"):
            if key not in self.data:
                raise InputDataError("required key is missing", path=self.calib_path, field=key)
        self.lidar_path = self.path / self.data["lidar_path"]
        feats = int(self.data.get("num_pts_feats", 5))
        self.cloud_fields = cloud_fields or ",".join(["x", "y", "z", "intensity", "ring", "f5", "f6"][:feats])
        self.has_labels = bool(self.data.get("instances"))

    def __len__(self) -> int:
        return 1

    def rig(self, k: int = 0):
        return self._rig

    @staticmethod
    def _ns(seconds) -> int:
        return int(round(float(seconds) * 1e6)) * 1000          # nuScenes stamps are whole microseconds

    def read(self, k: int = 0) -> DatasetFrame:
        from pipeline.cloud_io import read_cloud

        if k != 0:
            raise IndexError(k)
        points = read_cloud(self.lidar_path, fields=self.cloud_fields).points
        lidar_ns = self._ns(self.data["lidar_timestamp"])
        frames = []
        for name, cam in self.data["cameras"].items():
            img_path = self.path / str(cam.get("img_path", ""))
            stamp = self._ns(cam["timestamp"]) if "timestamp" in cam else lidar_ns
            frames.append(CameraFrame(name, stamp, _read_image(img_path)))
        return DatasetFrame(0, frames, LidarSweep(self._rig.lidars[0].name, lidar_ns, points), self._rig,
                            self.boxes(), self.path.name)

    def boxes(self) -> list[Box3D]:
        from pipeline.config import load_taxonomy

        tax = load_taxonomy()
        cats = {v: k for k, v in self.data.get("metainfo", {}).get("categories", {}).items()}
        T = np.asarray(self._rig.lidars[0].T_base_from_lidar, np.float64)
        out = []
        for n, inst in enumerate(self.data.get("instances", [])):
            name = cats.get(int(inst.get("bbox_label_3d", inst.get("bbox_label", -1))))
            cls = NUSCENES_CLASSES.get(name or "")
            if cls is None:
                continue
            try:
                x, y, z, l, w, h, yaw = (float(v) for v in inst["bbox_3d"])
            except (KeyError, TypeError, ValueError):
                raise InputDataError("bbox_3d must be 7 numbers [x, y, z, l, w, h, yaw]", path=self.calib_path,
                                     field=f"instances[{n}].bbox_3d") from None
            centre = T[:3, :3] @ np.array([x, y, z + h / 2]) + T[:3, 3]
            heading = T[:3, :3] @ np.array([np.cos(yaw), np.sin(yaw), 0.0])
            out.append(Box3D(len(out) + 1, tax.id(cls), centre, np.array([l, w, h]),
                             float(np.arctan2(heading[1], heading[0]))))
        return out


def open_dataset(path: str | Path, *, cloud_fields: str | None = None) -> KittiObjectFolder | NuScenesSample:
    path = Path(path)
    if is_nuscenes(path):
        return NuScenesSample(path, cloud_fields=cloud_fields)
    if is_kitti_object(path):
        return KittiObjectFolder(path)
    raise InputDataError("not a KITTI object folder (image_2/, velodyne/, calib/) or a nuScenes folder "
                         "(calib.json)", path=path)


@dataclass
class TruthFrame:
    """What ``segfuse eval`` reads of a frame: stamps, per-point truth from the boxes, boxes."""

    index: int
    camera: CameraFrame
    lidar: LidarSweep
    point_class: np.ndarray
    point_instance: np.ndarray
    boxes: list[Box3D]


class BoxTruth:
    """A dataset folder as ``segfuse eval`` ground truth (the drive interface it reads)."""

    def __init__(self, path: str | Path) -> None:
        self.dataset = open_dataset(path)
        if not self.dataset.has_labels:
            raise InputDataError("holds no labelled boxes (label_2/ or calib.json instances)", path=Path(path))

    def frames(self, on_error: str = "raise") -> Iterator[TruthFrame]:
        from pipeline.config import load_taxonomy
        from pipeline.datasets.boxes import point_truth

        ignore = load_taxonomy().ignore_id
        for k in range(len(self.dataset)):
            f = self.dataset.read(k)
            T = np.asarray(f.rig.lidar().T_base_from_lidar, np.float64)
            pts_base = f.lidar.points[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
            cls, inst = point_truth(pts_base, f.boxes, ignore)
            yield TruthFrame(k, f.camera, f.lidar, cls, inst, f.boxes)

    def close(self) -> None:
        pass

    def __enter__(self) -> "BoxTruth":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
