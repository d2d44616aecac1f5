"""The scripts in examples/ run as a user runs them (a fresh interpreter, from another folder) on
a small synthetic drive, and what they write is right: the recording scores above the committed
models' floor, and the user's own masks label the cloud's points with their true classes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SEED = 3303          # not a training (1001-1040), validation (2001-2012) or test drive (5001-5004)
FRAMES = 3


@pytest.fixture(scope="module")
def drive(tmp_path_factory) -> Path:
    from pipeline.sim.simulate import simulate

    path = tmp_path_factory.mktemp("examples") / "drive"
    simulate(path, frames=FRAMES, seed=SEED, progress=False, workers=1)
    return path


def _run(script: str, *args: str, cwd: Path) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_examples_are_short():
    for script in ("segment_fuse_record.py", "fuse_my_masks.py"):
        code = [line for line in (EXAMPLES / script).read_text().splitlines() if line.strip()]
        assert len(code) <= 55, f"{script}: {len(code)} lines"


@pytest.mark.slow
def test_segment_fuse_record_example(drive, tmp_path):
    from pipeline.evaluation import evaluate_recording

    printed = _run("segment_fuse_record.py", str(drive), str(tmp_path / "out"), cwd=tmp_path)
    assert printed.count("points labelled") == FRAMES
    m = evaluate_recording(tmp_path / "out" / "recording", drive)
    assert m["frames"]["evaluated"] == FRAMES and m["oracle"] is False
    assert m["points"]["class_accuracy"] >= 0.85, m["points"]     # the committed models' floor (test_default_models)
    assert m["objects"]["matched"] > 0


@pytest.mark.slow
def test_fuse_my_masks_example(drive, tmp_path):
    from calibration.io_rig_yaml import write_rig_yaml
    from calibration.rig import rig_from_drive_calib
    from pipeline.config import load_taxonomy
    from pipeline.drive.io import open_drive
    from pipeline.types import NO_INSTANCE

    with open_drive(drive) as d:
        rig = rig_from_drive_calib(d.calib)
        frame = next(iter(d.frames()))
    write_rig_yaml(rig, tmp_path / "rig.yaml")
    frame.lidar.points.tofile(tmp_path / "cloud.bin")                 # a KITTI-style .bin, as a user has it
    cv2.imwrite(str(tmp_path / "semantic.png"), frame.semantic)       # "your" masks: the drive's exact ones
    cv2.imwrite(str(tmp_path / "instances.png"), frame.instance)
    printed = _run("fuse_my_masks.py", "rig.yaml", "cloud.bin", "semantic.png", "instances.png", "--out", "f.npz",
                   cwd=tmp_path)
    assert "car" in printed and "lane lines" in printed
    out = np.load(tmp_path / "f.npz")
    assert np.array_equal(out["points"], frame.lidar.points)
    ignore = load_taxonomy().ignore_id
    labelled = (out["class_id"] != ignore) & (frame.point_class != ignore)
    assert labelled.sum() > 10_000
    assert (out["class_id"][labelled] == frame.point_class[labelled]).mean() > 0.97
    assert (out["instance_id"] != NO_INSTANCE).sum() > 500
