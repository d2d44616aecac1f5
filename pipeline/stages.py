"""The runtime's stages, each a small class with a typed input and output (docs/architecture.md):

::

    SyncedFrame ──► Preprocess ──► Batches ──► Infer ×2 (parallel) ──► ModelOutputs
                                                                        │
    SyncedFrame, Batches, ModelOutputs ──► Postprocess ──► Masks ◄── GroundTruthMasks (oracle)
    SyncedFrame, Masks ──► Fuse ──► FusionResult

The graph (pipeline/graph.py) runs them; the sinks then take one frozen ``FrameResult``.
``EnginesConfig`` (the ``engines:`` section) lives here, beside the stages that use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import setting
from pipeline.errors import ConfigError, InputDataError
from pipeline.preprocess import RESIZE_MODES, Batches
from pipeline.types import FusionResult, Masks, ModelOutput, ModelOutputs, SemanticMask, SyncedFrame


def _engine_section(kind: str):
    """``engines.<kind>``: an engine config mapping (engines.factory.EngineConfig) or a YAML path."""

    def parse(value: Any, *, path: Any, field: str) -> Any:
        from engines.factory import engine_config_from_dict, load_engine_config

        if value is None:
            return None
        prefix = field + "."
        try:
            if isinstance(value, str):
                cfg = load_engine_config(value)
            elif isinstance(value, dict):
                cfg = engine_config_from_dict({"kind": kind, **value}, path=path, prefix=prefix)
            else:
                raise ConfigError(f"expected an engine config mapping or a YAML path, got {type(value).__name__}",
                                  path=path, field=field)
        except ConfigError as exc:
            if exc.path == path and exc.field and not exc.field.startswith(prefix):
                raise ConfigError(exc.message, path=path, field=prefix + exc.field) from None
            raise
        if cfg.kind is None:
            cfg.kind = kind
        if cfg.kind != kind:
            raise ConfigError(f"kind must be {kind} here, got {cfg.kind}", path=path, field=prefix + "kind")
        return cfg

    return parse


def _engine_config_class() -> type:
    """The documented schema of ``engines.<kind>`` (engines.factory.EngineConfig), imported when read."""
    from engines.factory import EngineConfig

    return EngineConfig


@dataclass
class EnginesConfig:
    """``engines:`` of a run config: the two models (used with ``masks: engines``) and the resize."""

    deeplab: Any = setting(None, doc="DeepLab engine: an engine config (keys below) or the path of its YAML file",
                           parse=_engine_section("deeplab"), section=_engine_config_class)
    maskrcnn: Any = setting(None, doc="Mask R-CNN engine: an engine config (keys below) or the path of its YAML file",
                            parse=_engine_section("maskrcnn"), section=_engine_config_class)
    resize: str = setting("letterbox", choices=RESIZE_MODES, doc="camera frame -> model input: letterbox keeps the "
                          "aspect ratio (padding), pad only pads (never resamples), stretch scales each axis")


# --- Stages ---------------------------------------------------------------------------------

class GroundTruthMasks:
    """``SyncedFrame -> Masks``: the drive's ground-truth masks stand in for the models (an
    ORACLE, labelled so in every summary and recording)."""

    def __call__(self, frame: SyncedFrame) -> Masks:
        from pipeline.fusion.label import InstanceMap

        semantic, maps = {}, {}
        for cam in frame.cameras:
            cid = cam.camera_id
            truth = frame.truth.get(cid)
            if truth is None or truth.semantic is None:
                raise InputDataError(f"frame {frame.frame_index} has no ground-truth masks (masks: ground_truth)",
                                     field=f"/gt/{cid}/semantic")
            semantic[cid] = SemanticMask(cid, truth.semantic)
            if truth.instance_ids is not None:
                maps[cid] = InstanceMap.from_id_image(truth.instance_ids, truth.semantic)
        return Masks(semantic=semantic, instance_maps=maps)


class Preprocess:
    """``SyncedFrame -> Batches``: camera frames -> one engine batch per model (pipeline.preprocess)."""

    def __init__(self, input_hw: dict[str, tuple[int, int]], resize: str) -> None:
        self.input_hw = input_hw
        self.resize = resize

    def __call__(self, frame: SyncedFrame) -> Batches:
        from pipeline.preprocess import preprocess_frames

        return Batches({kind: preprocess_frames(frame.cameras, hw, mode=self.resize)
                        for kind, hw in self.input_hw.items()})


class Infer:
    """``Batches -> ModelOutput``: one engine on its batch (its own session / stream / thread)."""

    def __init__(self, kind: str, engine: Any) -> None:
        self.kind = kind
        self.engine = engine

    def __call__(self, batches: Batches) -> ModelOutput:
        out = _infer_frames(self.engine, self.kind, batches.by_kind[self.kind].feed())   # a camera set: per frame
        return ModelOutput(self.kind, out)


class Postprocess:
    """``Batches, ModelOutputs -> Masks``: outputs back to camera resolution (pipeline.postprocess),
    Mask R-CNN detections below ``score_threshold`` dropped, masks cut at ``mask_threshold``.
    What each model returned is checked first (pipeline.postprocess.check_model_outputs): class
    ids outside the taxonomy, boxes not finite or outside the image, masks of the wrong shape fail
    the frame (EngineError naming the model file, ``models[kind]``, and the output; counted)."""

    def __init__(self, taxonomy: Any, score_threshold: float, mask_threshold: float,
                 models: dict[str, str] | None = None) -> None:
        self.taxonomy = taxonomy
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.models = models or {}

    def __call__(self, batches: Batches, outputs: ModelOutputs) -> Masks:
        from pipeline.fusion.label import InstanceMap
        from pipeline.postprocess import check_model_outputs, postprocess_batch

        ignore = self.taxonomy.ignore_id
        for kind, out in outputs.by_kind.items():
            for one in (out if isinstance(out, list) else [out]):       # a camera set: one output per frame
                check_model_outputs(kind, one, input_hw=batches.by_kind[kind].transforms[0].dst_hw,
                                    num_classes=self.taxonomy.num_classes, ignore_id=ignore,
                                    model=self.models.get(kind, kind))
        semantic, instances, maps = {}, {}, {}
        if "deeplab" in outputs.by_kind:
            b = batches.by_kind["deeplab"]
            for m in postprocess_batch("deeplab", outputs.by_kind["deeplab"], b.transforms, b.camera_ids,
                                       ignore_id=ignore):
                semantic[m.camera_id] = m
        if "maskrcnn" in outputs.by_kind:
            b = batches.by_kind["maskrcnn"]
            outs = outputs.by_kind["maskrcnn"]
            per_frame = outs if isinstance(outs, list) else [outs]     # a camera set: one output per frame
            for k, out in enumerate(per_frame):
                for inst in postprocess_batch("maskrcnn", out, b.transforms[k:k + 1], b.camera_ids[k:k + 1],
                                              score_threshold=self.score_threshold,
                                              mask_threshold=self.mask_threshold, ignore_id=ignore):
                    instances[inst.camera_id] = inst
                    maps[inst.camera_id] = InstanceMap.from_instances(inst)
        return Masks(semantic=semantic, instances=instances, instance_maps=maps)


class Fuse:
    """``SyncedFrame, Masks -> FusionResult``: labelled cloud, objects, lanes
    (pipeline.fusion.frame.fuse_frame). A camera-only frame (no sweep) or a run without a rig
    gives no result (``FrameResult.fusion`` is None): the sinks record its masks and flag it."""

    def __init__(self, rig: Any, fusion_cfg: Any, taxonomy: Any) -> None:
        self.rig = rig
        self.cfg = fusion_cfg
        self.taxonomy = taxonomy
        self.points_by_camera: dict[str, dict[str, int]] = {}   # camera: points it covers / labelled, whole run

    def __call__(self, frame: SyncedFrame, masks: Masks) -> FusionResult | None:
        from pipeline.fusion.frame import CameraMasks, fuse_frame

        rig = frame.rig if frame.rig is not None else self.rig     # per-frame calibration (KITTI object)
        if frame.lidar is None or rig is None:
            return None
        cams = []
        for cam in frame.cameras:
            sem = masks.semantic.get(cam.camera_id)
            cams.append(CameraMasks(cam.camera_id, cam.stamp_ns, None if sem is None else sem.class_ids,
                                    masks.instance_maps.get(cam.camera_id)))
        result = fuse_frame(frame.lidar, cams, rig, self.cfg, self.taxonomy, frame.poses)
        _count_by_camera(self.points_by_camera, result.cloud, [c.camera for c in cams], self.taxonomy.ignore_id)
        return result

    def warm_up(self, camera_id: str, lidar_id: str | None) -> None:
        """One small fusion before the first frame: loads the compiled kernels and Open3D, so the
        first real frame is not seconds late (matters for live latency and for timings)."""
        from pipeline.fusion import kernels
        from pipeline.fusion.frame import CameraMasks, fuse_frame
        from pipeline.fusion.label import InstanceMap
        from pipeline.types import LidarSweep

        kernels.warm_up()                  # every kernel, also those this small fusion does not reach
        if self.rig is None or lidar_id is None:
            return
        cam = self.rig.camera(camera_id)
        rng = np.random.default_rng(0)
        pts = np.zeros((400, 4), np.float32)
        pts[:, :3] = rng.uniform((-20, -20, -2), (20, 20, 2), (400, 3))
        sem = np.zeros((cam.height, cam.width), np.uint8)
        ids = np.zeros((cam.height, cam.width), np.uint16)
        ids[: cam.height // 2, : cam.width // 2] = 1
        sweep = LidarSweep(lidar_id, 0, pts, np.zeros(400, np.int64))
        fuse_frame(sweep, [CameraMasks(camera_id, 0, sem, InstanceMap.from_id_image(ids, sem))], self.rig, self.cfg,
                   self.taxonomy, None)


def model_input_hw(engines: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {kind: tuple(e.input_hw) for kind, e in engines.items()}


def masks_label(engines_cfg: EnginesConfig) -> str:
    d, m = engines_cfg.deeplab, engines_cfg.maskrcnn
    return (f"DeepLab ({Path(d.model).name}, {d.backend}) + Mask R-CNN ({Path(m.model).name}, {m.backend})")


# --- camera sets ----------------------------------------------------------------------------

def _infer_frames(engine: Any, kind: str, feed: dict[str, np.ndarray]) -> Any:
    """``engine.infer`` on ``feed``; with several frames and an engine whose batch is fixed at a
    different size, one call per frame: DeepLab outputs are stacked, Mask R-CNN's (no batch
    axis) come back as a list, one per frame."""
    images = feed["images"]
    n = int(images.shape[0])
    batch_dim = engine.inputs[0].shape[0] if getattr(engine, "inputs", None) else None
    if n == 1 or batch_dim is None or batch_dim == n:
        return engine.infer(feed)
    outs = [engine.infer({"images": images[i:i + 1]}) for i in range(n)]
    if kind == "maskrcnn":
        return outs
    return {k: np.concatenate([o[k] for o in outs], axis=0) for k in outs[0]}


def _count_by_camera(counts: dict[str, dict[str, int]], cloud: Any, camera_names: list[str], ignore_id: int) -> None:
    """Add to ``counts[camera]`` the points of ``cloud`` that camera covers (``points``: it is
    the camera the multi-camera rule gave them to) and those of them it labelled (``labelled``)."""
    k_all = cloud.camera_index[cloud.camera_index >= 0].astype(np.int64)
    k_lab = cloud.camera_index[(cloud.camera_index >= 0) & (cloud.class_id != ignore_id)].astype(np.int64)
    h_all = np.bincount(k_all, minlength=len(camera_names))
    h_lab = np.bincount(k_lab, minlength=len(camera_names))
    for k, name in enumerate(camera_names):
        c = counts.setdefault(name, {"points": 0, "labelled": 0})
        c["points"] += int(h_all[k])
        c["labelled"] += int(h_lab[k])
