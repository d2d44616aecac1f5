"""YAML configs, validated when loaded. Every error names the key and the file.

Leaf module (imports only yaml/numpy and pipeline.errors); the class taxonomy
in ``configs/classes.yaml`` is loaded from here by every other module.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, SegfuseError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
TAXONOMY_PATH = CONFIG_DIR / "classes.yaml"


def load_yaml(path: str | Path, *, error: type[SegfuseError] = ConfigError) -> dict[str, Any]:
    """Read a YAML mapping; raise ``error`` (ConfigError by default) naming the file on any problem."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise error("file not found", path=path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise error(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read file: {exc}", path=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f"top level must be a mapping, got {type(data).__name__}", path=path)
    return data


MISSING = object()


def get_key(data: dict[str, Any], key: str, kind: type | tuple[type, ...], *, path: str | Path | None,
            default: Any = MISSING, prefix: str = "", error: type[SegfuseError] = ConfigError) -> Any:
    """Fetch ``data[key]`` checking its type; errors (``error``) name ``prefix.key`` and the file."""
    name = f"{prefix}{key}"
    if key not in data:
        if default is MISSING:
            raise error("required key is missing", path=path, field=name)
        return default
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; do not accept it where a number is wanted.
    if isinstance(value, bool) and bool not in kinds:
        raise error(f"expected {_kind_name(kinds)}, got a boolean", path=path, field=name)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kinds):
        raise error(f"expected {_kind_name(kinds)}, got {type(value).__name__} {value!r}", path=path, field=name)
    return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    return " or ".join({dict: "a mapping", list: "a list", str: "a string", int: "an integer",
                        float: "a number", bool: "a boolean"}.get(k, k.__name__) for k in kinds)


def check_unknown_keys(data: dict[str, Any], allowed: set[str], *, path: str | Path | None, prefix: str = "",
                       error: type[SegfuseError] = ConfigError) -> None:
    unknown = sorted(set(data) - allowed, key=str)
    if unknown:
        raise error(f"unknown key (allowed: {', '.join(sorted(allowed))})", path=path, field=f"{prefix}{unknown[0]}")


@dataclass(frozen=True)
class Taxonomy:
    """The class taxonomy: ids, names, which classes have instances, colours (BGR)."""

    names: tuple[str, ...]          # index = class id
    things: tuple[bool, ...]
    colors_bgr: np.ndarray          # (C, 3) uint8
    ignore_id: int

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def id(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ConfigError(f"unknown class '{name}' (known: {', '.join(self.names)})",
                              path=TAXONOMY_PATH, field="classes") from None

    @property
    def thing_ids(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.things) if t)

    @property
    def thing_names(self) -> tuple[str, ...]:
        return tuple(self.names[i] for i in self.thing_ids)

    def color_lut(self) -> np.ndarray:
        """(256, 3) uint8 BGR lookup table; unknown ids are black."""
        lut = np.zeros((256, 3), np.uint8)
        lut[: self.num_classes] = self.colors_bgr
        return lut


def load_taxonomy(path: str | Path = TAXONOMY_PATH) -> Taxonomy:
    data = load_yaml(path)
    ignore_id = get_key(data, "ignore_id", int, path=path)
    classes = get_key(data, "classes", list, path=path)
    names, things, colors = [], [], []
    for i, entry in enumerate(classes):
        pre = f"classes[{i}]."
        if not isinstance(entry, dict):
            raise ConfigError("each class must be a mapping", path=path, field=f"classes[{i}]")
        cid = get_key(entry, "id", int, path=path, prefix=pre)
        if cid != i:
            raise ConfigError(f"ids must be 0..N-1 in order; expected {i}, got {cid}", path=path, field=pre + "id")
        name = get_key(entry, "name", str, path=path, prefix=pre)
        if name in names:
            raise ConfigError(f"duplicate class name '{name}'", path=path, field=pre + "name")
        color = get_key(entry, "color", list, path=path, prefix=pre)
        if len(color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in color):
            raise ConfigError("color must be three integers 0..255 (BGR)", path=path, field=pre + "color")
        names.append(name)
        things.append(bool(get_key(entry, "thing", bool, path=path, prefix=pre)))
        colors.append(color)
    if not names:
        raise ConfigError("no classes defined", path=path, field="classes")
    if ignore_id < len(names) or ignore_id > 255:
        raise ConfigError("ignore_id must be above every class id and at most 255", path=path, field="ignore_id")
    return Taxonomy(tuple(names), tuple(things), np.array(colors, np.uint8), ignore_id)
