"""Sources: cameras, LiDARs and recorded drives, opened from a URI (see pipeline/sources/uri.py).

``open_sources(cfg.input, ...)`` returns the sources a run reads and the rig it fuses with.
Each source yields CameraInput / LidarInput / PoseInput (pipeline/sources/base.py); the
graph iterates them and the sync stage pairs them. Heavy imports happen in the modules
that need them, when a source is opened.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipeline.config import setting
from pipeline.errors import CalibrationError, ConfigError
from pipeline.sources.base import CameraInput, LidarInput, PoseInput, Skipped, Source, SourceInfo
from pipeline.sources.uri import SourceURI, parse_uri

log = logging.getLogger(__name__)

__all__ = ["CameraInput", "LidarInput", "PoseInput", "Skipped", "Source", "SourceInfo", "SourceURI", "parse_uri",
           "open_sources", "OpenedSources", "InputConfig"]

TOPIC_KEYS = ("image", "camera_info", "points", "tf", "semantic", "instance")


def _topics(value: Any, *, path: Any, field: str) -> dict[str, str]:
    from pipeline.config import check_unknown_keys, parse_value

    topics = parse_value(dict[str, str], value, path=path, name=field)
    check_unknown_keys(topics, set(TOPIC_KEYS), path=path, prefix=field + ".")
    for k, v in topics.items():
        if not v.startswith("/"):
            raise ConfigError(f"a topic name starting with '/', got {v!r}", path=path, field=f"{field}.{k}")
    return topics


@dataclass
class InputConfig:
    """``input:`` of a run config: what to read (URI grammar: pipeline/sources/uri.py)."""

    uri: str | None = setting(None, doc="a drive folder, bag, video, image folder, v4l2://, csi://, rtsp:// "
                              "(--input)")
    calibration: str | None = setting(None, doc="a rig file (calibration.io.load_rig); null: from the drive or bag")
    lidar: str | None = setting(None, doc="a live LiDAR (zenoh://KEY_EXPR?connect=...) beside a camera-only uri")
    topics: dict[str, str] = setting(factory=dict, parse=_topics, doc="bag topics by role: "
                                     + ", ".join(TOPIC_KEYS))
    camera_id: str | None = setting(None, doc="the rig camera a camera-only source feeds (null: the rig's only one)")
    fps: float | None = setting(None, unit="frames/s", above=0, doc="image folders: the rate of their synthetic "
                                "stamps (null: 10)")
    loop: bool = setting(False, doc="video files and image folders: start again at the end")
    cloud_fields: str | None = setting(None, doc="layout of raw float32 .bin clouds, e.g. x,y,z,intensity,ring "
                                       "(null: a <file>.fields sidecar, else nuScenes for .pcd.bin and calib.json's "
                                       "num_pts_feats, else KITTI x,y,z,intensity; pipeline/cloud_io.py)")


@dataclass
class OpenedSources:
    sources: list[Source]          # one (a drive or bag), or a camera and a live LiDAR
    rig: Any                       # calibration.rig.Rig, or None for a camera-only run without calibration
    camera_id: str
    lidar_id: str | None           # None: no LiDAR at all (every frame camera-only)

    def close(self) -> None:
        for s in self.sources:
            s.close()


def open_sources(inp, *, config_path: str = "<config>", want_truth: bool = False,
                 want_box_masks: bool = False) -> OpenedSources:
    """Open what ``inp`` (an InputConfig) names. Refuses at start, with an error naming
    the file and field: a missing input, an unknown URI, bad calibration, a camera that is
    not in the rig, a Zenoh LiDAR whose session cannot open. Whatever was opened is closed
    again when the start is refused."""
    if not inp.uri:
        raise ConfigError("no input: set input.uri in the config or pass --input", path=config_path,
                          field="input.uri")
    uri = parse_uri(inp.uri)
    rig = None
    if inp.calibration:
        from calibration.io import load_rig

        rig = load_rig(inp.calibration)
    if uri.kind in ("rosbag2", "ros1"):
        from pipeline.sources.bag import BagSource

        src: Source = BagSource(uri, topics=inp.topics, rig=rig, want_truth=want_truth, config_path=config_path)
    elif uri.kind == "kitti-raw":
        from pipeline.sources.drive import DriveSource

        src = DriveSource(uri, rig=rig)
    elif uri.kind in ("kitti-object", "nuscenes"):
        from pipeline.sources.dataset import DatasetSource

        src = DatasetSource(uri, rig=rig, box_masks=want_box_masks, cloud_fields=inp.cloud_fields)
    elif uri.kind == "zenoh":
        raise ConfigError("a zenoh:// URI is a live LiDAR: put it in input.lidar, and a camera in input.uri",
                          path=config_path, field="input.uri")
    else:
        from pipeline.sources.camera import OpenCVCameraSource

        camera_id = inp.camera_id or (rig.cameras[0].name if rig is not None and len(rig.cameras) == 1 else None)
        if rig is not None and camera_id not in rig.camera_names:
            raise CalibrationError(f"camera {camera_id!r} is not in the rig (cameras: {rig.camera_names}); set "
                                   "input.camera_id", path=inp.calibration, field="input.camera_id")
        src = OpenCVCameraSource(uri, camera_id=camera_id or "camera", rig=rig, fps=inp.fps, loop=inp.loop)
    sources = [src]
    camera_id = src.camera_id
    lidar_id = src.lidar_id if src.info.has_lidar else None
    try:
        if inp.lidar:
            if src.info.has_lidar:
                raise ConfigError(f"the input ({uri.kind}) already holds LiDAR sweeps; input.lidar is for camera-only "
                                  "inputs", path=config_path, field="input.lidar")
            lidar_uri = parse_uri(inp.lidar, field_name="input.lidar")
            if lidar_uri.kind != "zenoh":
                raise ConfigError(f"live LiDAR is a zenoh:// URI, got a {lidar_uri.kind} input", path=config_path,
                                  field="input.lidar")
            from pipeline.sources.zenoh_lidar import ZenohLidarSource

            lidar = ZenohLidarSource(lidar_uri, rig=rig)        # opens a Zenoh session and subscribes
            sources.append(lidar)
            lidar_id = lidar.lidar_id
        rig = src.rig if src.rig is not None else rig
        if lidar_id is not None and rig is None:
            raise CalibrationError("fusing LiDAR needs calibration: set input.calibration to a rig file",
                                   path=config_path, field="input.calibration")
        if rig is not None:
            if camera_id not in rig.camera_names:
                raise CalibrationError(f"camera {camera_id!r} of the input is not in the rig (cameras: "
                                       f"{rig.camera_names})", path=rig.source, field="cameras")
            if lidar_id is not None and lidar_id not in rig.lidar_names and len(rig.lidars) != 1:
                raise CalibrationError(f"LiDAR {lidar_id!r} of the input is not in the rig (lidars: {rig.lidar_names})",
                                       path=rig.source, field="lidars")
    except BaseException:
        for opened in sources:          # nothing stays open when the start is refused
            opened.close()
        raise
    return OpenedSources(sources, rig, camera_id, lidar_id)
