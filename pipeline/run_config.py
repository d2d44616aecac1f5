"""The run config (``segfuse run CONFIG``): YAML, validated when loaded; every error names
the key and the file. This module only composes the sections; each section's schema lives
with its component (pipeline.config.setting), and docs/runtime.md's tables are generated from
them (``python -m pipeline.config_docs``).

| section | dataclass | module |
|---|---|---|
| ``input`` | InputConfig | pipeline/sources/__init__.py |
| ``run`` | RunOptions | pipeline/runner.py |
| ``sync`` | SyncConfig | pipeline/sync.py |
| ``engines`` | EnginesConfig (+ engines.factory.EngineConfig per model) | pipeline/stages.py |
| ``fusion`` | FusionConfig | pipeline/fusion/config.py |
| ``tracking`` | TrackerConfig | pipeline/tracking.py |
| ``sinks.recorder`` / ``overlay`` / ``publisher`` / ``liveview`` | RecorderConfig / OverlayConfig / PublisherConfig / LiveViewConfig | pipeline/sinks/ |
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.config import load_yaml, parse_section, setting
from pipeline.errors import ConfigError
from pipeline.fusion.config import FusionConfig
from pipeline.runner import POLICIES, RunOptions
from pipeline.sinks.liveview import LiveViewConfig
from pipeline.sinks.overlay import OverlayConfig
from pipeline.sinks.publisher import PublisherConfig
from pipeline.sinks.recorder import RecorderConfig
from pipeline.sources import InputConfig
from pipeline.stages import EnginesConfig
from pipeline.sync import SyncConfig
from pipeline.tracking import TrackerConfig

MASK_PROVIDERS = ("engines", "ground_truth", "label_boxes")


@dataclass
class SinksConfig:
    """``sinks:``: where the results go."""

    recorder: RecorderConfig = setting(factory=RecorderConfig, doc="the recording")
    overlay: OverlayConfig = setting(factory=OverlayConfig, doc="the overlay video")
    publisher: PublisherConfig = setting(factory=PublisherConfig, doc="live results over Zenoh")
    liveview: LiveViewConfig = setting(factory=LiveViewConfig, doc="the Foxglove live view (WebSocket)")


@dataclass(kw_only=True)
class RunConfig:
    input: InputConfig = setting(factory=InputConfig, doc="what to read")
    run: RunOptions = setting(factory=RunOptions, doc="how to run it")
    sync: SyncConfig = setting(factory=SyncConfig, doc="camera-LiDAR pairing")
    masks: str = setting(choices=MASK_PROVIDERS, doc="where the masks come from: engines (the models), "
                         "ground_truth (the drive's own masks: an ORACLE for testing fusion; say so explicitly) or "
                         "label_boxes (a KITTI object / nuScenes folder's labelled 3D boxes drawn as rectangles: an "
                         "ORACLE too)")
    engines: EnginesConfig = setting(factory=EnginesConfig, doc="the models (masks: engines)")
    fusion: FusionConfig = setting(factory=FusionConfig, doc="fusion of masks and LiDAR")
    tracking: TrackerConfig = setting(factory=TrackerConfig, doc="the tracking stage after fusion")
    sinks: SinksConfig = setting(factory=SinksConfig, doc="outputs")
    out: str = setting("out/run", doc="the output folder (--out)")
    path: str = "<config>"                  # the file it came from (not a key)

    def check(self, *, path: Any, prefix: str = "") -> None:
        if self.masks == "engines":
            for name in ("deeplab", "maskrcnn"):
                if getattr(self.engines, name) is None:
                    raise ConfigError("masks: engines needs an engine config here (at least model: FILE)", path=path,
                                      field=f"{prefix}engines.{name}")

    def with_overrides(self, *, input: str | None = None, frames: int | None = None, rate: float | None = None,
                       out: str | None = None, policy: str | None = None) -> "RunConfig":
        """The command line wins over the file; values are checked like the file's."""
        import math

        cfg = replace(self)
        run = self.run
        if input is not None:
            cfg.input = replace(self.input, uri=input)
        if frames is not None:
            if frames < 1:
                raise ConfigError("must be at least 1", field="--frames")
            run = replace(run, frames=frames)
        if rate is not None:
            if not math.isfinite(rate) or rate < 0:
                raise ConfigError(f"must be a finite number >= 0 (0: as fast as possible, 1: recorded speed), got "
                                  f"{rate!r}", field="--rate")
            run = replace(run, rate=rate)
        if out is not None:
            cfg.out = out
        if policy is not None:
            if policy not in POLICIES:
                raise ConfigError(f"must be one of {', '.join(POLICIES)}", field="--policy")
            run = replace(run, policy=policy)
        cfg.run = run
        return cfg


def parse_run_config(data: dict[str, Any], path: str | Path = "<config>") -> RunConfig:
    """Validate a run config mapping (as read from YAML)."""
    cfg = parse_section(RunConfig, data, path=str(path))
    cfg.path = str(path)
    return cfg


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run config; ConfigError names the file and the key."""
    return parse_run_config(load_yaml(path), path)
