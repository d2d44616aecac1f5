"""Point-cloud files: KITTI .bin, .pcd, .ply, .npy -> (N, 4) float32 x, y, z, intensity.

Raw float32 files (``.bin``) carry no header, so their layout is declared: ``fields`` (the CLI's
``--cloud-fields x,y,z,intensity,ring``), else a sidecar ``<file>.fields`` beside the cloud (one
line, the same comma list), else by suffix: ``*.pcd.bin`` is nuScenes (x, y, z, intensity, ring),
any other ``.bin`` KITTI (x, y, z, reflectance). Every field is float32; x, y, z are required,
``intensity`` (or ``reflectance``/``remission``) is kept, the rest are read past. A file whose
size is not a whole number of records of that layout is refused (a nuScenes scan read as KITTI
would otherwise come out as garbage points that happen to divide evenly).

Bad files raise InputDataError naming the file and what is wrong. Points with a NaN or
infinite coordinate are dropped and counted (real drivers emit them for missing returns);
a file with zero points reads as an empty (0, 4) array, which fusion handles as an empty
result.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import InputDataError

log = logging.getLogger(__name__)

SUFFIXES = (".bin", ".pcd", ".ply", ".npy")
KITTI_FIELDS = ("x", "y", "z", "intensity")
NUSCENES_FIELDS = ("x", "y", "z", "intensity", "ring")
INTENSITY_NAMES = ("intensity", "reflectance", "remission", "i")
SIDECAR_SUFFIX = ".fields"


def parse_fields(spec: str | list[str] | tuple[str, ...], *, path: str | Path | None = None,
                 field: str = "--cloud-fields") -> tuple[str, ...]:
    """``"x,y,z,intensity,ring"`` -> a checked tuple of field names (x, y, z required, no repeats)."""
    names = [n.strip().lower() for n in (spec.split(",") if isinstance(spec, str) else spec)]
    if any(not n for n in names):
        raise InputDataError(f"empty field name in {spec!r}", path=path, field=field)
    for req in ("x", "y", "z"):
        if req not in names:
            raise InputDataError(f"the layout {','.join(names)} has no '{req}' field", path=path, field=field)
    dup = {n for n in names if names.count(n) > 1 and n != "_"}
    if dup:
        raise InputDataError(f"field(s) {', '.join(sorted(dup))} repeated in {','.join(names)}", path=path,
                             field=field)
    return tuple(names)


def bin_layout(path: Path, fields: str | list[str] | tuple[str, ...] | None = None) -> tuple[tuple[str, ...], str]:
    """(field names, where the layout came from) of a raw float32 cloud file."""
    if fields:
        return parse_fields(fields, path=path), "--cloud-fields"
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if sidecar.is_file():
        return parse_fields(sidecar.read_text().strip(), path=sidecar, field="fields"), str(sidecar)
    if path.name.lower().endswith(".pcd.bin"):
        return NUSCENES_FIELDS, "suffix .pcd.bin (nuScenes)"
    return KITTI_FIELDS, "suffix .bin (KITTI)"


@dataclass
class Cloud:
    points: np.ndarray        # (N, 4) float32 x, y, z, intensity
    dropped_nonfinite: int
    path: Path


def read_cloud(path: str | Path, *, fields: str | list[str] | tuple[str, ...] | None = None) -> Cloud:
    """``fields``: the layout of a raw ``.bin`` (see the module doc); other formats carry their own."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError("point cloud file not found", path=path)
    suffix = path.suffix.lower()
    if suffix == ".bin":
        pts = _read_bin(path, *bin_layout(path, fields))
    elif suffix == ".npy":
        pts = _read_npy(path)
    elif suffix in (".pcd", ".ply"):
        pts = _read_open3d(path)
    else:
        raise InputDataError(f"unknown point cloud format '{suffix}' (use one of {', '.join(SUFFIXES)})", path=path)
    finite = np.isfinite(pts[:, :3]).all(axis=1)
    dropped = int((~finite).sum())
    if dropped:
        log.warning("%s: dropped %d points with NaN/inf coordinates", path, dropped)
        pts = pts[finite]
    pts[:, 3] = np.nan_to_num(pts[:, 3], nan=0.0, posinf=0.0, neginf=0.0)
    return Cloud(np.ascontiguousarray(pts, np.float32), dropped, path)


def _read_bin(path: Path, fields: tuple[str, ...], origin: str) -> np.ndarray:
    size = path.stat().st_size
    record = 4 * len(fields)
    if size % record:
        raise InputDataError(f"size {size} bytes is not a multiple of {record} (float32 x {len(fields)} fields "
                             f"{','.join(fields)}, layout from {origin}): truncated, or another layout (declare it "
                             "with --cloud-fields or a .fields sidecar)", path=path, field="points")
    raw = np.fromfile(path, "<f4").reshape(-1, len(fields))
    out = np.zeros((len(raw), 4), np.float32)
    for k, name in enumerate(("x", "y", "z")):
        out[:, k] = raw[:, fields.index(name)]
    inten = next((fields.index(n) for n in INTENSITY_NAMES if n in fields), None)
    if inten is not None:
        out[:, 3] = raw[:, inten]
    return out


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputDataError(f"cannot read .npy: {exc}", path=path) from exc
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise InputDataError(f"expected an (N, 3) or (N, >=4) array, got shape {arr.shape}", path=path, field="points")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputDataError(f"expected a numeric array, got {arr.dtype}", path=path, field="points")
    out = np.zeros((len(arr), 4), np.float32)
    out[:, : min(4, arr.shape[1])] = arr[:, : min(4, arr.shape[1])]
    return out


def _read_open3d(path: Path) -> np.ndarray:
    import open3d as o3d

    head = path.read_bytes()[:4096]
    if path.suffix.lower() == ".pcd" and b"DATA" not in head:
        raise InputDataError("not a PCD file (no DATA header line)", path=path, field="header")
    if path.suffix.lower() == ".ply" and not head.startswith(b"ply"):
        raise InputDataError("not a PLY file (missing 'ply' magic)", path=path, field="header")
    pcd = o3d.t.io.read_point_cloud(str(path))
    if "positions" not in pcd.point or len(pcd.point.positions) == 0:
        if b"POINTS 0\n" in head or b"element vertex 0\n" in head:
            return np.zeros((0, 4), np.float32)      # a valid file that holds no points
        raise InputDataError("Open3D read no points (corrupt or truncated file?)", path=path, field="positions")
    xyz = pcd.point.positions.numpy().astype(np.float32)
    out = np.zeros((len(xyz), 4), np.float32)
    out[:, :3] = xyz
    for name in ("intensity", "intensities", "reflectance", "remission"):
        if name in pcd.point:
            out[:, 3] = pcd.point[name].numpy().reshape(-1)[: len(xyz)]
            break
    return out


def write_ply(path: str | Path, points: np.ndarray, colors_bgr: np.ndarray | None = None) -> None:
    """Binary PLY with x, y, z (and RGB colours) through Open3D."""
    import open3d as o3d

    pcd = o3d.t.geometry.PointCloud(o3d.core.Tensor(np.ascontiguousarray(points[:, :3], np.float32)))
    if colors_bgr is not None:
        pcd.point.colors = o3d.core.Tensor(np.ascontiguousarray(colors_bgr[:, ::-1], np.float32) / 255.0)
    if not o3d.t.io.write_point_cloud(str(path), pcd):
        raise InputDataError("could not write PLY", path=path)
