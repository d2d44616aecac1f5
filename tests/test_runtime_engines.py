"""The ``masks: engines`` path: DeepLab and Mask R-CNN (small random-weight models exported with
engines' own export code, shared by the whole test run: tests/conftest.py) on ONNX Runtime, run
concurrently on two threads inside the graph."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def models(deeplab_onnx, maskrcnn_onnx) -> tuple[Path, Path]:
    """The session's shared random-weight DeepLab and Mask R-CNN (tests/conftest.py)."""
    return deeplab_onnx.path, maskrcnn_onnx.path


@pytest.fixture(scope="session")
def small_drive(tmp_path_factory) -> Path:
    from pipeline.sim.simulate import simulate

    path = tmp_path_factory.mktemp("engines_drive") / "drive"
    simulate(path, frames=3, seed=11, scale=0.3, progress=False)
    return path


def _config(tmp_path: Path, drive: Path, deeplab: Path, maskrcnn: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["input"]["uri"] = str(drive)
    cfg["out"] = str(tmp_path / "out")
    cfg["run"]["progress"] = False
    cfg["masks"] = "engines"                                  # the two-line switch of demo.yaml
    cfg["engines"]["deeplab"]["model"] = str(deeplab)
    cfg["engines"]["maskrcnn"]["model"] = str(maskrcnn)
    cfg["engines"]["maskrcnn"]["score_threshold"] = 0.05      # random weights: low scores
    path = tmp_path / "engines.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_engines_masks_run_concurrently_and_reach_the_recording(models, small_drive, tmp_path):
    from rosbags.highlevel import AnyReader

    from pipeline.msgs import make_typestore

    from pipeline.drive.io import open_drive

    with open_drive(small_drive) as d:
        size = (d.calib.width, d.calib.height)
    deeplab, maskrcnn = models
    assert main(["run", str(_config(tmp_path, small_drive, deeplab, maskrcnn)), "--no-progress"]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert not s["oracle"] and "DeepLab" in s["masks_label"]
    assert s["frames"]["done"] == 3 and s["frames"]["fused_clouds"] == 3
    assert {"preprocess", "infer.deeplab", "infer.maskrcnn", "postprocess", "fuse"} <= set(s["stages_ms"])
    with AnyReader([tmp_path / "out" / "recording"], default_typestore=make_typestore()) as r:
        counts = {}
        for c, _, raw in r.messages():
            counts[c.topic] = counts.get(c.topic, 0) + 1
            if c.topic == "/segfuse/camera_front/semantic":
                img = r.deserialize(raw, c.msgtype)
                assert (img.width, img.height) == size and img.encoding == "mono8"
        info = [json.loads(r.deserialize(raw, c.msgtype).data) for c, _, raw in r.messages()
                if c.topic == "/segfuse/run_info"][0]
    assert counts["/segfuse/camera_front/semantic"] == counts["/segfuse/camera_front/instance"] == 3
    assert info["oracle"] is False and info["masks"] == "engines"


def test_engines_infer_in_parallel_threads(models, small_drive, tmp_path):
    """Both models start on the same frame at once (two threads, two sessions): their traced
    intervals overlap."""
    from pipeline.run_config import load_run_config
    from pipeline.runner import build_run

    deeplab, maskrcnn = models
    run = build_run(load_run_config(_config(tmp_path, small_drive, deeplab, maskrcnn)))
    try:
        run.graph.start()
        assert run.graph.wait(120)
        run.graph.raise_error()
    finally:
        run.recorder.close()
        run.overlay.close()
        run.close_engines()
    spans = [(t.stages["infer.deeplab"], t.stages["infer.maskrcnn"]) for t in run.graph.stage_traces]
    assert len(spans) == 3
    assert any(a[0] < b[1] and b[0] < a[1] for a, b in spans)


def test_a_model_of_the_wrong_kind_is_refused(models, small_drive, tmp_path, caplog):
    deeplab, maskrcnn = models
    assert main(["run", str(_config(tmp_path, small_drive, maskrcnn, deeplab)), "--no-progress"]) == 2
    assert "engines.deeplab" in caplog.text or "contract" in caplog.text
