"""Our own rig YAML: read (validated, errors name the file and key) and write (exact round trip).

Format (``format: segfuse-rig``, ``version: 1``)::

    format: segfuse-rig
    version: 1
    base_frame: base_link
    cameras:
    - name: camera_front
      frame_id: camera_front_optical
      model: pinhole                 # pinhole | fisheye | rectified
      width: 1280
      height: 720
      intrinsics: {fx: 900.0, fy: 900.0, cx: 639.5, cy: 359.5}   # optional skew (pinhole, fisheye)
      distortion_model: plumb_bob    # pinhole only: none | plumb_bob | rational_polynomial
      distortion: [-0.1, 0.01, 0.0, 0.0, 0.0]   # fisheye: [k1, k2, k3, k4]
      # rectified instead of intrinsics/distortion:  P: 3 rows of 4,  R_rect: 3 rows of 3
      T_base_from_cam:               # either a 4x4 matrix (4 rows) ...
        matrix: [[0.0, 0.0, 1.0, 1.5], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.4], [0.0, 0.0, 0.0, 1.0]]
    lidars:
    - name: lidar_top
      frame_id: lidar_top
      T_base_from_lidar:             # ... or translation (metres) + unit quaternion (ROS order)
        translation_xyz: [0.0, 0.0, 1.8]
        quaternion_xyzw: [0.0, 0.0, 0.0, 1.0]

The writer uses ``matrix`` by default: Python floats are written with their shortest exact
representation, so ``read(write(rig))`` gives bit-identical arrays.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calibration import validate
from calibration.camera import CameraModel, FisheyeCamera, PinholeCamera, RectifiedCamera
from calibration.rig import CameraSensor, LidarSensor, Rig
from calibration.transforms import R_from_quat_xyzw, make_T, quat_xyzw_from_R
from pipeline.config import MISSING, check_unknown_keys, get_key, load_yaml
from pipeline.errors import CalibrationError

FORMAT = "segfuse-rig"
VERSION = 1
_TOP_KEYS = {"format", "version", "base_frame", "description", "cameras", "lidars"}
_CAMERA_KEYS = {"name", "frame_id", "model", "width", "height", "intrinsics", "distortion_model", "distortion",
                "P", "R_rect", "T_base_from_cam"}
_LIDAR_KEYS = {"name", "frame_id", "T_base_from_lidar"}


# --- reading ----------------------------------------------------------------------------------

def read_rig_yaml(path: str | Path) -> Rig:
    """Load and validate a rig YAML file."""
    path = Path(path)
    return rig_from_dict(load_yaml(path, error=CalibrationError), path=path)


def rig_from_dict(data: Any, *, path: str | Path | None = None) -> Rig:
    if not isinstance(data, dict):
        raise CalibrationError("top level must be a mapping", path=path)
    _no_unknown(data, _TOP_KEYS, path, "")
    fmt = _get(data, "format", str, path, "")
    if fmt != FORMAT:
        raise CalibrationError(f"expected format: {FORMAT}, got {fmt!r}", path=path, field="format")
    version = _get(data, "version", int, path, "")
    if version != VERSION:
        raise CalibrationError(f"unsupported version {version} (this reader knows {VERSION})", path=path,
                               field="version")
    base_frame = _get(data, "base_frame", str, path, "")
    cameras_data = _get(data, "cameras", list, path, "", default=[])
    lidars_data = _get(data, "lidars", list, path, "", default=[])
    cameras = [_camera_from_dict(c, path, f"cameras[{i}].") for i, c in enumerate(cameras_data)]
    lidars = [_lidar_from_dict(d, path, f"lidars[{i}].") for i, d in enumerate(lidars_data)]
    rig = Rig(cameras, lidars, base_frame=base_frame, source=None if path is None else str(path), kind="rig_yaml")
    if "description" in data:
        rig.extra["description"] = _get(data, "description", str, path, "")
    validate.validate_rig(rig, path)
    return rig


def _camera_from_dict(d: Any, path, pre: str) -> CameraSensor:
    if not isinstance(d, dict):
        raise CalibrationError("each camera must be a mapping", path=path, field=pre.rstrip("."))
    _no_unknown(d, _CAMERA_KEYS, path, pre)
    name = _get(d, "name", str, path, pre)
    frame_id = _get(d, "frame_id", str, path, pre)
    kind = _get(d, "model", str, path, pre)
    width = _get(d, "width", int, path, pre)
    height = _get(d, "height", int, path, pre)
    validate.check_image_size(width, 1, path=path, field=pre + "width")
    validate.check_image_size(1, height, path=path, field=pre + "height")
    if kind in ("pinhole", "fisheye"):
        for key in ("P", "R_rect"):
            if key in d:
                raise CalibrationError(f"'{key}' belongs to model: rectified", path=path, field=pre + key)
        K = _intrinsics(d, width, height, path, pre)
        if kind == "pinhole":
            dm = _get(d, "distortion_model", str, path, pre, default="none")
            dist = validate.check_distortion(_get(d, "distortion", list, path, pre, default=[]), dm, path=path,
                                             field=pre + "distortion")
            model: CameraModel = PinholeCamera(K, dist, width, height, distortion_model=dm)
        else:
            if "distortion_model" in d and d["distortion_model"] not in ("equidistant", "kannala_brandt"):
                raise CalibrationError("a fisheye camera's distortion is equidistant (Kannala-Brandt)",
                                       path=path, field=pre + "distortion_model")
            D = validate.check_distortion(_get(d, "distortion", list, path, pre), "equidistant", path=path,
                                          field=pre + "distortion")
            model = FisheyeCamera(K, D, width, height)
    elif kind == "rectified":
        for key in ("intrinsics", "distortion_model", "distortion"):
            if key in d:
                raise CalibrationError(f"a rectified camera has P and R_rect, not '{key}'", path=path, field=pre + key)
        P = validate.check_projection_matrix(_get(d, "P", list, path, pre), width, height, path=path, field=pre + "P")
        R = validate.check_rotation(_get(d, "R_rect", list, path, pre), path=path, field=pre + "R_rect")
        model = RectifiedCamera(P, R, width, height)
    else:
        raise CalibrationError(f"unknown camera model {kind!r} (pinhole, fisheye, rectified)", path=path,
                               field=pre + "model")
    T = _transform(_get(d, "T_base_from_cam", dict, path, pre), path, pre + "T_base_from_cam")
    return CameraSensor(name, frame_id, model, T)


def _lidar_from_dict(d: Any, path, pre: str) -> LidarSensor:
    if not isinstance(d, dict):
        raise CalibrationError("each LiDAR must be a mapping", path=path, field=pre.rstrip("."))
    _no_unknown(d, _LIDAR_KEYS, path, pre)
    T = _transform(_get(d, "T_base_from_lidar", dict, path, pre), path, pre + "T_base_from_lidar")
    return LidarSensor(_get(d, "name", str, path, pre), _get(d, "frame_id", str, path, pre), T)


def _intrinsics(d: dict, width: int, height: int, path, pre: str) -> np.ndarray:
    intr = _get(d, "intrinsics", dict, path, pre)
    p = pre + "intrinsics."
    _no_unknown(intr, {"fx", "fy", "cx", "cy", "skew"}, path, p)
    fx, fy, cx, cy = (_get(intr, k, float, path, p) for k in ("fx", "fy", "cx", "cy"))
    skew = _get(intr, "skew", float, path, p, default=0.0)
    K = np.array([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return validate.check_intrinsics(K, width, height, path=path, field=pre + "intrinsics")


def _transform(d: dict, path, field: str) -> np.ndarray:
    if "matrix" in d:
        _no_unknown(d, {"matrix"}, path, field + ".")
        return validate.check_transform(d["matrix"], path=path, field=field + ".matrix")
    _no_unknown(d, {"translation_xyz", "quaternion_xyzw"}, path, field + ".")
    t = validate.as_matrix(_get(d, "translation_xyz", list, path, field + "."), (3,), path=path,
                           field=field + ".translation_xyz")
    q = validate.as_matrix(_get(d, "quaternion_xyzw", list, path, field + "."), (4,), path=path,
                           field=field + ".quaternion_xyzw")
    if abs(np.linalg.norm(q) - 1.0) > 1e-3:
        raise CalibrationError(f"quaternion must have unit norm, got norm {np.linalg.norm(q):.6g}", path=path,
                               field=field + ".quaternion_xyzw")
    return make_T(R_from_quat_xyzw(q), t)


def _get(d: dict, key: str, kind: type, path, pre: str, default: Any = MISSING) -> Any:
    return get_key(d, key, kind, path=path, prefix=pre, default=default, error=CalibrationError)


def _no_unknown(d: dict, allowed: set[str], path, pre: str) -> None:
    check_unknown_keys(d, allowed, path=path, prefix=pre, error=CalibrationError)


# --- writing ----------------------------------------------------------------------------------

def rig_to_dict(rig: Rig, *, extrinsic_style: str = "matrix") -> dict[str, Any]:
    """Plain-Python (YAML-ready) form of a rig. ``extrinsic_style``: "matrix" (exact) or
    "quaternion" (translation_xyz + quaternion_xyzw; exact to ~1e-16)."""
    if extrinsic_style not in ("matrix", "quaternion"):
        raise ValueError(f"extrinsic_style must be 'matrix' or 'quaternion', got {extrinsic_style!r}")
    out: dict[str, Any] = {"format": FORMAT, "version": VERSION, "base_frame": rig.base_frame}
    if rig.extra.get("description"):
        out["description"] = str(rig.extra["description"])
    out["cameras"] = [_camera_to_dict(c, extrinsic_style) for c in rig.cameras]
    out["lidars"] = [{"name": lid.name, "frame_id": lid.frame_id,
                      "T_base_from_lidar": _transform_to_dict(lid.T_base_from_lidar, extrinsic_style)}
                     for lid in rig.lidars]
    return out


def _camera_to_dict(cam: CameraSensor, style: str) -> dict[str, Any]:
    m = cam.model
    d: dict[str, Any] = {"name": cam.name, "frame_id": cam.frame_id, "model": m.kind,
                         "width": int(m.width), "height": int(m.height)}
    if isinstance(m, (PinholeCamera, FisheyeCamera)):
        K = m.K
        intr = {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])}
        if K[0, 1] != 0.0:
            intr["skew"] = float(K[0, 1])
        d["intrinsics"] = intr
        if isinstance(m, PinholeCamera):
            d["distortion_model"] = m.distortion_model
            d["distortion"] = _floats(m.dist)
        else:
            d["distortion"] = _floats(m.D)
    elif isinstance(m, RectifiedCamera):
        d["P"] = _floats(m.P)
        d["R_rect"] = _floats(m.R_rect)
    else:
        raise CalibrationError(f"cannot write camera model {type(m).__name__}", field=f"cameras.{cam.name}")
    d["T_base_from_cam"] = _transform_to_dict(cam.T_base_from_cam, style)
    return d


def _transform_to_dict(T: np.ndarray, style: str) -> dict[str, Any]:
    T = np.asarray(T, dtype=np.float64)
    if style == "matrix":
        return {"matrix": _floats(T)}
    return {"translation_xyz": _floats(T[:3, 3]), "quaternion_xyzw": _floats(quat_xyzw_from_R(T[:3, :3]))}


def _floats(a: np.ndarray) -> list:
    return np.asarray(a, dtype=np.float64).tolist()     # Python floats: shortest exact repr in YAML


def dump_rig_yaml(rig: Rig, *, extrinsic_style: str = "matrix") -> str:
    import yaml

    text = yaml.safe_dump(rig_to_dict(rig, extrinsic_style=extrinsic_style), sort_keys=False,
                          default_flow_style=None, width=200)
    return "# segfuse sensor rig (format: docs/calibration.md)\n" + text


def write_rig_yaml(rig: Rig, path: str | Path, *, extrinsic_style: str = "matrix") -> Path:
    """Write ``rig`` as rig YAML; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_rig_yaml(rig, extrinsic_style=extrinsic_style))
    return path
