"""One config schema: every key documented where it is declared, the docs and the JSON Schema
generated from it (and checked against the shipped configs), bad values refused by name."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from pipeline.config import schema_rows
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_every_key_has_a_doc_and_the_generated_docs_are_current():
    from pipeline.config_docs import RUNTIME_DOC, SCHEMA_FILE, render_doc, run_config_schema
    from pipeline.run_config import RunConfig

    rows = schema_rows(RunConfig)
    assert len(rows) > 60
    undocumented = [r["key"] for r in rows if len(r["doc"].strip()) < 10]
    assert not undocumented, f"keys without a one-line doc: {undocumented}"
    text = RUNTIME_DOC.read_text()
    assert render_doc(text) == text, "docs/runtime.md's config reference is stale: run python -m pipeline.config_docs"
    for r in rows:
        assert f"`{r['key']}`" in text, f"{r['key']} missing from docs/runtime.md"
    assert json.loads(SCHEMA_FILE.read_text()) == run_config_schema(), \
        "configs/run_config.schema.json is stale: run python -m pipeline.config_docs"


def test_the_docs_check_fails_when_a_key_is_added_without_regenerating(monkeypatch):
    """The drift check above can fail: add a field to a section and the rendered docs differ."""
    import dataclasses

    from pipeline import config_docs
    from pipeline.config import setting
    from pipeline.sync import SyncConfig

    @dataclasses.dataclass
    class Wider(SyncConfig):
        new_knob_ms: float = setting(1.0, unit="ms", doc="a knob added without regenerating the docs")

    text = config_docs.RUNTIME_DOC.read_text()
    import pipeline.run_config as rc
    fields = {f.name: f for f in dataclasses.fields(rc.RunConfig)}
    monkeypatch.setattr(fields["sync"], "type", "Wider")
    monkeypatch.setitem(rc.__dict__, "Wider", Wider)
    monkeypatch.setattr(rc.RunConfig, "__annotations__", {**rc.RunConfig.__annotations__, "sync": "Wider"})
    assert config_docs.render_doc(text) != text
    assert "`sync.new_knob_ms`" in config_docs.reference_markdown()


def test_json_schema_accepts_the_shipped_configs_and_rejects_a_bad_one():
    import jsonschema

    from pipeline.config_docs import run_config_schema

    schema = run_config_schema()
    for name in ("demo.yaml", "kitti.yaml", "jetson_trt.yaml"):
        jsonschema.validate(yaml.safe_load((REPO / "configs" / name).read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"masks": "engines", "sync": {"tolerance_ms": -1}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"masks": "engines", "fusion": {"unknown_key": 1}}, schema)


@pytest.mark.parametrize("data, field, words", [
    ({"masks": "ground_truth", "sync": {"tolerance_ms": math.nan}}, "sync.tolerance_ms", "finite"),
    ({"masks": "ground_truth", "sync": {"tolerance_ms": math.inf}}, "sync.tolerance_ms", "finite"),
    ({"masks": "ground_truth", "run": {"rate": math.nan}}, "run.rate", "finite"),
    ({}, "masks", "required"),
    ({"masks": "ground_truth", "engines": {"deeplab": {"model": "a.onnx", "score_threshold": 0.9}}},
     "engines.deeplab.score_threshold", "only Mask R-CNN"),
    ({"masks": "ground_truth", "engines": {"maskrcnn": {"model": "a.onnx", "score_threshold": 1.5}}},
     "engines.maskrcnn.score_threshold", "<= 1"),
    ({"masks": "ground_truth", "engines": {"score_threshold": 0.5}}, "engines.score_threshold", "unknown key"),
    ({"masks": "ground_truth", "fusion": {"splat_half_px": [1]}}, "fusion.splat_half_px", "2 values"),
    ({"masks": "ground_truth", "sinks": {"publisher": {"connect": ["nohost"]}}}, "sinks.publisher.connect",
     "endpoint"),
    ({"masks": "ground_truth", "input": {"topics": {"points": "points"}}}, "input.topics.points", "starting with"),
])
def test_bad_values_are_refused_naming_the_file_and_key(data, field, words):
    from pipeline.run_config import parse_run_config

    with pytest.raises(ConfigError) as e:
        parse_run_config(data, "my.yaml")
    assert e.value.path == "my.yaml" and e.value.field == field and words in str(e.value)


def test_rate_nan_on_the_command_line_is_refused():
    from pipeline.run_config import parse_run_config

    cfg = parse_run_config({"masks": "ground_truth"})
    with pytest.raises(ConfigError, match="finite"):
        cfg.with_overrides(rate=math.nan)


def test_masks_has_no_silent_oracle_default(tmp_path):
    """A config that does not say where its masks come from is refused, not run on ground truth."""
    from pipeline.run_config import load_run_config

    p = tmp_path / "run.yaml"
    p.write_text("input: {uri: somewhere}\n")
    with pytest.raises(ConfigError, match="required key is missing .one of engines, ground_truth") as e:
        load_run_config(p)
    assert e.value.field == "masks"
