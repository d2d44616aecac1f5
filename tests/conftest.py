"""Shared fixtures. Real driving data lives in ../shared/data (non-commercial licence):
it is used by path and never copied; tests that need it skip when it is absent."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real driving data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kitti_object(shared_data: Path) -> Path:
    path = shared_data / "kitti_object"
    if not path.is_dir():
        pytest.skip(f"KITTI object frames not found at {path}")
    return path


# --- small random-weight models, exported once per test run -------------------------------
# Exporting takes 10-15 s each on a small CPU, so every test module that needs an ONNX DeepLab or
# Mask R-CNN (engines, runtime, profiling, TensorRT) shares these two. The models are random but
# not degenerate (engines.models.random_model), so disagreements would show; the export is
# checked against PyTorch on three frames and the report is kept for the export tests.

@dataclass(frozen=True)
class ExportedModel:
    spec: Any            # engines.models.ModelSpec
    model: Any           # the torchvision module that was exported
    path: Path           # the ONNX file
    report: Any          # engines.export.ExportReport (checked on model_frames[:3])


@pytest.fixture(scope="session")
def model_frames():
    """Procedural camera frames (375x1242 BGR) the shared models are checked and run on."""
    from engines.frames import procedural_frames

    return procedural_frames(12, (375, 1242), seed=3)


def _export_random(tmp_path_factory, frames, arch: str, seed: int, **spec_args) -> ExportedModel:
    from engines.export import export_onnx
    from engines.models import default_spec, random_model

    spec = default_spec(arch, **spec_args)
    model = random_model(spec, seed=seed)
    path = tmp_path_factory.mktemp(arch) / f"{arch}.onnx"
    report = export_onnx(spec, path, model=model, verify_frames=frames[:3])
    return ExportedModel(spec, model, path, report)


@pytest.fixture(scope="session")
def deeplab_onnx(tmp_path_factory, model_frames) -> ExportedModel:
    """DeepLabV3 MobileNetV3-Large, 96x192 input, random weights (seed 1)."""
    return _export_random(tmp_path_factory, model_frames, "deeplabv3_mobilenet_v3_large", 1, input_hw=(96, 192))


@pytest.fixture(scope="session")
def maskrcnn_onnx(tmp_path_factory, model_frames) -> ExportedModel:
    """Mask R-CNN MobileNetV3-Large FPN, 192x256 input, 16 static detections, random weights (seed 2)."""
    return _export_random(tmp_path_factory, model_frames, "maskrcnn_mobilenet_v3_large_fpn", 2,
                          input_hw=(192, 256), num_detections=16, rpn_pre_nms_top_n=150, rpn_post_nms_top_n=80,
                          box_candidates=300)
