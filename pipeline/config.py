"""YAML configs, validated when loaded. Every error names the key and the file.

**One config schema.** Each component owns a dataclass of its settings next to its code
(``SyncConfig`` in pipeline/sync.py, ``FusionConfig`` in pipeline/fusion/config.py, each sink
its own, ...); every field is declared with :func:`setting`: its default, unit, range or
choices and a one-line doc, in one place. From those declarations come the validation
(:func:`parse_section`: type, finiteness, range, choices, unknown keys; errors name the file
and the key), the tables of docs/runtime.md (:func:`schema_markdown`) and a JSON Schema for
editors (:func:`json_schema`). ``pipeline/run_config.py`` only composes the sections.

Leaf module (imports only yaml/numpy and pipeline.errors); the class taxonomy
in ``configs/classes.yaml`` is loaded from here by every other module.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.errors import ConfigError, SegfuseError

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_path(relative: str | Path) -> Path:
    """Where a file segfuse ships lives. ``relative`` is written from the repository root
    (``configs/classes.yaml``, ``models/NAME.onnx``): in a checkout or an editable install, the
    repository's own file; in an installed package, the copy shipped as package data
    (``pipeline/_configs``, ``pipeline/_models``: setup.py maps them onto ``configs/``, ``models/``)."""
    rel = Path(relative)
    if rel.is_absolute():
        return rel
    shipped = Path(__file__).resolve().parent / f"_{rel.parts[0]}"
    return shipped.joinpath(*rel.parts[1:]) if shipped.is_dir() else REPO_ROOT / rel


CONFIG_DIR = data_path("configs")
TAXONOMY_PATH = data_path("configs/classes.yaml")


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


# --- The schema -------------------------------------------------------------------------------

def setting(default: Any = dataclasses.MISSING, *, doc: str, unit: str = "", choices: tuple = (),
            min: float | None = None, max: float | None = None, above: float | None = None,
            factory: Callable[[], Any] | None = None, parse: Callable[..., Any] | None = None,
            section: type | Callable[[], type] | None = None, show_default: str | None = None) -> Any:
    """A config field: ``x: float = setting(20.0, doc="...", unit="ms", min=0)``.

    ``min``/``max`` bound the value (inclusive), ``above`` exclusive; ``choices`` lists the
    allowed values; ``parse(value, path=, field=)`` replaces the type-driven parsing for special
    values; ``section`` documents the schema of a value that ``parse`` builds (nested tables);
    ``show_default`` is what the docs print when the default is computed."""
    md = {"doc": doc, "unit": unit, "choices": tuple(choices), "min": min, "max": max, "above": above,
          "parse": parse, "section": section, "show_default": show_default}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


def _section_of(md: Any) -> type | None:
    sec = md.get("section")
    return sec if sec is None or isinstance(sec, type) else sec()


def schema_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are config keys (declared with :func:`setting`)."""
    return [f for f in dataclasses.fields(cls) if "doc" in f.metadata]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _scalar(tp: Any, value: Any, *, path: Any, name: str, error: type[SegfuseError]) -> Any:
    if tp is Any:
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise error(f"expected a path (a string), got {type(value).__name__} {value!r}", path=path, field=name)
        return Path(value).expanduser()
    kinds = (tp,)
    if isinstance(value, bool) and tp is not bool:
        raise error(f"expected {_kind_name(kinds)}, got a boolean", path=path, field=name)
    if tp is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kinds):
        raise error(f"expected {_kind_name(kinds)}, got {type(value).__name__} {value!r}", path=path, field=name)
    if tp is float and not math.isfinite(value):
        raise error(f"must be a finite number, got {value!r}", path=path, field=name)
    return value


def parse_value(tp: Any, value: Any, *, path: Any, name: str, md: dict | None = None,
                error: type[SegfuseError] = ConfigError) -> Any:
    """One value checked against its annotation and the field's metadata."""
    md = md or {}
    if md.get("parse") is not None:
        return md["parse"](value, path=path, field=name)
    tp, optional = _split_optional(tp)
    if value is None:
        if optional:
            return None
        raise error("must not be null", path=path, field=name)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        out = parse_section(tp, value, path=path, prefix=name + ".", error=error)
    elif origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise error(f"expected a mapping, got {type(value).__name__}", path=path, field=name)
        out = {_scalar(kt, k, path=path, name=f"{name}.{k}", error=error):
               parse_value(vt, v, path=path, name=f"{name}.{k}", error=error) for k, v in value.items()}
    elif origin in (list, tuple):
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise error(f"expected a list, got {type(value).__name__} {value!r}", path=path, field=name)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise error(f"expected a list of {len(args)} values, got {len(value)}", path=path, field=name)
            out = tuple(parse_value(t, v, path=path, name=f"{name}[{i}]", error=error)
                        for i, (t, v) in enumerate(zip(args, value)))
        else:
            et = args[0] if args else Any
            items = [parse_value(et, v, path=path, name=f"{name}[{i}]", error=error) for i, v in enumerate(value)]
            out = tuple(items) if origin is tuple else items
    else:
        out = _scalar(tp, value, path=path, name=name, error=error)
    _check_bounds(out, md, path=path, name=name, error=error)
    return out


def _check_bounds(value: Any, md: dict, *, path: Any, name: str, error: type[SegfuseError]) -> None:
    values = value if isinstance(value, (tuple, list)) else [value]
    for v in values:
        if md.get("choices") and v not in md["choices"]:
            raise error(f"must be one of {', '.join(map(str, md['choices']))}, got {v!r}", path=path, field=name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            lo, hi, above = md.get("min"), md.get("max"), md.get("above")
            if above is not None and not v > above:
                raise error(f"must be > {above:g}, got {v!r}", path=path, field=name)
            if lo is not None and v < lo:
                raise error(f"must be >= {lo:g}, got {v!r}", path=path, field=name)
            if hi is not None and v > hi:
                raise error(f"must be <= {hi:g}, got {v!r}", path=path, field=name)


def parse_section(cls: type, data: Any, *, path: Any, prefix: str = "",
                  error: type[SegfuseError] = ConfigError) -> Any:
    """A config dataclass from a YAML mapping: unknown keys refused, every value checked; the
    class's ``check(path, prefix)`` (if any) then checks what spans several keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f"expected a mapping, got {type(data).__name__} {data!r}", path=path,
                    field=prefix.rstrip(".") or None)
    fs = schema_fields(cls)
    check_unknown_keys(data, {f.name for f in fs}, path=path, prefix=prefix, error=error)
    hints = _hints(cls)
    kw = {f.name: parse_value(hints[f.name], data[f.name], path=path, name=prefix + f.name, md=dict(f.metadata),
                              error=error)
          for f in fs if f.name in data}
    for f in fs:
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            choices = f.metadata.get("choices")
            raise error("required key is missing" + (f" (one of {', '.join(map(str, choices))})" if choices else ""),
                        path=path, field=prefix + f.name)
    obj = cls(**kw)
    check = getattr(obj, "check", None)
    if check is not None:
        check(path=path, prefix=prefix)
    return obj


def _type_name(tp: Any) -> str:
    tp, optional = _split_optional(tp)
    origin = typing.get_origin(tp)
    if origin is dict:
        name = "mapping"
    elif origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        name = f"list of {_type_name(args[0])}" if args else "list"
        if origin is tuple and typing.get_args(tp) and typing.get_args(tp)[-1] is not Ellipsis:
            name = f"{len(args)} × {_type_name(args[0])}"
    elif dataclasses.is_dataclass(tp):
        name = "section"
    else:
        name = {bool: "bool", int: "int", float: "float", str: "string", Path: "path"}.get(tp, getattr(tp, "__name__", str(tp)))
    return name + (" or null" if optional else "")


def _default_text(f: dataclasses.Field) -> str:
    if f.metadata.get("show_default"):
        return f.metadata["show_default"]
    if f.default is not dataclasses.MISSING:
        d = f.default
    elif f.default_factory is not dataclasses.MISSING:          # type: ignore[misc]
        d = f.default_factory()                                  # type: ignore[misc]
        if dataclasses.is_dataclass(d):
            return "(section)"
    else:
        return "required"
    if d is None:
        return "null"
    if isinstance(d, bool):
        return "true" if d else "false"
    if isinstance(d, Path):
        return str(d)
    if isinstance(d, tuple):
        return "[" + ", ".join(map(str, d)) + "]"
    if isinstance(d, (list, dict)) and not d:
        return "[]" if isinstance(d, list) else "{}"
    return f"{d}"


def _range_text(md: dict) -> str:
    if md.get("choices"):
        return " \\| ".join(map(str, md["choices"]))
    parts = []
    if md.get("above") is not None:
        parts.append(f"> {md['above']:g}")
    if md.get("min") is not None:
        parts.append(f">= {md['min']:g}")
    if md.get("max") is not None:
        parts.append(f"<= {md['max']:g}")
    return ", ".join(parts)


def schema_rows(cls: type, prefix: str = "") -> list[dict[str, str]]:
    """One row per key, nested sections expanded: key, type, default, unit, range, doc."""
    rows = []
    hints = _hints(cls)
    for f in schema_fields(cls):
        md = f.metadata
        tp = hints[f.name]
        inner, _ = _split_optional(tp)
        nested = _section_of(md) or (inner if dataclasses.is_dataclass(inner) else None)
        if nested is not None:
            if md.get("section"):
                rows.append({"key": prefix + f.name, "type": "section or YAML path" if md.get("parse") else "section",
                             "default": _default_text(f), "unit": md["unit"], "range": _range_text(md),
                             "doc": md["doc"]})
            rows.extend(schema_rows(nested, prefix + f.name + "."))
            continue
        rows.append({"key": prefix + f.name, "type": _type_name(tp), "default": _default_text(f), "unit": md["unit"],
                     "range": _range_text(md), "doc": md["doc"]})
    return rows


def schema_markdown(cls: type, prefix: str = "") -> str:
    """A markdown table of every key of ``cls`` (docs/runtime.md is generated from these)."""
    lines = ["| key | type | default | unit | range / choices | what it does |", "|---|---|---|---|---|---|"]
    for r in schema_rows(cls, prefix):
        cells = [f"`{r['key']}`", r["type"], f"`{r['default']}`" if r["default"] else "", r["unit"], r["range"],
                 r["doc"].replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def json_schema(cls: type, *, title: str | None = None) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of a config dataclass, for editors (YAML language servers)."""

    def of(tp: Any, md: dict) -> dict[str, Any]:
        if md.get("section") is not None:
            sub = json_schema(_section_of(md))
            sub.pop("$schema", None)
            return {"anyOf": [sub, {"type": "string", "description": "path of a YAML file with this section"}]}
        tp, optional = _split_optional(tp)
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            out = json_schema(tp)
            out.pop("$schema", None)
        elif origin is dict:
            out = {"type": "object", "additionalProperties": of(typing.get_args(tp)[1], {})}
        elif origin in (list, tuple):
            args = [a for a in typing.get_args(tp) if a is not Ellipsis]
            out = {"type": "array", "items": of(args[0], {}) if args else {}}
            if origin is tuple and typing.get_args(tp) and typing.get_args(tp)[-1] is not Ellipsis:
                out["minItems"] = out["maxItems"] = len(args)
        else:
            out = {"type": {bool: "boolean", int: "integer", float: "number", str: "string", Path: "string"}.get(tp, "string")}
        if md.get("choices"):
            out["enum"] = list(md["choices"])
        for key, js in (("min", "minimum"), ("max", "maximum"), ("above", "exclusiveMinimum")):
            if md.get(key) is not None and out.get("type") in ("integer", "number"):
                out[js] = md[key]
        if optional:
            out = {"anyOf": [out, {"type": "null"}]}
        return out

    props = {}
    required = []
    hints = _hints(cls)
    for f in schema_fields(cls):
        sch = of(hints[f.name], dict(f.metadata))
        sch["description"] = f.metadata["doc"] + (f" [{f.metadata['unit']}]" if f.metadata["unit"] else "")
        if f.default is not dataclasses.MISSING and isinstance(f.default, (bool, int, float, str)) or f.default is None:
            sch["default"] = f.default
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:   # type: ignore[misc]
            required.append(f.name)
        props[f.name] = sch
    out: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                           "properties": props, "additionalProperties": False}
    if title:
        out["title"] = title
    if required:
        out["required"] = required
    return out


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
