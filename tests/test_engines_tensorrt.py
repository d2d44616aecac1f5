"""TensorRT backend tests: they need a GPU with the tensorrt and pycuda packages and skip,
saying so, where either is missing (as on the CPU-only development machines)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT paths need the 'tensorrt' package and an NVIDIA GPU")
pytest.importorskip("pycuda.driver", reason="the TensorRT backend needs 'pycuda' for CUDA memory and streams")

from engines.frames import procedural_frames  # noqa: E402
from engines.models import default_spec, random_model  # noqa: E402
from pipeline.preprocess import preprocess_frames  # noqa: E402

HW = (96, 192)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    from engines.export import export_onnx

    spec = default_spec("deeplabv3_mobilenet_v3_large", input_hw=HW)
    path = tmp_path_factory.mktemp("trt") / "deeplab.onnx"
    export_onnx(spec, path, model=random_model(spec, seed=1), verify_frames=[])
    return path


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_onnxruntime(onnx_model, tmp_path, precision):
    from engines.check import compare_engines
    from engines.factory import create_engine

    cfg = {"model": str(onnx_model), "backend": "tensorrt", "precision": precision, "cache_dir": str(tmp_path)}
    with create_engine(cfg) as engine, create_engine({"model": str(onnx_model)}) as ref:
        result = compare_engines(ref, engine, procedural_frames(4, seed=2), precision_b=precision)
        assert result.passed, result.failures
        assert engine.last_gpu_ms is not None and engine.last_gpu_ms > 0
    # second creation: a cache hit
    from engines import engine_cache as cache

    assert len(list(tmp_path.glob("*.engine"))) == 1
    assert cache.read_sidecar(next(tmp_path.glob("deeplab.*.json")))["inputs"]["precision"] == precision


def test_tensorrt_worker_threads_and_cuda_graph(onnx_model, tmp_path):
    from engines.factory import create_engine

    engine = create_engine({"model": str(onnx_model), "backend": "tensorrt", "precision": "fp16",
                            "cache_dir": str(tmp_path), "cuda_graph": True})
    feed = preprocess_frames(procedural_frames(1, seed=3), HW).feed()
    expected = engine.infer(feed)["class_ids"]
    errors, results = [], []

    def worker():
        try:
            results.append(engine.infer(feed)["class_ids"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.close()
    assert not errors and all(np.array_equal(r, expected) for r in results)


def test_corrupt_cached_engine_is_rebuilt(onnx_model, tmp_path):
    from engines.factory import create_engine

    cfg = {"model": str(onnx_model), "backend": "tensorrt", "precision": "fp16", "cache_dir": str(tmp_path)}
    create_engine(cfg).close()
    plan = next(tmp_path.glob("*.engine"))
    plan.write_bytes(b"not an engine")
    with create_engine(cfg) as engine:
        assert engine.kind == "deeplab"
    assert plan.stat().st_size > 100
