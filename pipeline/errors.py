"""The segfuse error hierarchy.

Every error names the file (or URI) and the field it is about, so the CLI can
print one clear line. Leaf module: imports nothing of ours.
"""
from __future__ import annotations

from pathlib import Path


class SegfuseError(Exception):
    """Base of every error segfuse raises on purpose."""

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.path:
            where.append(self.path)
        if self.field:
            where.append(f"field '{self.field}'")
        return f"{': '.join(where)}: {self.message}" if where else self.message


class ConfigError(SegfuseError):
    """A YAML config, or a command-line option, is invalid."""


class CalibrationError(SegfuseError):
    """A calibration file or rig is missing, malformed or physically implausible."""


class InputDataError(SegfuseError):
    """A frame, point cloud, bag or drive cannot be read or is corrupt."""


class EngineError(SegfuseError):
    """A model, ONNX file or engine cannot be loaded, built or run."""
