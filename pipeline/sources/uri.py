"""Source URIs, jetson-inference style.

Live cameras:   ``v4l2:///dev/video0``, ``csi://0`` (Jetson, GStreamer nvarguscamerasrc),
                ``rtsp://host:port/path`` (low latency, reconnects)
Recorded:       a plain path or ``file://PATH``: a rosbag2 folder, ``.mcap``, ``.db3``, a ROS 1
                ``.bag``, a KITTI raw drive folder (also ``segfuse sim --format kitti-raw``),
                a KITTI object folder (image_2/, velodyne/, calib/), a nuScenes keyframe
                folder (calib.json), a video file, or a folder of images
Live LiDAR:     ``zenoh://KEY_EXPR`` (PointCloud2 CDR; ``?connect=tcp/HOST:PORT``, pipeline/sources/zenoh_lidar.py)

Query parameters tune a source: ``csi://0?width=1920&height=1080&framerate=30&flip=0``,
``v4l2:///dev/video0?width=1280&height=720&framerate=30``, ``rtsp://...?latency=0``.
Light module: no imports beyond the standard library.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from pipeline.errors import ConfigError, InputDataError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".h264", ".h265")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LIVE_KINDS = ("v4l2", "csi", "rtsp", "zenoh")
RECORDED_KINDS = ("rosbag2", "ros1", "kitti-raw", "kitti-object", "nuscenes", "video", "images")
PARTIAL_MARK = ".partial-"


@dataclass(frozen=True)
class SourceURI:
    raw: str
    kind: str                      # one of LIVE_KINDS + RECORDED_KINDS
    location: str                  # a path, a device, a sensor id or a URL
    params: dict[str, str] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS

    @property
    def path(self) -> Path:
        return Path(self.location)


def parse_uri(uri: str, *, field_name: str = "input.uri") -> SourceURI:
    """Parse and classify a source URI or path; errors name ``field_name``."""
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError("empty source URI", field=field_name)
    uri = uri.strip()
    if "://" in uri:
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        params = dict(parse_qsl(parts.query))
        if scheme == "v4l2":
            device = parts.path or parts.netloc
            if not device:
                raise ConfigError("v4l2 URI needs a device, e.g. v4l2:///dev/video0", path=uri, field=field_name)
            return SourceURI(uri, "v4l2", device if device.startswith("/") else f"/dev/{device}", params)
        if scheme == "csi":
            sensor = parts.netloc or parts.path.strip("/") or "0"
            if not sensor.isdigit():
                raise ConfigError("csi URI needs a sensor number, e.g. csi://0", path=uri, field=field_name)
            return SourceURI(uri, "csi", sensor, params)
        if scheme in ("rtsp", "rtsps"):
            if not parts.netloc:
                raise ConfigError("rtsp URI needs a host, e.g. rtsp://192.168.1.10:8554/stream", path=uri,
                                  field=field_name)
            return SourceURI(uri, "rtsp", uri, params)
        if scheme == "zenoh":
            return SourceURI(uri, "zenoh", (parts.netloc + parts.path).strip("/"), params)
        if scheme == "file":
            return _classify_path(Path(parts.netloc + parts.path), uri, field_name, params)
        raise ConfigError(f"unknown URI scheme '{scheme}://' (known: v4l2, csi, rtsp, zenoh, file, or a plain path)",
                          path=uri, field=field_name)
    return _classify_path(Path(uri).expanduser(), uri, field_name, {})


def _classify_path(path: Path, raw: str, field_name: str, params: dict[str, str]) -> SourceURI:
    if not path.exists():
        raise InputDataError("input not found", path=path, field=field_name)
    if PARTIAL_MARK in path.name:
        raise InputDataError("this is an unfinished (interrupted) write, not a drive", path=path, field=field_name)
    loc = str(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".mcap", ".db3"):
            return SourceURI(raw, "rosbag2", loc, params)
        if suffix == ".bag":
            return SourceURI(raw, "ros1", loc, params)
        if suffix in VIDEO_SUFFIXES:
            return SourceURI(raw, "video", loc, params)
        raise InputDataError(f"unknown input file type '{suffix}' (a bag: .mcap .db3 .bag; a video: "
                             f"{' '.join(VIDEO_SUFFIXES)})", path=path, field=field_name)
    if (path / "metadata.yaml").is_file() or any(path.glob("*.mcap")) or any(path.glob("*.db3")):
        return SourceURI(raw, "rosbag2", loc, params)
    if (path / "image_02").is_dir() or (path / "velodyne_points").is_dir():
        return SourceURI(raw, "kitti-raw", loc, params)
    if (path / "calib.json").is_file():
        return SourceURI(raw, "nuscenes", loc, params)
    if all((path / d).is_dir() for d in ("image_2", "velodyne", "calib")):
        return SourceURI(raw, "kitti-object", loc, params)
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir() if p.is_file()):
        return SourceURI(raw, "images", loc, params)
    raise InputDataError("folder is not a drive (rosbag2: metadata.yaml or .mcap; KITTI raw: image_02/ or "
                         "velodyne_points/; KITTI object: image_2/ velodyne/ calib/; nuScenes: calib.json) and "
                         "holds no images", path=path, field=field_name)
