"""Every config in configs/ loads, and every model file it names is there, or its line says
``# user-supplied`` (a checkpoint you bring, an ONNX your own export writes)."""
from __future__ import annotations

from pathlib import Path

import pytest

from engines.factory import load_engine_config
from engines.models import load_model_spec
from pipeline.config import load_yaml
from pipeline.run_config import load_run_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "classes.yaml")
ENGINE_CONFIGS = sorted((CONFIGS / "engines").glob("*.yaml"))
MARK = "user-supplied"


def _marked(path: Path, raw: str) -> bool:
    """The YAML line that names ``raw`` carries a ``# user-supplied`` comment."""
    return any(raw in line.split("#")[0] and MARK in line.partition("#")[2] for line in path.read_text().splitlines())


def _check(config: Path, raw: str, resolved: Path, missing: list[str]) -> None:
    if not resolved.is_file() and not _marked(config, raw):
        missing.append(f"{config.name}: {raw} ({resolved} not found, not marked '# {MARK}')")


def test_there_are_configs_to_check():
    assert {p.name for p in RUN_CONFIGS} >= {"demo.yaml", "kitti.yaml", "jetson_trt.yaml"}
    assert len(ENGINE_CONFIGS) >= 5


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=lambda p: p.name)
def test_run_config_loads_and_its_models_exist(config):
    cfg = load_run_config(config)                 # validated: a bad key raises ConfigError naming it
    raw = load_yaml(config).get("engines") or {}
    missing: list[str] = []
    for kind in ("deeplab", "maskrcnn"):
        engine = getattr(cfg.engines, kind)
        if engine is None:
            continue
        # run configs' relative paths are relative to the current folder: the repository root here
        section = raw[kind]
        named = section["model"] if isinstance(section, dict) else section
        model = Path(engine.model)
        _check(config, str(named), model if model.is_absolute() else REPO / model, missing)
    assert not missing, missing
    if cfg.masks == "engines":
        assert cfg.engines.deeplab is not None and cfg.engines.maskrcnn is not None


@pytest.mark.parametrize("config", ENGINE_CONFIGS, ids=lambda p: p.name)
def test_engine_config_loads_and_its_models_exist(config):
    data = load_yaml(config)
    assert "model" in data or "engine" in data, "neither a model nor an engine section"
    missing: list[str] = []
    if "model" in data:
        spec = load_model_spec(config)            # relative paths: relative to the file
        if spec.checkpoint is not None:
            _check(config, str(data["model"]["checkpoint"]), Path(spec.checkpoint), missing)
    if "engine" in data:
        engine = load_engine_config(config)
        _check(config, str(data["engine"]["model"]), Path(engine.model), missing)
    assert not missing, missing


def test_an_unmarked_missing_model_is_caught(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  model: nowhere.onnx\n  kind: deeplab\n")
    good = tmp_path / "good.yaml"
    good.write_text("engine:\n  model: nowhere.onnx   # user-supplied: your export\n  kind: deeplab\n")
    missing: list[str] = []
    for config in (bad, good):
        _check(config, "nowhere.onnx", Path(load_engine_config(config).model), missing)
    assert len(missing) == 1 and "bad.yaml" in missing[0]
