"""Fusion parameters (the ``fusion:`` section of a pipeline config), validated at load.

Names follow Autoware's image_projection_based_fusion where one exists."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import check_unknown_keys, get_key
from pipeline.errors import ConfigError

EDGE_MODES = ("none", "erode", "depth_gate")
MULTI_CAMERA_RULES = ("border", "score")


@dataclass
class FusionConfig:
    min_depth_m: float = 1.0
    # occlusion: z-buffer from the cloud itself
    occlusion: bool = True
    splat_half_px: tuple[int, int] = (1, 3)       # half width, half height of a point's footprint (px)
    occlusion_tol_m: float = 0.3                  # tolerance = tol_m + tol_rel * d + tol_sq * d^2
    occlusion_tol_rel: float = 0.05
    occlusion_tol_sq: float = 0.002               # per metre of depth, squared (grazing road)
    occlusion_mask_check: bool = True             # hidden only if the image shows the occluder there
    # mask edges
    edge_mode: str = "none"                        # none | erode | depth_gate
    erode_px: int = 2
    depth_gate_gap_m: float = 1.0
    multi_camera: str = "border"                   # border | score
    min_instance_score: float = 0.5
    # ego motion: move each point to where it was at the camera's exposure time
    ego_motion: bool = True
    # 3D objects
    object_cluster_eps_m: float = 0.7
    object_min_points: int = 5
    # lanes
    ground_ransac_dist_m: float = 0.12
    lane_min_points: int = 12
    lane_max_range_m: float = 60.0
    extra: dict = field(default_factory=dict)

    @staticmethod
    def from_dict(data: dict[str, Any] | None, *, path: str | Path = "<config>", prefix: str = "fusion.") -> "FusionConfig":
        data = data or {}
        d = FusionConfig()
        allowed = set(asdict(d)) - {"extra"}
        check_unknown_keys(data, allowed, path=path, prefix=prefix)
        kw: dict[str, Any] = {}
        for key, default in asdict(d).items():
            if key == "extra" or key not in data:
                continue
            if isinstance(default, bool):
                kw[key] = get_key(data, key, bool, path=path, prefix=prefix)
            elif isinstance(default, int):
                kw[key] = get_key(data, key, int, path=path, prefix=prefix)
            elif isinstance(default, float):
                kw[key] = get_key(data, key, float, path=path, prefix=prefix)
            elif isinstance(default, str):
                kw[key] = get_key(data, key, str, path=path, prefix=prefix)
            elif isinstance(default, tuple):
                v = get_key(data, key, list, path=path, prefix=prefix)
                if len(v) != 2 or not all(isinstance(x, int) and x >= 0 for x in v):
                    raise ConfigError("expected two non-negative integers", path=path, field=prefix + key)
                kw[key] = tuple(v)
        cfg = FusionConfig(**kw)
        cfg.validate(path=path, prefix=prefix)
        return cfg

    def validate(self, *, path: str | Path = "<config>", prefix: str = "fusion.") -> None:
        if self.edge_mode not in EDGE_MODES:
            raise ConfigError(f"must be one of {', '.join(EDGE_MODES)}, got '{self.edge_mode}'", path=path,
                              field=prefix + "edge_mode")
        if self.multi_camera not in MULTI_CAMERA_RULES:
            raise ConfigError(f"must be one of {', '.join(MULTI_CAMERA_RULES)}, got '{self.multi_camera}'",
                              path=path, field=prefix + "multi_camera")
        for key in ("min_depth_m", "occlusion_tol_m", "depth_gate_gap_m", "object_cluster_eps_m",
                    "ground_ransac_dist_m", "lane_max_range_m"):
            if getattr(self, key) <= 0:
                raise ConfigError("must be > 0", path=path, field=prefix + key)
        for key in ("occlusion_tol_rel", "occlusion_tol_sq"):
            if getattr(self, key) < 0:
                raise ConfigError("must be >= 0", path=path, field=prefix + key)
        if not 0 <= self.min_instance_score <= 1:
            raise ConfigError("must be within 0..1", path=path, field=prefix + "min_instance_score")
