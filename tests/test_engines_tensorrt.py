"""TensorRT backend tests: they need an NVIDIA GPU with the tensorrt and cuda-python packages and
skip, saying so, where either is missing (as on the CPU-only development machines). They use the
committed models on a simulated drive (validation seed), not random-weight models whose near-tied
logits make FP16 agreement a coin toss."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT paths need the 'tensorrt' package and an NVIDIA GPU")

from engines.cuda_runtime import gpu_unavailable_reason  # noqa: E402

_why = gpu_unavailable_reason(0)
if _why is not None:
    pytest.skip(f"TensorRT is installed but no CUDA device is usable: {_why}", allow_module_level=True)

from pipeline.preprocess import preprocess_frames  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEEPLAB = REPO / "models" / "deeplabv3plus_mobilenet_v3_small.onnx"
MASKRCNN = REPO / "models" / "maskrcnn_mobilenet_v3_small_fpn.onnx"


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    from pipeline.sim.simulate import simulate

    path = tmp_path_factory.mktemp("trt") / "drive"
    simulate(path, frames=6, seed=3302, progress=False)
    return path


@pytest.fixture(scope="module")
def frames(drive):
    from engines.frames import load_frames

    return load_frames(drive)


@pytest.mark.parametrize("model,precision", [(DEEPLAB, "fp32"), (DEEPLAB, "fp16"), (MASKRCNN, "fp32"),
                                             (MASKRCNN, "fp16")])
def test_tensorrt_matches_onnxruntime(model, precision, drive, frames, tmp_path):
    from engines import engine_cache as cache
    from engines.check import compare_engines
    from engines.factory import create_engine

    cfg = {"model": str(model), "backend": "tensorrt", "precision": precision, "cache_dir": str(tmp_path),
           "calibration": str(drive)}
    with create_engine(cfg) as engine, create_engine({"model": str(model)}) as ref:
        result = compare_engines(ref, engine, frames, precision_b=precision)
        assert result.passed, (result.failures, result.metrics)
        assert engine.last_gpu_ms is not None and engine.last_gpu_ms > 0
    create_engine(cfg).close()                                   # second creation: a cache hit
    assert len(list(tmp_path.glob("*.engine"))) == 1
    assert cache.read_sidecar(next(tmp_path.glob(f"{model.stem}.*.json")))["inputs"]["precision"] == precision


def test_fp32_builds_clear_tf32():
    from engines.tensorrt_backend import make_builder_config, trt_logger

    builder = trt.Builder(trt_logger())
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else \
        1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    x = network.add_input("images", trt.float32, (1, 3, 8, 8))
    network.mark_output(network.add_identity(x).get_output(0))
    config, _ = make_builder_config(trt, builder, network, precision="fp32", build_path="legacy_flags",
                                    workspace_mb=64, shapes={"images": [[1, 3, 8, 8]] * 3})
    assert not config.get_flag(trt.BuilderFlag.TF32)


def test_cuda_graph_is_captured_and_replayed_from_worker_threads(drive, frames, tmp_path):
    from engines.factory import create_engine

    engine = create_engine({"model": str(DEEPLAB), "backend": "tensorrt", "precision": "fp16",
                            "cache_dir": str(tmp_path), "calibration": str(drive), "cuda_graph": True})
    assert engine.cuda_graph, engine.describe()["cuda_graph_status"]
    assert engine.describe()["cuda_graph_status"].startswith("captured (")
    with create_engine({"model": str(DEEPLAB), "backend": "tensorrt", "precision": "fp16",
                        "cache_dir": str(tmp_path), "calibration": str(drive)}) as plain:
        assert not plain.cuda_graph
        feed = preprocess_frames(frames[:1], engine.input_hw).feed()
        expected = plain.infer(feed)["class_ids"]
    assert np.array_equal(engine.infer(feed)["class_ids"], expected)          # the graph runs the same work
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


def test_only_a_plan_that_does_not_deserialise_is_rebuilt(drive, tmp_path):
    from engines.factory import create_engine

    cfg = {"model": str(DEEPLAB), "backend": "tensorrt", "precision": "fp32", "cache_dir": str(tmp_path)}
    create_engine(cfg).close()
    plan = next(tmp_path.glob("*.engine"))
    plan.write_bytes(b"not an engine")
    with create_engine(cfg) as engine:
        assert engine.kind == "deeplab"
    assert plan.stat().st_size > 100


def test_engine_file_loaded_directly_reports_its_sidecar_precision(drive, tmp_path):
    from engines.factory import create_engine
    from engines.tensorrt_backend import build_engine

    engine_file, _ = build_engine(DEEPLAB, precision="fp16", cache_dir=tmp_path, calibration=drive)
    with create_engine({"model": str(engine_file), "backend": "tensorrt"}) as engine:
        assert engine.precision == "fp16"


def test_selftest_passes_on_this_gpu(tmp_path, drive):
    from engines.selftest import run_selftest

    report = run_selftest(source=drive, frames=4, iters=10, warmup=3, cache_dir=tmp_path,
                          precisions=["fp32", "fp16"])
    assert report.gpu_available and report.passed, "\n".join(report.lines())
