"""``segfuse calib show RIG`` and ``segfuse calib check RIG``.

RIG is anything ``calibration.io.load_rig`` reads: rig YAML, a ROS bag, KITTI object or raw
calibration, nuScenes calib.json. Only argument parsing and printing here.
"""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("calib", help="show or check a sensor rig calibration",
                              description="Show or validate a sensor rig (rig YAML, ROS bag, KITTI object/raw "
                                          "calibration, nuScenes calib.json).")
    sub = p.add_subparsers(dest="calib_command", metavar="ACTION")
    show = sub.add_parser("show", help="print cameras, intrinsics, distortion and extrinsics")
    check = sub.add_parser("check", help="validate; prints OK or one error line (exit 2)")
    for q in (show, check):
        q.add_argument("rig", metavar="RIG", help="rig YAML, bag, KITTI calib file/folder or nuScenes calib.json")
        q.add_argument("--image-size", metavar="WxH", type=_size, default=None,
                       help="image size for KITTI object calibration without image_2/ beside it")
    check.add_argument("--image", metavar="CAMERA=PATH", action="append", default=[],
                       help="also check that camera CAMERA's calibrated size matches this frame (repeatable)")
    p.set_defaults(func=_no_action, calib_parser=p)
    show.set_defaults(func=cmd_show)
    check.set_defaults(func=cmd_check)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1242x375, got {text!r}") from None
    return w, h


def _no_action(args) -> int:
    args.calib_parser.print_help()
    return 2


def cmd_show(args) -> int:
    from calibration.io import load_rig

    rig = load_rig(args.rig, image_size=args.image_size)
    print(format_rig(rig))
    return 0


def cmd_check(args) -> int:
    from calibration.io import load_rig
    from calibration.io_util import read_image_size
    from calibration.validate import check_frame_size, validate_rig
    from pipeline.errors import ConfigError

    rig = load_rig(args.rig, image_size=args.image_size)
    validate_rig(rig)
    for item in args.image:
        name, sep, path = item.partition("=")
        if not sep:
            raise ConfigError(f"expected CAMERA=PATH, got {item!r}", field="--image")
        w, h = read_image_size(path)
        check_frame_size(rig.camera(name).model, (h, w), path=path, field=f"cameras.{name}.size")
    print(f"OK: {rig.source}: {rig.kind}, {len(rig.cameras)} camera(s) ({', '.join(rig.camera_names)}), "
          f"{len(rig.lidars)} LiDAR(s) ({', '.join(rig.lidar_names)})")
    return 0


def format_rig(rig) -> str:
    import numpy as np

    from calibration.camera import FisheyeCamera, PinholeCamera, RectifiedCamera
    from calibration.transforms import rpy_from_R

    def num(x, fmt):
        text = fmt.format(float(x))
        return text[1:] if text.startswith("-") and not text.strip("-0.") else text    # no "-0.000"

    def vec(a, fmt="{:.4f}"):
        return "[" + ", ".join(num(x, fmt) for x in a) + "]"

    def pose(T):
        return f"xyz {vec(T[:3, 3])} m, rpy {vec(np.degrees(rpy_from_R(T[:3, :3])), '{:.3f}')} deg"

    lines = [f"rig: {rig.source}", f"  kind: {rig.kind}, base frame: {rig.base_frame}",
             f"cameras: {len(rig.cameras)}"]
    for cam in rig.cameras:
        m = cam.model
        lines.append(f"  {cam.name}  (frame {cam.frame_id})")
        lines.append(f"    model: {m.kind}, {m.width}x{m.height}")
        K = m.K
        lines.append(f"    intrinsics: fx {K[0, 0]:.4f}  fy {K[1, 1]:.4f}  cx {K[0, 2]:.4f}  cy {K[1, 2]:.4f}"
                     + (f"  skew {K[0, 1]:.4f}" if K[0, 1] else ""))
        if isinstance(m, PinholeCamera):
            coeffs = vec(m.dist, "{:.6g}") if m.dist.size else ""
            lines.append(f"    distortion: {m.distortion_model} {coeffs}".rstrip())
        elif isinstance(m, FisheyeCamera):
            lines.append(f"    distortion: equidistant (Kannala-Brandt) {vec(m.D, '{:.6g}')}")
        elif isinstance(m, RectifiedCamera):
            lines.append(f"    P row 0..2: {vec(m.P[0], '{:.6g}')} {vec(m.P[1], '{:.6g}')} {vec(m.P[2], '{:.6g}')}")
            lines.append(f"    P offset t: {vec(m.t_rect)} m; R_rect rpy "
                         f"{vec(np.degrees(rpy_from_R(m.R_rect)), '{:.3f}')} deg")
        lines.append(f"    T_base_from_cam: {pose(cam.T_base_from_cam)}")
        if np.any(m.center_cam):
            lines.append(f"    optical centre in base: {vec(cam.center_base)} m")
    lines.append(f"lidars: {len(rig.lidars)}")
    for lid in rig.lidars:
        lines.append(f"  {lid.name}  (frame {lid.frame_id})")
        lines.append(f"    T_base_from_lidar: {pose(lid.T_base_from_lidar)}")
    return "\n".join(lines)
