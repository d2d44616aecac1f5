"""Camera-only sources through OpenCV (with GStreamer where OpenCV was built with it).

- ``video``: a video file; stamps from the file's own timeline (deterministic replay)
- ``images``: a folder of images in name order; stamps ``i / fps`` (``input.fps``, default 10)
- ``v4l2:///dev/videoN``: a V4L2 camera (stamps: system clock at capture)
- ``csi://N``: a Jetson CSI camera through GStreamer ``nvarguscamerasrc``
- ``rtsp://...``: a network stream; low latency (GStreamer ``rtspsrc latency=0`` + appsink
  ``drop=true max-buffers=1``, or FFmpeg with ``nobuffer``/``low_delay`` and a one-frame
  buffer), and reconnects with back-off when the stream drops

A frame that cannot be decoded is skipped, counted and reported; the run goes on.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, InputDataError
from pipeline.sources.base import CameraInput, Source, SourceInfo, SourceItem
from pipeline.sources.uri import IMAGE_SUFFIXES, SourceURI
from pipeline.types import CameraFrame

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)


def has_gstreamer() -> bool:
    import cv2

    return any(line.strip().startswith("GStreamer:") and "YES" in line
               for line in cv2.getBuildInformation().splitlines())


def csi_pipeline(sensor: str, params: dict[str, str]) -> str:
    """The GStreamer pipeline of a Jetson CSI camera (nvarguscamerasrc -> BGR appsink)."""
    w, h = int(params.get("width", 1920)), int(params.get("height", 1080))
    fps, flip = int(params.get("framerate", 30)), int(params.get("flip", 0))
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={w},height={h},"
            f"framerate={fps}/1,format=NV12 ! nvvidconv flip-method={flip} ! video/x-raw,format=BGRx ! "
            "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")


def rtsp_pipeline(url: str, params: dict[str, str]) -> str:
    """A low-latency GStreamer pipeline for an RTSP stream (drops late frames, one-frame sink)."""
    latency = int(params.get("latency", 0))
    return (f"rtspsrc location={url} latency={latency} drop-on-latency=true ! decodebin ! videoconvert ! "
            "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")


class OpenCVCameraSource(Source):
    def __init__(self, uri: SourceURI, *, camera_id: str, rig: Any = None, fps: float | None = None,
                 loop: bool = False) -> None:
        super().__init__()
        self.uri = uri
        self.camera_id = camera_id
        self.lidar_id = None
        self.rig = None                      # calibration, if any, comes from input.calibration
        self._size = None
        if rig is not None and camera_id in rig.camera_names:
            cam = rig.camera(camera_id)
            self._size = (int(cam.height), int(cam.width))
        self._loop = loop
        self._fps = fps
        self._cap = None
        self.reconnects = 0
        self._files: list[Path] = []
        live = uri.live
        num = None
        rate = fps
        if uri.kind == "images":
            self._files = sorted(p for p in uri.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            num = len(self._files)
            rate = fps or 10.0
        else:
            self._cap = self._open()
            if uri.kind == "video":
                import cv2

                num = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
                rate = fps or (self._cap.get(cv2.CAP_PROP_FPS) or None)
        self.info = SourceInfo(name=f"{uri.kind} {uri.location}", uri=uri.raw, kind=uri.kind, live=live, rate_hz=rate,
                               num_frames=None if loop else num, has_lidar=False, has_poses=False, has_truth=False)

    def _open(self) -> Any:
        import cv2

        kind, loc, params = self.uri.kind, self.uri.location, self.uri.params
        if kind == "video":
            cap = cv2.VideoCapture(loc)
        elif kind == "v4l2":
            cap = cv2.VideoCapture(loc, cv2.CAP_V4L2)
            for prop, key in ((cv2.CAP_PROP_FRAME_WIDTH, "width"), (cv2.CAP_PROP_FRAME_HEIGHT, "height"),
                              (cv2.CAP_PROP_FPS, "framerate")):
                if key in params:
                    cap.set(prop, float(params[key]))
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        elif kind == "csi":
            if not has_gstreamer():
                raise ConfigError("csi:// needs OpenCV built with GStreamer (JetPack's OpenCV is); this OpenCV has "
                                  "no GStreamer", path=self.uri.raw, field="input.uri")
            cap = cv2.VideoCapture(csi_pipeline(loc, params), cv2.CAP_GSTREAMER)
        elif kind == "rtsp":
            if has_gstreamer():
                cap = cv2.VideoCapture(rtsp_pipeline(loc, params), cv2.CAP_GSTREAMER)
            else:
                os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS",
                                      "rtsp_transport;tcp|fflags;nobuffer|flags;low_delay|max_delay;0")
                cap = cv2.VideoCapture(loc, cv2.CAP_FFMPEG)
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        else:
            raise ConfigError(f"not a camera input: {kind}", path=self.uri.raw, field="input.uri")
        if not cap.isOpened():
            raise InputDataError(f"OpenCV cannot open this {kind} input", path=self.uri.raw, field="input.uri")
        return cap

    def _checked(self, image: np.ndarray | None, where: str) -> np.ndarray | None:
        if image is None or image.ndim != 3 or image.shape[2] != 3:
            self.skip("image", where, "cannot decode the image")
            return None
        if self._size is not None and image.shape[:2] != self._size:
            self.skip("image", where, f"image is {image.shape[1]}x{image.shape[0]}, the calibration says "
                                      f"{self._size[1]}x{self._size[0]}")
            return None
        return image

    def _items(self) -> Iterator[SourceItem]:
        if self.uri.kind == "images":
            yield from self._images()
        elif self.uri.kind == "video":
            yield from self._video()
        else:
            yield from self._device()

    def _images(self) -> Iterator[SourceItem]:
        import cv2

        period_ns = int(round(1e9 / self.info.rate_hz))
        seq = 0
        while True:
            for path in self._files:
                image = self._checked(cv2.imread(str(path), cv2.IMREAD_COLOR), str(path))
                if image is not None:
                    yield CameraInput(CameraFrame(self.camera_id, seq * period_ns, image), seq)
                seq += 1
            if not self._loop or self.stopped:
                return

    def _video(self) -> Iterator[SourceItem]:
        import cv2

        seq, offset_ns, last_ns = 0, 0, 0
        while not self.stopped:
            ok, image = self._cap.read()
            if not ok:
                if self._loop and seq:
                    self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    offset_ns = last_ns + int(1e9 / (self.info.rate_hz or 10.0))
                    continue
                return
            if self._fps:
                stamp = offset_ns + int(round(seq * 1e9 / self._fps))
            else:
                stamp = offset_ns + int(round(self._cap.get(cv2.CAP_PROP_POS_MSEC) * 1e6))
            last_ns = stamp
            image = self._checked(image, f"{self.uri.location}#{seq}")
            if image is not None:
                yield CameraInput(CameraFrame(self.camera_id, stamp, image), seq)
            seq += 1

    def _device(self) -> Iterator[SourceItem]:
        seq, failures = 0, 0
        while not self.stopped:
            ok, image = self._cap.read()
            stamp = time.time_ns()             # live: capture time on the system clock, as ROS drivers stamp
            if not ok:
                failures += 1
                if self.uri.kind != "rtsp":
                    raise InputDataError(f"camera stopped delivering frames after {seq}", path=self.uri.raw)
                self._reconnect(failures)
                continue
            failures = 0
            image = self._checked(image, f"{self.uri.raw}#{seq}")
            if image is not None:
                yield CameraInput(CameraFrame(self.camera_id, stamp, image), seq)
            seq += 1

    def _reconnect(self, failures: int) -> None:
        wait = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S)) - 1]
        log.warning("%s: stream lost; reconnecting in %.1f s", self.uri.raw, wait)
        self._stop.wait(wait)
        if self.stopped:
            return
        if self._cap is not None:
            self._cap.release()
        try:
            self._cap = self._open()
            self.reconnects += 1
            log.info("%s: reconnected", self.uri.raw)
        except InputDataError as exc:
            log.warning("%s", exc)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
