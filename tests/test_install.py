"""``pip install .`` (a wheel, not editable) gives a working ``segfuse`` outside the checkout.

A fully fresh environment would download ~5 GB of torch, so the new venv takes its third-party
packages from the running interpreter's site-packages through a plain ``.pth`` path line (a path
line only: the ``.pth`` files there, such as an editable install's finder, are not run). segfuse
itself is built into a wheel from a copy of the checkout's files and installed into the new venv,
then ``segfuse demo --frames 5`` runs in an empty folder. The installed package must import from
the venv, never from the checkout, and find its taxonomy, configs and models as package data.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _source_files() -> list[Path]:
    """The files a checkout has: tracked and untracked-but-not-ignored (no .venv, data/, out/)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                             check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot tell source files from build outputs")
    return [Path(p) for p in out.split("\0") if p and (REPO / p).is_file()]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A new venv with segfuse installed from a wheel; returns the venv's folder."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    env = _clean_env()
    run = dict(check=True, capture_output=True, text=True, env=env, timeout=600)
    try:
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                                "--no-index", "-w", str(root / "wheels"), str(src)], **run)
    except subprocess.CalledProcessError as exc:
        raise AssertionError(f"pip wheel failed:\n{exc.stdout}\n{exc.stderr}") from None
    (wheel,) = (root / "wheels").glob("segfuse-*.whl")
    # the set-up's own warnings (a deprecated license table, a data folder missing from packages, ...)
    warnings = [line.strip() for line in (built.stdout + built.stderr).splitlines() if "Warning" in line]
    assert not warnings, warnings

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], **run)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               **run).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_segfuse_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    # -I: never touch (uninstall) the segfuse the borrowed site-packages may hold
    try:
        subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-I", str(wheel)], **run)
    except subprocess.CalledProcessError as exc:
        raise AssertionError(f"pip install failed:\n{exc.stdout}\n{exc.stderr}") from None
    return venv


@pytest.mark.slow
def test_installed_package_imports_from_the_venv_and_ships_its_data(installed, tmp_path):
    probe = ("import json, pipeline, engines, calibration\n"
             "from pipeline.config import TAXONOMY_PATH, data_path, load_taxonomy\n"
             "from pipeline.demo import DEMO_CONFIG\n"
             "from pipeline.msgs import msg_files\n"
             "print(json.dumps({'pipeline': pipeline.__file__, 'engines': engines.__file__,\n"
             "  'calibration': calibration.__file__, 'taxonomy': str(TAXONOMY_PATH),\n"
             "  'classes': load_taxonomy().num_classes, 'demo': str(DEMO_CONFIG),\n"
             "  'configs': sorted(p.name for p in data_path('configs').iterdir() if p.is_file()),\n"
             "  'engines_cfgs': sorted(p.name for p in data_path('configs/engines').glob('*.yaml')),\n"
             "  'models': sorted(p.name for p in data_path('models').iterdir()),\n"
             "  'msgs': len(msg_files())}))\n")
    out = subprocess.run([str(installed / "bin" / "python"), "-c", probe], cwd=tmp_path, check=True,
                         capture_output=True, text=True, env=_clean_env(), timeout=300).stdout
    info = json.loads(out.strip().splitlines()[-1])
    site = installed.resolve()
    for key in ("pipeline", "engines", "calibration", "taxonomy", "demo"):
        path = Path(info[key]).resolve()
        assert path.is_relative_to(site), f"{key} comes from {path}, not the installed package"
        assert not path.is_relative_to(REPO)
    assert info["classes"] == 11
    assert info["configs"] == sorted(p.name for p in (REPO / "configs").iterdir() if p.suffix in (".yaml", ".json"))
    assert info["engines_cfgs"] == sorted(p.name for p in (REPO / "configs" / "engines").glob("*.yaml"))
    assert info["models"] == sorted(p.name for p in (REPO / "models").iterdir() if p.suffix in (".onnx", ".md"))
    assert info["msgs"] == len(list((REPO / "pipeline" / "msgs").glob("*/msg/*.msg")))


@pytest.mark.slow
def test_installed_segfuse_demo_runs_outside_the_checkout(installed, tmp_path):
    proc = subprocess.run([str(installed / "bin" / "segfuse"), "demo", "--frames", "5"], cwd=tmp_path,
                          capture_output=True, text=True, env=_clean_env(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out" / "demo"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"]["done"] == 5 and summary["frames"]["fused_clouds"] == 5
    assert summary["masks"] == "engines" and "deeplabv3plus_mobilenet_v3_small.onnx" in summary["masks_label"]
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics                                   # scored against the generated drive's truth
    assert (out / "overlay.mp4").stat().st_size > 0
    assert (tmp_path / "data" / "demo_drive").is_dir()
