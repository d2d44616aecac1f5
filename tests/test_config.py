from __future__ import annotations

import pytest

from pipeline.config import load_taxonomy, load_yaml
from pipeline.errors import ConfigError


def test_taxonomy_has_the_documented_classes():
    tax = load_taxonomy()
    assert tax.names == ("road", "lane_marking", "sidewalk", "building", "vegetation", "pole",
                         "car", "truck", "pedestrian", "cyclist", "sky")
    assert tax.thing_names == ("car", "truck", "pedestrian", "cyclist")
    assert tax.id("lane_marking") == 1
    assert tax.color_lut().shape == (256, 3)


def test_taxonomy_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "classes.yaml"
    bad.write_text("ignore_id: 255\nclasses:\n  - {id: 0, name: road, thing: false, color: [1, 2]}\n")
    with pytest.raises(ConfigError) as err:
        load_taxonomy(bad)
    assert str(bad) in str(err.value) and "classes[0].color" in str(err.value)
    bad.write_text("ignore_id: 255\nclasses:\n  - {id: 1, name: road, thing: false, color: [1, 2, 3]}\n")
    with pytest.raises(ConfigError, match=r"classes\[0\]\.id"):
        load_taxonomy(bad)
    with pytest.raises(ConfigError, match="unknown class"):
        load_taxonomy().id("bus")


def test_load_yaml_reports_syntax_errors_with_line(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: not valid YAML \(line"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_yaml(tmp_path / "missing.yaml")
