"""``load_rig(path)``: detect the kind of calibration at ``path`` and call its loader.

- ``*.yaml`` / ``*.yml``: rig YAML (calibration.io_rig_yaml)
- a bag: rosbag2 directory (with metadata.yaml), ``*.mcap``, ``*.db3``, ROS1 ``*.bag``
- a folder with ``calib_cam_to_cam.txt`` (or either KITTI raw file): KITTI raw; a KITTI raw drive
  folder (``image_02/`` or ``velodyne_points/``) whose date folder above holds it, as the drive reader
  finds it
- a nuScenes keyframe folder holding ``calib.json``
- ``*.txt`` with ``P2:`` and ``Tr_velo_to_cam:``: KITTI object frame calibration
- ``*.json`` with ``cameras``: nuScenes sample calibration
"""
from __future__ import annotations

from pathlib import Path

from calibration.rig import Rig
from pipeline.errors import CalibrationError

KITTI_RAW_FILES = ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt")


def detect_kind(path: str | Path) -> str:
    """One of rig_yaml, ros_bag, kitti_raw, kitti_object, nuscenes; CalibrationError otherwise."""
    from calibration.io_ros import is_bag

    path = Path(path)
    if not path.exists():
        raise CalibrationError("no such file or folder", path=path)
    if path.is_dir():
        if is_bag(path):
            return "ros_bag"
        if (path / KITTI_RAW_FILES[0]).is_file() or _kitti_raw_drive_calib(path) is not None:
            return "kitti_raw"
        if (path / "calib.json").is_file():
            return "nuscenes"
        raise CalibrationError("folder is neither a rosbag2 (metadata.yaml), KITTI raw calibration "
                               "(calib_cam_to_cam.txt, here or above a drive folder) nor a nuScenes folder "
                               "(calib.json)", path=path)
    if path.suffix in (".yaml", ".yml"):
        return "rig_yaml"
    if is_bag(path):
        return "ros_bag"
    if path.name in KITTI_RAW_FILES:
        return "kitti_raw"
    if path.suffix == ".json":
        return "nuscenes"
    if path.suffix == ".txt":
        head = path.read_text(errors="replace")[:4096]
        if "P2:" in head or "Tr_velo_to_cam:" in head:
            return "kitti_object"
    raise CalibrationError("unknown calibration format (expected rig YAML, a bag, KITTI object/raw calib "
                           "or nuScenes calib.json)", path=path)


def _kitti_raw_drive_calib(path: Path) -> Path | None:
    """The date folder holding a KITTI raw drive folder's calibration (None: not such a folder)."""
    if not ((path / "image_02").is_dir() or (path / "velodyne_points").is_dir()):
        return None
    for d in (path, path.parent):
        if (d / KITTI_RAW_FILES[0]).is_file():
            return d
    return None


def load_rig(path: str | Path, *, image_size: tuple[int, int] | None = None) -> Rig:
    """Load a rig of any supported kind. ``image_size`` (width, height) is used by KITTI
    object calibration when no image_2 frame sits beside it."""
    path = Path(path)
    kind = detect_kind(path)
    if kind == "rig_yaml":
        from calibration.io_rig_yaml import read_rig_yaml

        return read_rig_yaml(path)
    if kind == "ros_bag":
        from calibration.io_ros import load_rig_from_bag

        return load_rig_from_bag(path)
    if kind == "kitti_raw":
        from calibration.io_kitti import load_kitti_raw_calib

        if path.is_dir() and not (path / KITTI_RAW_FILES[0]).is_file():
            path = _kitti_raw_drive_calib(path)
        return load_kitti_raw_calib(path)
    if kind == "kitti_object":
        from calibration.io_kitti import load_kitti_object_calib

        return load_kitti_object_calib(path, image_size=image_size)
    from calibration.io_nuscenes import load_nuscenes_calib

    return load_nuscenes_calib(path / "calib.json" if path.is_dir() else path)
