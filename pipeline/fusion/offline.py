"""Offline fusion of masks a user already has (the function behind `segfuse fuse`).

Inputs: a rig (any format calibration.io.load_rig reads), a cloud (.bin, .pcd, .ply, .npy),
a semantic PNG of taxonomy class ids, optionally an instance PNG of instance ids (8 or 16
bit, 0 = none) with a JSON mapping each id to its class and score:
``{"3": {"class": "car", "score": 0.93}, ...}``.
Outputs in DIR: ``fused.npz`` (points, class_id, instance_id, score, camera_index, flags),
``fused.ply`` (coloured by class), ``objects.json``, ``lanes.json``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import Taxonomy, load_taxonomy
from pipeline.errors import InputDataError
from pipeline.fusion.config import FusionConfig
from pipeline.fusion.frame import CameraMasks, FusionResult, fuse_frame
from pipeline.fusion.label import InstanceMap
from pipeline.types import FLAG_OCCLUDED, FLAG_OUTSIDE, LidarSweep

log = logging.getLogger(__name__)


def read_label_png(path: str | Path, *, field: str, expect_shape: tuple[int, int] | None = None) -> np.ndarray:
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputDataError("file not found", path=path, field=field)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputDataError("not a readable image (corrupt or not a PNG)", path=path, field=field)
    if img.ndim != 2:
        raise InputDataError(f"expected a single-channel label image, got shape {img.shape}", path=path, field=field)
    if expect_shape is not None and img.shape != expect_shape:
        raise InputDataError(f"image is {img.shape[1]}x{img.shape[0]} but the camera is "
                             f"{expect_shape[1]}x{expect_shape[0]}", path=path, field=field)
    return img


def read_instance_meta(path: str | Path, taxonomy: Taxonomy, ids: np.ndarray) -> InstanceMap:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputDataError("file not found", path=path, field="--instances-meta") from None
    except json.JSONDecodeError as exc:
        raise InputDataError(f"not valid JSON: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise InputDataError("expected an object mapping instance id to {class, score}", path=path)
    top = int(ids.max()) if ids.size else 0
    class_of = np.zeros(top + 1, np.uint8)
    score_of = np.zeros(top + 1, np.float32)
    for key, entry in data.items():
        if not key.isdigit() or not isinstance(entry, dict) or "class" not in entry:
            raise InputDataError("each entry must be \"<id>\": {\"class\": name, \"score\": number}", path=path, field=key)
        iid = int(key)
        if iid == 0 or iid > top:
            continue   # id 0 is 'none'; ids absent from the image are harmless
        try:
            class_of[iid] = taxonomy.id(entry["class"])
        except Exception:
            raise InputDataError(f"unknown class '{entry['class']}'", path=path, field=f"{key}.class") from None
        score = entry.get("score", 1.0)
        if not isinstance(score, (int, float)) or not 0 <= score <= 1:
            raise InputDataError("score must be a number within 0..1", path=path, field=f"{key}.score")
        score_of[iid] = score
    missing = sorted(set(np.unique(ids[ids > 0]).tolist()) - {int(k) for k in data if k.isdigit()})
    if missing:
        raise InputDataError(f"instance ids {missing[:5]} appear in the image but not in the JSON", path=path)
    return InstanceMap(ids.astype(np.uint16), class_of, score_of)


@dataclass
class OfflineSummary:
    result: FusionResult
    out: Path
    taxonomy: Taxonomy

    def render(self) -> str:
        c = self.result.cloud
        n = len(c.points)
        in_image = int(((c.flags & FLAG_OUTSIDE) == 0).sum())
        occluded = int(((c.flags & FLAG_OCCLUDED) != 0).sum())
        labelled = int((c.class_id != self.taxonomy.ignore_id).sum())
        lines = [f"segfuse fuse: {n:,} points, {in_image:,} in the image, {labelled:,} labelled, "
                 f"{occluded:,} occluded -> {self.out}"]
        for o in self.result.objects:
            lines.append(f"  object {o.instance_id:>6} {self.taxonomy.names[o.class_id]:<11} {o.num_points:>6} pts "
                         f"range {o.range_m:6.1f} m  centre ({o.box_center[0]:.1f}, {o.box_center[1]:.1f})")
        for ln in self.result.lanes:
            lines.append(f"  lane   {ln.type:<7} x {ln.x_min_m:5.1f}..{ln.x_max_m:5.1f} m  y(0) = {ln.coeffs[0]:+.2f} m")
        return "\n".join(lines)


def fuse_files(*, rig_path: str | Path, cloud_path: str | Path, semantic_path: str | Path | None,
               instances_path: str | Path | None, instances_meta_path: str | Path | None, out: str | Path,
               camera: str | None = None, cfg: FusionConfig | None = None,
               cloud_fields: str | None = None) -> OfflineSummary:
    from calibration.io import load_rig
    from pipeline.cloud_io import read_cloud

    taxonomy = load_taxonomy()
    cfg = cfg or FusionConfig(ego_motion=False)
    rig = load_rig(rig_path)
    cam = rig.camera(camera) if camera else rig.default_camera
    shape = (cam.height, cam.width)
    cloud = read_cloud(cloud_path, fields=cloud_fields)
    finite = np.isfinite(np.asarray(cloud.points)[:, :3]).all(axis=1) if len(cloud.points) else np.zeros(0, bool)
    if not finite.any():
        raise InputDataError(f"the cloud has no point with finite x, y, z ({len(cloud.points)} points"
                             f"{', all NaN or infinite' if len(cloud.points) else ''}): nothing to fuse",
                             path=cloud_path, field="--cloud")
    semantic = read_label_png(semantic_path, field="--semantic", expect_shape=shape) if semantic_path else None
    if semantic is not None:
        if semantic.dtype != np.uint8:
            raise InputDataError("semantic PNG must be 8-bit class ids", path=semantic_path, field="--semantic")
        bad = (semantic >= taxonomy.num_classes) & (semantic != taxonomy.ignore_id)
        if bad.any():
            raise InputDataError(f"class id {int(semantic[bad][0])} is not in the taxonomy", path=semantic_path,
                                 field="--semantic")
    instances = None
    if instances_path:
        if not instances_meta_path:
            raise InputDataError("--instances needs --instances-meta (each id's class and score)", path=instances_path)
        ids = read_label_png(instances_path, field="--instances", expect_shape=shape)
        instances = read_instance_meta(instances_meta_path, taxonomy, ids)
    sweep = LidarSweep(rig.lidar().name, 0, cloud.points)
    result = fuse_frame(sweep, [CameraMasks(cam.name, 0, semantic, instances)], rig, cfg, taxonomy)
    out = Path(out)
    write_result(result, out, taxonomy)
    return OfflineSummary(result, out, taxonomy)


def write_result(result: FusionResult, out: Path, taxonomy: Taxonomy) -> None:
    from pipeline.cloud_io import write_ply

    out.mkdir(parents=True, exist_ok=True)
    c = result.cloud
    np.savez_compressed(out / "fused.npz", points=c.points, class_id=c.class_id, instance_id=c.instance_id,
                        score=c.score, camera_index=c.camera_index, flags=c.flags)
    write_ply(out / "fused.ply", c.points, taxonomy.color_lut()[c.class_id])
    objects = [{"instance_id": o.instance_id, "class": taxonomy.names[o.class_id], "score": round(o.score, 4),
                "centroid_m": np.round(o.centroid, 3).tolist(), "box_center_m": np.round(o.box_center, 3).tolist(),
                "box_size_m": np.round(o.box_size, 3).tolist(), "yaw_rad": round(o.yaw, 4),
                "range_m": round(o.range_m, 3), "num_points": o.num_points} for o in result.objects]
    lanes = [{"coeffs": [float(x) for x in ln.coeffs], "x_min_m": round(ln.x_min_m, 3), "x_max_m": round(ln.x_max_m, 3),
              "type": ln.type, "confidence": round(ln.confidence, 3)} for ln in result.lanes]
    (out / "objects.json").write_text(json.dumps({"frame": "base", "objects": objects}, indent=1))
    (out / "lanes.json").write_text(json.dumps({"frame": "base", "model": "y = c0 + c1 x + c2 x^2 + c3 x^3",
                                                "lanes": lanes}, indent=1))
