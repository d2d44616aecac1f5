"""Fusion parameters (the ``fusion:`` section of a pipeline config), validated at load.

Names follow Autoware's image_projection_based_fusion where one exists."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import parse_section, setting
from pipeline.errors import ConfigError

EDGE_MODES = ("none", "erode", "depth_gate")
MULTI_CAMERA_RULES = ("border", "score")


@dataclass
class FusionConfig:
    """``fusion:`` of a run config (docs/architecture.md explains the occlusion test and the rules)."""

    min_depth_m: float = setting(1.0, unit="m", above=0, doc="points nearer than this to a camera are not "
                                 "projected into it")
    occlusion: bool = setting(True, doc="z-buffer occlusion test from the cloud itself")
    splat_half_px: tuple[int, int] = setting((1, 3), unit="px", min=0, doc="half width, half height of a point's "
                                             "footprint in the z-buffer")
    occlusion_tol_m: float = setting(0.3, unit="m", above=0, doc="hidden when nearer than tol_m + tol_rel·d + "
                                     "tol_sq·d² in front")
    occlusion_tol_rel: float = setting(0.05, min=0, doc="the depth-proportional part of the tolerance")
    occlusion_tol_sq: float = setting(0.002, unit="1/m", min=0, doc="the square part (a road seen at a grazing "
                                      "angle)")
    occlusion_mask_check: bool = setting(True, doc="hidden only where the image shows the occluder's label at the "
                                         "point's pixel")
    edge_mode: str = setting("none", choices=EDGE_MODES, doc="mask edges: erode instance masks, or withhold labels "
                             "across depth gaps")
    erode_px: int = setting(2, unit="px", min=0, doc="edge_mode erode: pixels taken off each instance mask")
    depth_gate_gap_m: float = setting(1.0, unit="m", above=0, doc="edge_mode depth_gate: a depth jump this large "
                                      "next to a point withholds its label (FLAG_EDGE)")
    multi_camera: str = setting("border", choices=MULTI_CAMERA_RULES, doc="a point seen by several cameras takes "
                                "the camera where it is furthest from the border, or the highest instance score")
    min_instance_score: float = setting(0.5, min=0, max=1, doc="instances scored below this label no points")
    ego_motion: bool = setting(True, doc="move each point to where it was at the camera's exposure (needs poses "
                               "and per-point times)")
    object_cluster_eps_m: float = setting(0.7, unit="m", above=0, doc="3D objects: voxel centroids nearer than "
                                          "this are one cluster")
    object_min_points: int = setting(5, min=1, doc="3D objects: fewer labelled points make no object")
    instance_refinement: bool = setting(True, doc="an instance's points outside its object's 3D cluster and box, or "
                                        "on the ground, lose the instance id (FLAG_NOT_IN_OBJECT; "
                                        "pipeline/fusion/objects.py)")
    instance_ground_clearance_m: float = setting(0.05, unit="m", min=0, doc="instance refinement: an instance's "
                                                 "points nearer the RANSAC ground plane lose the id (0: off)")
    instance_box_margin_m: float = setting(0.3, unit="m", min=0, doc="instance refinement: an instance's points "
                                           "inside its object's box grown by this keep the id")
    ground_ransac_dist_m: float = setting(0.12, unit="m", above=0, doc="lanes: inlier distance of the ground "
                                          "plane fit")
    lane_min_points: int = setting(12, min=2, doc="lanes: fewest lane-marking points of one line")
    lane_max_range_m: float = setting(60.0, unit="m", above=0, doc="lanes: points beyond this range are ignored")

    @staticmethod
    def from_dict(data: dict[str, Any] | None, *, path: str | Path = "<config>", prefix: str = "fusion.") -> "FusionConfig":
        return parse_section(FusionConfig, data, path=path, prefix=prefix)

    def check(self, *, path: str | Path = "<config>", prefix: str = "fusion.") -> None:
        """Nothing spans several keys yet; kept so code that builds a FusionConfig by hand can ask."""

    def validate(self, *, path: str | Path = "<config>", prefix: str = "fusion.") -> None:
        """Re-check a FusionConfig built in code."""
        from dataclasses import asdict

        parse_section(FusionConfig, {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()},
                      path=path, prefix=prefix)
