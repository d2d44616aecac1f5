"""Engine cache keys, sidecars and TensorRT version dispatch: pure Python, no TensorRT needed."""
from __future__ import annotations

import dataclasses

import pytest

from engines import engine_cache as cache
from pipeline.errors import EngineError

BASE = cache.BuildKey(onnx_sha256="a" * 64, precision="fp16", shapes={"images": [[1, 3, 512, 1024]] * 3},
                      trt_version="10.3.0.30", gpu_name="Orin", compute_capability="8.7", dla_core=None,
                      calibration_sha256=None, build_path="legacy_flags", extra={"workspace_mb": 2048})


@pytest.mark.parametrize("change", [
    {"onnx_sha256": "b" * 64},
    {"precision": "int8"},
    {"shapes": {"images": [[1, 3, 512, 1024], [1, 3, 512, 1024], [4, 3, 512, 1024]]}},
    {"trt_version": "10.3.0.31"},
    {"gpu_name": "NVIDIA H100"},
    {"compute_capability": "9.0"},
    {"dla_core": 0},
    {"calibration_sha256": "c" * 64},
    {"build_path": "strongly_typed"},
    {"extra": {"workspace_mb": 4096}},
])
def test_cache_key_changes_with_every_input(change):
    assert cache.cache_key(dataclasses.replace(BASE, **change)) != cache.cache_key(BASE)


def test_cache_key_is_stable_and_order_independent():
    again = dataclasses.replace(BASE, shapes=dict(BASE.shapes), extra={"workspace_mb": 2048})
    assert cache.cache_key(again) == cache.cache_key(BASE)
    assert len(cache.cache_key(BASE)) == 64
    with pytest.raises(EngineError, match="precision"):
        cache.cache_key(dataclasses.replace(BASE, precision="int4"))


@pytest.mark.parametrize("version,path", [
    ("8.5.2.2", "legacy_flags"),          # JetPack 5.1
    ("8.6.1", "legacy_flags"),
    ("10.3.0.30", "legacy_flags"),        # JetPack 6
    ("10.11.0.33", "legacy_flags"),
    ("10.12.0.36", "strongly_typed"),
    ("10.13.2", "strongly_typed"),
    ("11.0.0.1", "strongly_typed"),
    ("11.4.1", "strongly_typed"),
])
def test_select_build_path(version, path):
    assert cache.select_build_path(version) == path


def test_select_build_path_rejects_old_or_garbage_versions():
    with pytest.raises(EngineError, match="too old"):
        cache.select_build_path("8.4.3")
    with pytest.raises(EngineError, match="version"):
        cache.select_build_path("unknown")
    assert cache.parse_version("8.5.2-1+cuda11.4") == (8, 5, 2)


def test_lookup_sidecar_roundtrip_and_staleness(tmp_path):
    onnx = tmp_path / "deeplab.onnx"
    onnx.write_bytes(b"onnx")
    key_hex = cache.cache_key(BASE)
    engine, sidecar, hit = cache.lookup(tmp_path, onnx, BASE)
    assert not hit and engine.name.startswith("deeplab.") and engine.suffix == ".engine"
    engine.write_bytes(b"plan")
    assert not cache.lookup(tmp_path, onnx, BASE)[2], "no sidecar: not a hit"
    cache.write_sidecar(sidecar, BASE, key_hex, engine_file=engine, build_seconds=1.5)
    assert cache.lookup(tmp_path, onnx, BASE)[2]
    data = cache.read_sidecar(sidecar)
    assert data["inputs"]["gpu_name"] == "Orin" and data["key"] == key_hex
    other = dataclasses.replace(BASE, trt_version="10.4.0")
    assert not cache.lookup(tmp_path, onnx, other)[2], "another TensorRT version never reuses the engine"
    sidecar.write_text("{not json")
    assert not cache.lookup(tmp_path, onnx, BASE)[2]
    engine.write_bytes(b"")
    cache.write_sidecar(sidecar, BASE, key_hex, engine_file=engine)
    assert not cache.lookup(tmp_path, onnx, BASE)[2], "empty engine file: rebuild"


def test_timing_cache_path_names_version_and_gpu(tmp_path):
    p = cache.timing_cache_path(tmp_path, "10.3.0.30", "NVIDIA Jetson AGX Orin", "8.7")
    assert p.parent == tmp_path and "10.3.0.30" in p.name and "sm87" in p.name and "orin" in p.name
    assert p != cache.timing_cache_path(tmp_path, "10.3.0.30", "NVIDIA H100", "9.0")


def test_bundled_engine_configs_load():
    from pathlib import Path

    from engines.factory import load_engine_config
    from engines.models import load_model_spec

    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "engines").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        text = path.read_text()
        if "\nmodel:" in "\n" + text:
            spec = load_model_spec(path)
            assert spec.class_map
        if "\nengine:" in "\n" + text:
            assert load_engine_config(path).backend in ("onnxruntime", "tensorrt")


@pytest.mark.parametrize("version,supported", [
    ("8.5.2.2", True), ("10.3.0.30", True), ("10.7.0.23", True),     # JetPack 5 / 6 era: DLA
    ("10.8.0.43", False), ("10.13.2", False), ("11.0.0.1", False),   # no DLA on Jetson
    ("11.3.0", False), ("11.4.0", False),                            # 11.4.0: Windows on ARM only
    ("11.4.1", True), ("11.5.0", True),                              # JetPack 7.2.2+ on AGX Orin
])
def test_dla_support_by_tensorrt_version(version, supported):
    reason = cache.dla_unsupported_reason(version)
    assert (reason is None) == supported, reason
    if not supported:
        assert "10.7 was the last 10.x release with DLA" in reason
