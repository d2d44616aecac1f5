"""Which drives a fleet run covers, and the content keys that make a rerun skip finished ones.

``--drives`` takes any mix of:

- a drive (a rosbag2 folder, a bare ``.mcap``, a KITTI raw folder): that drive;
- a folder of drives: each sub-folder and each ``.mcap`` in it (sorted; hidden names skipped;
  a sub-folder that is not a drive is kept, so it is reported as failed rather than lost);
- a glob pattern (``data/fleet/seed_*``): every match;
- a list file (``@drives.txt`` or ``drives.txt``): one path per line, ``#`` comments; a listed
  path that does not exist is kept, so the report names it as missing.

The key of a drive's unit of work is XXH3-128 over the settings key (config file, the resolved
config, the command's options, the taxonomy), the models' bytes and the drive's bytes (every
file under it: relative path, size, content). Same key, same outputs: a rerun skips it.
Reading every byte is the price (measured in docs/fleet.md); code changes are not in the key.
"""
from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pipeline.errors import ConfigError, InputDataError

log = logging.getLogger(__name__)

CHUNK = 8 << 20
GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class DriveRef:
    path: str              # as given or expanded (relative paths stay relative: outputs name it so)
    name: str              # unique folder name under OUT/drives/


def _is_drive(path: Path) -> bool:
    from pipeline.drive.io import detect_format

    try:
        detect_format(path)
        return True
    except InputDataError:
        return False


def _children(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or ".partial-" in p.name:
            continue
        if p.is_dir() or p.suffix == ".mcap":
            out.append(p)
    return out


def _list_file(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the drive list: {exc}", path=path, field="--drives") from exc
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def resolve_drives(specs: Iterable[str]) -> list[DriveRef]:
    """The drives named by ``--drives`` (see the module docstring), in order, without duplicates."""
    paths: list[str] = []
    for spec in specs:
        p = Path(spec[1:] if spec.startswith("@") else spec)
        if spec.startswith("@") or (p.is_file() and p.suffix in (".txt", ".list")):
            paths += _list_file(p)
        elif GLOB_CHARS & set(spec):
            matches = sorted(glob.glob(spec))
            if not matches:
                raise ConfigError(f"the pattern {spec!r} matches nothing", field="--drives")
            paths += matches
        elif p.is_dir() and not _is_drive(p):
            kids = _children(p)
            if not kids:
                raise ConfigError("a folder with no drives in it", path=p, field="--drives")
            paths += [str(k) for k in kids]
        else:
            paths.append(spec)              # a drive, or a missing path (reported as failed)
    seen: set[str] = set()
    unique = []
    for s in paths:
        r = str(Path(s).resolve())
        if r not in seen:
            seen.add(r)
            unique.append(s)
    if not unique:
        raise ConfigError("no drives given", field="--drives")
    names: dict[str, int] = {}
    for s in unique:
        n = _base(s)
        names[n] = names.get(n, 0) + 1
    refs = []
    for s in unique:
        n = _base(s)
        if names[n] > 1:                      # same folder name in two places: add a path hash
            n = f"{n}-{_xxh(str(Path(s).resolve()).encode())[:8]}"
        refs.append(DriveRef(s, n))
    return refs


def _base(s: str) -> str:
    p = Path(s)
    return (p.stem if p.suffix == ".mcap" else p.name) or "drive"


def _xxh(data: bytes) -> str:
    import xxhash

    return xxhash.xxh3_128_hexdigest(data)


def file_digest(path: str | Path) -> str:
    """XXH3-128 of a file's bytes."""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def drive_digest(path: str | Path) -> tuple[str, int]:
    """(XXH3-128 over every file of a drive: relative path, size, content; bytes read).
    InputDataError when the drive is missing or unreadable."""
    import xxhash

    p = Path(path)
    if not p.exists():
        raise InputDataError("drive not found", path=p)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    h = xxhash.xxh3_128()
    total = 0
    try:
        for f in files:
            rel = f.name if f == p else str(f.relative_to(p))
            size = f.stat().st_size
            h.update(f"{rel}\0{size}\0".encode())
            with open(f, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    h.update(chunk)
            total += size
    except OSError as exc:
        raise InputDataError(f"cannot read drive: {exc}", path=getattr(exc, "filename", None) or p) from exc
    return h.hexdigest(), total


def settings_key(material: dict[str, Any]) -> str:
    """XXH3-128 of the settings (a JSON-able mapping; models and files given by their digests)."""
    return _xxh(json.dumps(material, sort_keys=True, default=str).encode())


def unit_key(settings: str, drive: str) -> str:
    return _xxh(f"{settings}\0{drive}".encode())
