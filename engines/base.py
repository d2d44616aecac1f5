"""The one Engine interface every backend implements.

``infer(batch) -> outputs`` with numpy arrays keyed by tensor name, ``describe()`` for
summaries, and the I/O specs. Engines check their I/O against the contract of their kind
(engines/contracts.py) when they are created, and each batch against the input specs.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from engines.contracts import ContractInfo, TensorSpec, check_contract
from pipeline.errors import EngineError


class Engine(ABC):
    """A loaded model, ready to run. Use as a context manager or call ``close()``."""

    backend: str = ""

    def __init__(self, path: Path, kind: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 metadata: dict[str, str] | None = None, precision: str = "fp32"):
        self.path = Path(path)
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.metadata = dict(metadata or {})
        self.precision = precision
        self.contract: ContractInfo = check_contract(kind, self.inputs, self.outputs, path=self.path)
        self.kind = self.contract.kind

    # -- the interface -----------------------------------------------------------------------
    @abstractmethod
    def infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: {"images": float32 [B,3,H,W]} -> {output name: array}."""

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "path": str(self.path),
            "kind": self.kind,
            "precision": self.precision,
            "input_hw": list(self.contract.input_hw),
            "inputs": [s.describe() for s in self.inputs],
            "outputs": [s.describe() for s in self.outputs],
            "num_detections": self.contract.num_detections,
            "metadata": {k: v for k, v in self.metadata.items()},
        }

    def close(self) -> None:
        """Release the session / device memory (idempotent)."""

    # -- helpers -----------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.contract.input_hw

    def check_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate names, dtypes and static dimensions; return contiguous arrays."""
        if not isinstance(batch, dict):
            raise EngineError(f"batch must be a dict of arrays, got {type(batch).__name__}", path=self.path,
                              field="inputs")
        missing = [n for n in self.input_names if n not in batch]
        extra = [n for n in batch if n not in self.input_names]
        if missing or extra:
            raise EngineError(f"inputs must be exactly {self.input_names}; missing {missing}, unexpected {extra}",
                              path=self.path, field="inputs")
        out = {}
        for spec in self.inputs:
            arr = batch[spec.name]
            if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(spec.dtype):
                got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
                raise EngineError(f"expected {spec.dtype}, got {got}", path=self.path, field=f"inputs.{spec.name}")
            if arr.ndim != len(spec.shape) or any(d is not None and d != a for d, a in zip(spec.shape, arr.shape)):
                raise EngineError(f"expected shape {spec.describe()}, got {list(arr.shape)}", path=self.path,
                                  field=f"inputs.{spec.name}")
            out[spec.name] = np.ascontiguousarray(arr)
        return out

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, kind={self.kind}, precision={self.precision})"
