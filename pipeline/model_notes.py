"""The one line a run shows when the committed default models (trained only on ``segfuse sim``
drives) run on anything else: in the summary (``note``) and under the overlay's banner, pointing
to ``segfuse engines export`` for the user's own checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import data_path      # models/ in a checkout, the shipped copy when installed

COMMITTED_MODELS = ("deeplabv3plus_mobilenet_v3_small.onnx", "maskrcnn_mobilenet_v3_small_fpn.onnx")
SYNTHETIC_ONLY_NOTE = ("the committed default models know only the synthetic world (segfuse sim): on real cameras "
                       "expect little; export your own checkpoint with 'segfuse engines export' (docs/engines.md)")


def is_sim_drive(source: Any) -> bool:
    """Whether ``source`` replays a ``segfuse sim`` drive (its drive meta is there)."""
    drive = getattr(source, "drive", None)
    if drive is not None:
        return getattr(drive, "meta", None) is not None
    types = getattr(source, "_types", None)
    if types is not None:
        from pipeline.sources.bag import META_TOPIC

        return META_TOPIC in types
    return False


def uses_committed_models(cfg: Any) -> bool:
    if cfg.masks != "engines":
        return False
    for e in (cfg.engines.deeplab, cfg.engines.maskrcnn):
        model = Path(e.model).resolve() if e is not None else None
        if model is not None and model.parent == data_path("models") and model.name in COMMITTED_MODELS:
            return True
    return False


def synthetic_only_note(cfg: Any, source: Any) -> str | None:
    """The note, when the committed models run on an input that is not a ``segfuse sim`` drive."""
    return SYNTHETIC_ONLY_NOTE if uses_committed_models(cfg) and not is_sim_drive(source) else None
