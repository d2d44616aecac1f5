"""The run config (``segfuse run CONFIG``): YAML, validated when loaded; every error names
the key and the file. See docs/runtime.md for every key.

Leaf-ish module: yaml/numpy and pipeline.config/errors; the fusion section is validated
by ``pipeline.fusion.config.FusionConfig.from_dict``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.config import check_unknown_keys, get_key, load_yaml
from pipeline.errors import ConfigError
from pipeline.preprocess import RESIZE_MODES          # one list, where the modes are implemented

POLICIES = ("replay", "live")
MASK_PROVIDERS = ("ground_truth", "engines")
COMPRESSIONS = ("lz4", "zstd", "none")
TOPIC_KEYS = ("image", "camera_info", "points", "tf", "semantic", "instance")


@dataclass
class InputConfig:
    uri: str | None = None                  # drive folder, bag, video, image folder, v4l2://, csi://, rtsp://
    calibration: str | None = None          # rig file (calibration.io.load_rig); None: from the drive / bag
    lidar: str | None = None                # live LiDAR URI (zenoh://KEY_EXPR?connect=...), with a camera-only uri
    topics: dict[str, str] = field(default_factory=dict)   # bag topic mapping (TOPIC_KEYS)
    camera_id: str | None = None            # rig camera a camera-only source feeds (None: the rig's only one)
    fps: float | None = None                # image folders: frame rate of the synthetic stamps (default 10)
    loop: bool = False                      # video files / image folders: start again at the end


@dataclass
class SyncConfig:
    tolerance_ms: float = 20.0              # |camera time - LiDAR time| (after offsets) to pair
    camera_offset_ms: float = 0.0           # added to every camera stamp
    lidar_offset_ms: float = 0.0            # added to every LiDAR sweep stamp (e.g. half a sweep)
    offsets_ms: dict[str, float] = field(default_factory=dict)   # per sensor id, overrides the two above
    lidar_timeout_ms: float = 150.0         # live: how long a camera frame waits for its LiDAR sweep
    use_poses: bool = True                  # attach ego poses (ego-motion compensation)


@dataclass
class EnginesConfig:
    """``engines.deeplab`` / ``engines.maskrcnn``: engine configs in the schema of
    ``engines.factory`` (model, backend, precision, device, threads, TensorRT options), or
    the path of such a YAML file. Validated at load; model files are checked at start."""

    deeplab: Any = None                     # engines.factory.EngineConfig
    maskrcnn: Any = None
    resize: str = "letterbox"
    score_threshold: float = 0.5
    mask_threshold: float = 0.5


@dataclass
class RecorderConfig:
    enabled: bool = True
    compression: str = "lz4"
    camera_image: bool = False              # also record the input camera image (bigger file)


@dataclass
class OverlayConfig:
    enabled: bool = True
    fps: float | None = None                # None: the source rate (10 when unknown)
    mask_alpha: float = 0.35


@dataclass
class RunConfig:
    path: str = "<config>"
    input: InputConfig = field(default_factory=InputConfig)
    policy: str = "replay"
    rate: float = 0.0                       # replay pacing: 1 = recorded speed, 0 = as fast as possible
    frames: int | None = None
    queue_depth: int = 2
    sync: SyncConfig = field(default_factory=SyncConfig)
    masks: str = "ground_truth"
    engines: EnginesConfig = field(default_factory=EnginesConfig)
    fusion: dict[str, Any] = field(default_factory=dict)   # validated by FusionConfig.from_dict
    recorder: RecorderConfig = field(default_factory=RecorderConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    publisher: Any = None                   # pipeline.sinks.publisher.PublisherConfig (sinks.publisher; off by default)
    out: str = "out/run"
    progress: bool = True

    def with_overrides(self, *, input: str | None = None, frames: int | None = None, rate: float | None = None,
                       out: str | None = None, policy: str | None = None) -> "RunConfig":
        """The command line wins over the file; values are checked like the file's."""
        cfg = replace(self)
        if input is not None:
            cfg.input = replace(self.input, uri=input)
        if frames is not None:
            if frames < 1:
                raise ConfigError("must be at least 1", field="--frames")
            cfg.frames = frames
        if rate is not None:
            if rate < 0:
                raise ConfigError("must be >= 0 (0: as fast as possible, 1: recorded speed)", field="--rate")
            cfg.rate = rate
        if out is not None:
            cfg.out = out
        if policy is not None:
            if policy not in POLICIES:
                raise ConfigError(f"must be one of {', '.join(POLICIES)}", field="--policy")
            cfg.policy = policy
        return cfg


def _section(data: dict, key: str, path: Any, prefix: str = "") -> dict:
    value = get_key(data, key, (dict, type(None)), path=path, default=None, prefix=prefix)
    return value or {}


def _choice(data: dict, key: str, choices: tuple[str, ...], default: str, path: Any, prefix: str) -> str:
    value = get_key(data, key, str, path=path, default=default, prefix=prefix)
    if value not in choices:
        raise ConfigError(f"must be one of {', '.join(choices)}, got {value!r}", path=path, field=prefix + key)
    return value


def _opt(data: dict, key: str, kind: Any, path: Any, prefix: str) -> Any:
    return get_key(data, key, (kind, type(None)) if not isinstance(kind, tuple) else kind + (type(None),),
                   path=path, default=None, prefix=prefix)


def _positive(value: float | None, path: Any, name: str, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError("must be > 0" if not allow_zero else "must be >= 0", path=path, field=name)


def _engine_model(data: Any, kind: str, path: str, prefix: str) -> Any:
    """An engines.factory.EngineConfig from a mapping or a YAML file; errors name ``prefix``."""
    from engines.factory import engine_config_from_dict, load_engine_config

    if data is None:
        return None
    try:
        if isinstance(data, str):
            cfg = load_engine_config(data)
        elif isinstance(data, dict):
            cfg = engine_config_from_dict({"kind": kind, **data}, path=path)
        else:
            raise ConfigError(f"expected an engine config mapping or a YAML path, got {type(data).__name__}",
                              path=path, field=prefix.rstrip("."))
    except ConfigError as exc:
        if exc.path == path and exc.field and not exc.field.startswith(prefix):
            raise ConfigError(exc.message, path=path, field=prefix + exc.field) from None
        raise
    if cfg.kind is None:
        cfg.kind = kind
    if cfg.kind != kind:
        raise ConfigError(f"kind must be {kind} here, got {cfg.kind}", path=path, field=prefix + "kind")
    return cfg


def parse_run_config(data: dict[str, Any], path: str | Path = "<config>") -> RunConfig:
    """Validate a run config mapping (as read from YAML)."""
    p = str(path)
    check_unknown_keys(data, {"input", "run", "sync", "masks", "engines", "fusion", "sinks", "out"}, path=p)

    d = _section(data, "input", p)
    pre = "input."
    check_unknown_keys(d, {"uri", "calibration", "lidar", "topics", "camera_id", "fps", "loop"}, path=p, prefix=pre)
    topics = _section(d, "topics", p, pre)
    check_unknown_keys(topics, set(TOPIC_KEYS), path=p, prefix=pre + "topics.")
    for k, v in topics.items():
        if not isinstance(v, str) or not v.startswith("/"):
            raise ConfigError(f"a topic name starting with '/', got {v!r}", path=p, field=f"{pre}topics.{k}")
    inp = InputConfig(uri=_opt(d, "uri", str, p, pre), calibration=_opt(d, "calibration", str, p, pre),
                      lidar=_opt(d, "lidar", str, p, pre), topics=dict(topics),
                      camera_id=_opt(d, "camera_id", str, p, pre), fps=_opt(d, "fps", float, p, pre),
                      loop=get_key(d, "loop", bool, path=p, default=False, prefix=pre))
    _positive(inp.fps, p, pre + "fps")

    d = _section(data, "run", p)
    pre = "run."
    check_unknown_keys(d, {"policy", "rate", "frames", "queue_depth", "progress"}, path=p, prefix=pre)
    policy = _choice(d, "policy", POLICIES, "replay", p, pre)
    rate = get_key(d, "rate", float, path=p, default=0.0, prefix=pre)
    _positive(rate, p, pre + "rate", allow_zero=True)
    frames = _opt(d, "frames", int, p, pre)
    if frames is not None and frames < 1:
        raise ConfigError("must be at least 1", path=p, field=pre + "frames")
    depth = get_key(d, "queue_depth", int, path=p, default=2, prefix=pre)
    if not 1 <= depth <= 64:
        raise ConfigError("must be within 1..64", path=p, field=pre + "queue_depth")
    progress = get_key(d, "progress", bool, path=p, default=True, prefix=pre)

    d = _section(data, "sync", p)
    pre = "sync."
    check_unknown_keys(d, {"tolerance_ms", "camera_offset_ms", "lidar_offset_ms", "offsets_ms", "lidar_timeout_ms",
                           "use_poses"}, path=p, prefix=pre)
    offsets = _section(d, "offsets_ms", p, pre)
    for k, v in offsets.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"expected a number of milliseconds, got {v!r}", path=p, field=f"{pre}offsets_ms.{k}")
    sync = SyncConfig(tolerance_ms=get_key(d, "tolerance_ms", float, path=p, default=20.0, prefix=pre),
                      camera_offset_ms=get_key(d, "camera_offset_ms", float, path=p, default=0.0, prefix=pre),
                      lidar_offset_ms=get_key(d, "lidar_offset_ms", float, path=p, default=0.0, prefix=pre),
                      offsets_ms={str(k): float(v) for k, v in offsets.items()},
                      lidar_timeout_ms=get_key(d, "lidar_timeout_ms", float, path=p, default=150.0, prefix=pre),
                      use_poses=get_key(d, "use_poses", bool, path=p, default=True, prefix=pre))
    _positive(sync.tolerance_ms, p, pre + "tolerance_ms", allow_zero=True)
    _positive(sync.lidar_timeout_ms, p, pre + "lidar_timeout_ms", allow_zero=True)

    masks = _choice(data, "masks", MASK_PROVIDERS, "ground_truth", p, "")

    d = _section(data, "engines", p)
    pre = "engines."
    check_unknown_keys(d, {"deeplab", "maskrcnn", "resize", "score_threshold", "mask_threshold"}, path=p, prefix=pre)
    engines = EnginesConfig(deeplab=_engine_model(d.get("deeplab"), "deeplab", p, pre + "deeplab."),
                            maskrcnn=_engine_model(d.get("maskrcnn"), "maskrcnn", p, pre + "maskrcnn."),
                            resize=_choice(d, "resize", RESIZE_MODES, "letterbox", p, pre),
                            score_threshold=get_key(d, "score_threshold", float, path=p, default=0.5, prefix=pre),
                            mask_threshold=get_key(d, "mask_threshold", float, path=p, default=0.5, prefix=pre))
    for key in ("score_threshold", "mask_threshold"):
        if not 0.0 <= getattr(engines, key) <= 1.0:
            raise ConfigError("must be within 0..1", path=p, field=pre + key)
    if masks == "engines":
        for name in ("deeplab", "maskrcnn"):
            if getattr(engines, name) is None:
                raise ConfigError("masks: engines needs an engine config here (at least model: FILE)", path=p,
                                  field=f"{pre}{name}")

    fusion = _section(data, "fusion", p)
    from pipeline.fusion.config import FusionConfig

    FusionConfig.from_dict(fusion, path=p)          # validate now: errors name the key and the file

    d = _section(data, "sinks", p)
    check_unknown_keys(d, {"recorder", "overlay", "publisher"}, path=p, prefix="sinks.")
    from pipeline.sinks.publisher import publisher_config_from_dict

    publisher = publisher_config_from_dict(_section(d, "publisher", p, "sinks."), path=p)
    r = _section(d, "recorder", p, "sinks.")
    pre = "sinks.recorder."
    check_unknown_keys(r, {"enabled", "compression", "camera_image"}, path=p, prefix=pre)
    recorder = RecorderConfig(enabled=get_key(r, "enabled", bool, path=p, default=True, prefix=pre),
                              compression=_choice(r, "compression", COMPRESSIONS, "lz4", p, pre),
                              camera_image=get_key(r, "camera_image", bool, path=p, default=False, prefix=pre))
    o = _section(d, "overlay", p, "sinks.")
    pre = "sinks.overlay."
    check_unknown_keys(o, {"enabled", "fps", "mask_alpha"}, path=p, prefix=pre)
    overlay = OverlayConfig(enabled=get_key(o, "enabled", bool, path=p, default=True, prefix=pre),
                            fps=_opt(o, "fps", float, p, pre),
                            mask_alpha=get_key(o, "mask_alpha", float, path=p, default=0.35, prefix=pre))
    _positive(overlay.fps, p, pre + "fps")
    if not 0.0 <= overlay.mask_alpha <= 1.0:
        raise ConfigError("must be within 0..1", path=p, field=pre + "mask_alpha")

    out = get_key(data, "out", str, path=p, default="out/run")
    return RunConfig(path=p, input=inp, policy=policy, rate=rate, frames=frames, queue_depth=depth, sync=sync,
                     masks=masks, engines=engines, fusion=dict(fusion), recorder=recorder, overlay=overlay,
                     publisher=publisher, out=out, progress=progress)


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run config; ConfigError names the file and the key."""
    return parse_run_config(load_yaml(path), path)
