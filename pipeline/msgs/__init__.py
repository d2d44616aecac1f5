"""ROS 2 message definitions that are not in the standard Humble type store.

``<package>/msg/<Name>.msg`` files beside this module:

- ``vision_msgs``: BoundingBox3D, ObjectHypothesis, ObjectHypothesisWithPose, Detection3D,
  Detection3DArray, as in vision_msgs 4.x (ROS 2 Humble), so tools that know vision_msgs
  decode them (same definitions, same RIHS01 hashes).
- ``segfuse_msgs``: LaneBoundary, LaneBoundaryArray (ground-truth lane polylines).

:func:`register_msgs` adds them all to a rosbags type store; the drive recorder and the
publisher use it. :func:`header` and :func:`transform_stamped` build the two standard
messages every writer needs. Light module: rosbags is imported inside the functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

MSG_DIR = Path(__file__).resolve().parent


def msg_files() -> dict[str, Path]:
    """``{"pkg/msg/Name": path}`` for every .msg file shipped here."""
    found = {}
    for path in sorted(MSG_DIR.glob("*/msg/*.msg")):
        found[f"{path.parent.parent.name}/msg/{path.stem}"] = path
    return found


def register_msgs(typestore: Any) -> list[str]:
    """Register every message shipped here into ``typestore`` (a rosbags Typestore).

    Returns the registered type names. Types already present are left as they are.
    """
    from rosbags.typesys import get_types_from_msg

    from pipeline.errors import InputDataError

    typs: dict[str, Any] = {}
    for name, path in msg_files().items():
        if name in typestore.fielddefs:
            continue
        try:
            typs.update(get_types_from_msg(path.read_text(), name))
        except Exception as exc:  # rosbags raises its own parse errors
            raise InputDataError(f"cannot parse message definition: {exc}", path=path) from exc
    if typs:
        typestore.register(typs)
    return sorted(typs)


def make_typestore() -> Any:
    """A ROS 2 Humble type store with our extra messages registered."""
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_HUMBLE)
    register_msgs(typestore)
    return typestore


def header(typestore: Any, stamp_ns: int, frame_id: str) -> Any:
    """std_msgs/Header at ``stamp_ns`` (integer nanoseconds since the epoch)."""
    T = typestore.types
    stamp_ns = int(stamp_ns)
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000,
                                                                          nanosec=stamp_ns % 1_000_000_000),
                                    frame_id=frame_id)


def transform_stamped(typestore: Any, stamp_ns: int, parent: str, child: str, T_parent_from_child: Any) -> Any:
    """geometry_msgs/TransformStamped of a 4x4 ``T_parent_from_child`` (tf's convention: the
    child frame's pose in the parent frame)."""
    import numpy as np

    from pipeline.drive.common import quat_from_matrix

    M = np.asarray(T_parent_from_child, np.float64)
    t, q = M[:3, 3], quat_from_matrix(M[:3, :3])
    T = typestore.types
    return T["geometry_msgs/msg/TransformStamped"](
        header=header(typestore, stamp_ns, parent), child_frame_id=child,
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=float(t[0]), y=float(t[1]), z=float(t[2])),
            rotation=T["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))))
