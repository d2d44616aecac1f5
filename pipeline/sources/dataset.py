"""Real dataset folders as a source: KITTI object benchmark folders and nuScenes keyframes
(pipeline/datasets/readers.py).

Each dataset frame is already a paired sample, so each comes out as one LiDAR sweep and one
camera item carrying all of that instant's cameras (nuScenes: six; KITTI: cam2), with the
sweep's stamp as the set's pairing stamp (``CameraInput.set_stamp_ns``) while every frame keeps
its own exposure stamp. KITTI object frames each carry their own calibration (image sizes vary
per frame), attached to the frame (``CameraInput.rig``); the source's ``rig`` is the first
frame's. With ``box_masks`` (``masks: label_boxes``) the labelled 3D boxes come along as
rectangular instance masks per camera: an ORACLE standing in for the models.
A frame that cannot be read is skipped, counted and reported; the run goes on.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.errors import CalibrationError, InputDataError
from pipeline.sources.base import CameraInput, LidarInput, Source, SourceInfo, SourceItem
from pipeline.sources.uri import SourceURI


class DatasetSource(Source):
    def __init__(self, uri: SourceURI, *, rig: Any = None, box_masks: bool = False,
                 cloud_fields: str | None = None) -> None:
        super().__init__()
        from pipeline.datasets.readers import open_dataset

        self.dataset = open_dataset(uri.path, cloud_fields=cloud_fields)
        self._fixed_rig = rig
        self.rig = rig if rig is not None else self.dataset.rig(0)
        self.box_masks = box_masks
        self.per_frame_rig = rig is None and self.dataset.kind == "kitti-object"
        self.camera_ids = ([c.name for c in self.rig.cameras] if self.dataset.kind == "nuscenes"
                           else ["cam2"])
        self.camera_id = self.camera_ids[0]
        self.lidar_id = self.rig.lidars[0].name
        self.info = SourceInfo(name=f"{self.dataset.kind} {uri.path.name}", uri=uri.raw, kind=uri.kind, live=False,
                               rate_hz=10.0, num_frames=len(self.dataset), has_lidar=True, has_poses=False,
                               has_truth=False, extra={"label_boxes": bool(self.dataset.has_labels),
                                                       "cameras": list(self.camera_ids), "real": True})

    def _items(self) -> Iterator[SourceItem]:
        from pipeline.config import load_taxonomy
        from pipeline.datasets.boxes import box_masks

        ignore = load_taxonomy().ignore_id
        for k in range(len(self.dataset)):
            try:
                f = self.dataset.read(k)
            except (InputDataError, CalibrationError) as exc:
                self.skip("frame", str(exc.path or self.dataset.path), f"frame {k}: {exc.message}")
                continue
            rig = f.rig if self.per_frame_rig else self.rig
            truth = {}
            if self.box_masks:
                for cam in f.cameras:
                    sensor = rig.camera(cam.camera_id)
                    truth[cam.camera_id] = box_masks(f.boxes, np.linalg.inv(sensor.T_base_from_cam), sensor.model,
                                                     ignore)
            first = f.cameras[0]
            sem, inst = truth.pop(first.camera_id, (None, None))
            yield LidarInput(f.lidar, k)
            yield CameraInput(first, k, sem, inst, more=list(f.cameras[1:]), more_truth=truth,
                              set_stamp_ns=int(f.lidar.stamp_ns), set_lidar_id=f.lidar.lidar_id,
                              rig=f.rig if self.per_frame_rig else None)

    def close(self) -> None:
        pass
