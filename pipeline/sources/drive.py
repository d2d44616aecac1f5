"""A recorded drive read through ``pipeline.drive.io.open_drive``: KITTI raw folders (real
KITTI ``*_sync`` drives, and ``segfuse sim --format kitti-raw`` drives with ground truth).

Per drive frame it yields the frame's ego poses, then the LiDAR sweep and the camera image in
stamp order. A corrupt frame (unreadable PNG, truncated ``.bin``) is skipped, counted and
reported by the drive reader; the run goes on.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipeline.sources.base import CameraInput, LidarInput, PoseInput, Source, SourceInfo, SourceItem
from pipeline.sources.uri import SourceURI


class DriveSource(Source):
    def __init__(self, uri: SourceURI, *, rig: Any = None) -> None:
        super().__init__()
        from calibration.rig import rig_from_drive_calib
        from pipeline.drive.io import open_drive

        self.drive = open_drive(uri.path)
        calib = self.drive.calib
        try:
            self.rig = rig if rig is not None else rig_from_drive_calib(calib, source=str(uri.path))
        except BaseException:
            self.drive.close()
            raise
        self.camera_id = calib.camera_id if rig is None else (calib.camera_id if calib.camera_id in rig.camera_names
                                                              else rig.cameras[0].name)
        self.lidar_id = calib.lidar_id if rig is None else (calib.lidar_id if calib.lidar_id in rig.lidar_names
                                                            else rig.lidars[0].name)
        meta = self.drive.meta
        self.info = SourceInfo(name=f"{self.drive.format} drive {uri.path.name}", uri=uri.raw, kind=uri.kind,
                               live=False, rate_hz=meta.rate_hz if meta else 10.0, num_frames=len(self.drive),
                               has_lidar=True, has_poses=True, has_truth=True)

    def _items(self) -> Iterator[SourceItem]:
        from pipeline.drive.common import pose_window_ns

        seen = 0
        for f in self.drive.frames(on_error="skip"):
            for s in self.drive.skipped[seen:]:
                self.skip("frame", s.path or str(self.drive.path), f"frame {s.index}: {s.reason}")
            seen = len(self.drive.skipped)
            cam = f.camera
            if cam.camera_id != self.camera_id:
                cam = type(cam)(self.camera_id, cam.stamp_ns, cam.image)
            sweep = f.lidar
            if sweep.lidar_id != self.lidar_id:
                sweep = type(sweep)(self.lidar_id, sweep.stamp_ns, sweep.points, sweep.t_offset_ns)
            window = pose_window_ns(cam.stamp_ns, sweep.stamp_ns)
            yield PoseInput(f.pose_stamps_ns, f.T_world_from_base, window[1])
            camera = CameraInput(cam, f.index, f.semantic, f.instance)
            lidar = LidarInput(sweep, f.index)
            yield from sorted((lidar, camera), key=lambda x: x.stamp_ns)
        for s in self.drive.skipped[seen:]:
            self.skip("frame", s.path or str(self.drive.path), f"frame {s.index}: {s.reason}")

    def close(self) -> None:
        self.drive.close()
