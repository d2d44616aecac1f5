"""The GPU path's CPU-side checks (issue #17): FP16 AutoCast of the committed Mask R-CNN on drive
frames, the opset-17 rewrite for TensorRT 8.5/8.6, ONNX Runtime's real providers, rebuild only on a
plan that does not deserialise, atomic and locked cache writes, calibration-cache keys, the
cuda-python runtime without a GPU, and the self-check without a GPU. Everything here runs on a
CPU-only machine; what needs TensorRT and a GPU is in test_engines_tensorrt.py."""
from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from engines import engine_cache as cache
from pipeline.errors import EngineError

REPO = Path(__file__).resolve().parents[1]
MASKRCNN = REPO / "models" / "maskrcnn_mobilenet_v3_small_fpn.onnx"
DEEPLAB = REPO / "models" / "deeplabv3plus_mobilenet_v3_small.onnx"
SIM_SEED = 3302          # validation seed: not training (1001-1040), not the test drives (5001-5004)


def _gpu_reason() -> str | None:
    from engines.cuda_runtime import gpu_unavailable_reason

    return gpu_unavailable_reason(0)


@pytest.fixture(scope="module")
def drive_frames(tmp_path_factory):
    from engines.frames import load_frames
    from pipeline.sim.simulate import simulate

    path = tmp_path_factory.mktemp("gpu_path") / "drive"
    simulate(path, frames=6, seed=SIM_SEED, progress=False)
    return load_frames(path)


# --- 1: FP16 AutoCast ------------------------------------------------------------------------

@pytest.mark.slow
def test_fp16_maskrcnn_graph_of_the_strongly_typed_path_is_within_fp16_tolerance(drive_frames, tmp_path):
    """What the >= 10.12 path compiles (AutoCast, calibrated on drive frames, FP16 only in the
    backbone and heads) against FP32, on ONNX Runtime CPU: scores <= 0.02, boxes <= 2 px.
    AutoCast on random inputs with no exclusion gave 0.030 and 2.7 px on these frames."""
    from engines.check import compare_engines
    from engines.onnxruntime_backend import OnnxRuntimeEngine
    from engines.quantize import autocast_fp16, float16_nodes, fp32_only_nodes

    out = autocast_fp16(MASKRCNN, tmp_path / "maskrcnn.fp16.onnx", drive_frames[:4], source="sim 3302")
    model = onnx.load(str(out))
    half = set(float16_nodes(model))
    assert sum(n.startswith("/backbone/") for n in half) > 50          # the network really is FP16
    outside = half & set(fp32_only_nodes(model, "maskrcnn"))
    assert not outside, f"FP16 outside backbone/heads: {sorted(outside)[:10]}"
    for op in ("RoiAlign", "Exp", "Log", "MatMul", "TopK"):
        assert not [n.name for n in model.graph.node if n.op_type == op and n.name in half], op
    with OnnxRuntimeEngine(MASKRCNN, threads=1) as ref, OnnxRuntimeEngine(out, threads=1) as fp16:
        assert fp16.precision == "fp16"
        result = compare_engines(ref, fp16, drive_frames, score_threshold=0.5)
    m = result.metrics
    assert m["detections_a"] >= 30                                   # the drive has objects to compare
    assert m["score_diff"] <= 0.02, m
    assert m["box_diff"] <= 2.0, m
    assert result.passed, result.failures


def test_fp16_autocast_refuses_to_run_without_real_frames(tmp_path):
    from engines.quantize import autocast_fp16

    with pytest.raises(EngineError, match="real calibration frames"):
        autocast_fp16(MASKRCNN, tmp_path / "x.onnx", None)


# --- 2: opset-17 rewrite for TensorRT 8.5/8.6 --------------------------------------------------

def _reduce_graph(opset: int) -> onnx.ModelProto:
    """images [1,4,3,5] -> Softmax(axis 1) -> ReduceMax over axis 1 (axes as an input at opset 18+)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 5])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3, 5])
    axes = helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("a", TensorProto.INT64, [1], [1]))
    soft = helper.make_node("Softmax", ["x"], ["p"], name="/Softmax", axis=1)
    red = helper.make_node("ReduceMax", ["p", "axes"], ["scores"], name="/ReduceMax", keepdims=0)
    graph = helper.make_graph([axes, soft, red], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_reduce_with_axes_input_is_lowered_to_the_attribute_form():
    import onnxruntime as ort

    from engines.onnx_compat import lower_opset, reduce_nodes_with_axes_input

    model = _reduce_graph(19)
    onnx.checker.check_model(model)
    assert reduce_nodes_with_axes_input(model) == ["/ReduceMax"]
    low = lower_opset(model)
    assert low.opset_import[0].version == 17 and reduce_nodes_with_axes_input(low) == []
    node = next(n for n in low.graph.node if n.op_type == "ReduceMax")
    assert list(node.input) == ["p"]
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "axes")) == [1]
    assert not [n for n in low.graph.node if n.op_type == "Constant"]          # the axes constant is gone
    x = np.random.default_rng(0).normal(size=(1, 4, 3, 5)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for m in (model, low)]
    assert run[1].shape == (1, 3, 5) and np.array_equal(run[0], run[1])


def test_lowering_refuses_what_has_no_opset17_form():
    from engines.onnx_compat import lower_opset

    model = _reduce_graph(19)
    red = next(n for n in model.graph.node if n.op_type == "ReduceMax")
    model.graph.node.remove(next(n for n in model.graph.node if n.op_type == "Constant"))
    shape = helper.make_node("Shape", ["x"], ["axes"], name="/Shape", start=1, end=2)
    model.graph.node.insert(0, shape)
    with pytest.raises(EngineError, match="ReduceMax axes are computed in the graph") as err:
        lower_opset(model, where="q.onnx")
    assert err.value.field == "opset" and red.name in str(err.value)


# --- 4: ONNX Runtime providers ---------------------------------------------------------------

def test_check_session_providers_refuses_a_cpu_session_asked_for_cuda():
    from engines.onnxruntime_backend import check_session_providers

    check_session_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda", model="m.onnx")
    check_session_providers(["CPUExecutionProvider"], "cpu", model="m.onnx")
    with pytest.raises(EngineError, match="session runs on CPUExecutionProvider") as err:
        check_session_providers(["CPUExecutionProvider"], "cuda", model="m.onnx", config_path="cfg.yaml")
    assert err.value.path == "cfg.yaml" and err.value.field == "device" and "m.onnx" in str(err.value)


def test_device_cuda_on_a_cpu_only_onnxruntime_names_the_config_and_the_session(tmp_path):
    import onnxruntime as ort

    from engines.factory import create_engine

    if "CUDAExecutionProvider" in ort.get_available_providers() and _gpu_reason() is None:
        pytest.skip("a working CUDA provider is installed here: the session would run on CUDA")
    cfg = tmp_path / "deeplab_cuda.yaml"
    cfg.write_text(f"engine:\n  model: {DEEPLAB}\n  backend: onnxruntime\n  device: cuda\n")
    with pytest.raises(EngineError, match="session runs on CPUExecutionProvider") as err:
        create_engine(cfg)
    assert err.value.path == str(cfg) and err.value.field == "device"


def test_tensorrt_missing_falls_back_to_onnxruntime_cuda_only_when_configured_and_says_so(caplog):
    from engines.factory import create_engine
    from engines.tensorrt_backend import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are usable here: no fallback happens")
    with pytest.raises(EngineError, match="tensorrt|TensorRT|CUDA|cuda"):
        create_engine({"model": str(DEEPLAB), "backend": "tensorrt"})            # no fallback configured
    with caplog.at_level(logging.WARNING, logger="engines.factory"):
        try:
            engine = create_engine({"model": str(DEEPLAB), "backend": "tensorrt", "fallback": "onnxruntime"})
        except EngineError as exc:                      # no CUDA provider here either: refused, not CPU
            assert "session runs on CPUExecutionProvider" in str(exc)
        else:                                           # pragma: no cover - onnxruntime-gpu with a GPU
            assert "CUDAExecutionProvider" in engine.session.get_providers()
            engine.close()
    assert "falling back to ONNX Runtime CUDA" in caplog.text


# --- 7: rebuild only when the plan does not deserialise ---------------------------------------

def test_only_a_plan_that_does_not_deserialise_triggers_a_rebuild(tmp_path):
    from engines.tensorrt_backend import EngineDeserializeError, load_or_rebuild

    builds: list[bool] = []
    plan = tmp_path / "m.engine"

    def build(force: bool) -> Path:
        builds.append(force)
        plan.write_bytes(b"plan-%d" % len(builds))
        return plan

    def load_contract_mismatch(path: Path):
        raise EngineError("expected dtype int32, got int64", path=path, field="outputs.class_ids.dtype")

    with pytest.raises(EngineError, match="expected dtype int32"):
        load_or_rebuild(build, load_contract_mismatch)
    assert builds == [False]                            # raised, not rebuilt

    builds.clear()

    def load_stale_then_ok(path: Path):
        if path.read_bytes() == b"plan-1":
            raise EngineDeserializeError("TensorRT cannot deserialise this engine", path=path)
        return path.read_bytes()

    assert load_or_rebuild(build, load_stale_then_ok) == b"plan-2"
    assert builds == [False, True]


# --- 8: atomic, locked cache writes ----------------------------------------------------------

def _key(tag: str = "a") -> cache.BuildKey:
    return cache.BuildKey(onnx_sha256="0" * 64, precision="fp16", shapes={"images": [[1, 3, 8, 8]] * 3},
                          trt_version="10.3.0", gpu_name="Orin", compute_capability="8.7", extra={"t": tag})


def _builder_process(cache_dir: str, onnx: str, log_path: str, result_path: str) -> None:
    import time

    def build():
        with open(log_path, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.6)
        return b"P" * 100_000, {"kind": "deeplab"}

    engine, side, built = cache.build_once(cache_dir, onnx, _key(), build)
    Path(result_path).write_text(f"{built} {engine} {len(engine.read_bytes())}")


def _crashing_writer(cache_dir: str, onnx: str) -> None:
    os.fsync = lambda fd: os._exit(3)          # die after the temporary file is written, before os.replace
    cache.build_once(cache_dir, onnx, _key(), lambda: (b"Q" * 100_000, {}))


def test_two_processes_building_one_key_build_it_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    log_path = tmp_path / "builds.log"
    procs = [ctx.Process(target=_builder_process, args=(str(tmp_path), "m.onnx", str(log_path),
                                                        str(tmp_path / f"r{i}"))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    assert len(log_path.read_text().split()) == 1                    # one build
    results = sorted((tmp_path / f"r{i}").read_text().split() for i in range(2))
    assert [r[0] for r in results] == ["False", "True"]
    assert results[0][1] == results[1][1] and results[0][2] == results[1][2] == "100000"
    assert cache.lookup(tmp_path, "m.onnx", _key())[2]


def test_a_crash_mid_write_leaves_no_file_under_the_final_name_and_no_held_lock(tmp_path):
    engine, sidecar = cache.engine_paths(tmp_path, "m.onnx", cache.cache_key(_key()))
    p = multiprocessing.get_context("fork").Process(target=_crashing_writer, args=(str(tmp_path), "m.onnx"))
    p.start()
    p.join(30)
    assert p.exitcode == 3
    assert not engine.exists() and not sidecar.exists()              # nothing that passes is_file()
    assert not cache.lookup(tmp_path, "m.onnx", _key())[2]
    _, _, built = cache.build_once(tmp_path, "m.onnx", _key(), lambda: (b"R" * 10, {}), lock_timeout_s=5)
    assert built and engine.read_bytes() == b"R" * 10                 # the lock went with the dead process

    # overwriting: a crash keeps the old complete content
    timing = tmp_path / "timing.cache"
    cache.atomic_write_bytes(timing, b"old timing cache")

    def crash_overwrite():
        os.fsync = lambda fd: os._exit(3)
        cache.atomic_write_bytes(timing, b"new" * 50_000)

    p = multiprocessing.get_context("fork").Process(target=crash_overwrite)
    p.start()
    p.join(30)
    assert p.exitcode == 3 and timing.read_bytes() == b"old timing cache"


# --- 9: calibration-cache key ----------------------------------------------------------------

def test_calibration_cache_is_keyed_by_trt_version_source_frames_and_algorithm(tmp_path):
    src_a, src_b = tmp_path / "drive_a", tmp_path / "drive_b"
    for d in (src_a, src_b):
        d.mkdir()
        (d / "0.png").write_bytes(d.name.encode())
    base = dict(onnx_sha256="1" * 64, trt_version="10.3.0", source=src_a, frames=500, algorithm="entropy")
    ref = cache.calibration_cache_path(tmp_path, "m.onnx", **base)
    assert ref == cache.calibration_cache_path(tmp_path, "m.onnx", **base)
    for change in ({"trt_version": "8.5.2"}, {"source": src_b}, {"frames": 200}, {"algorithm": "minmax"},
                   {"onnx_sha256": "2" * 64}):
        assert cache.calibration_cache_path(tmp_path, "m.onnx", **{**base, **change}) != ref, change
    (src_a / "1.png").write_bytes(b"a frame added to the drive")
    assert cache.calibration_cache_path(tmp_path, "m.onnx", **base) != ref


# --- CUDA runtime and the self-check without a GPU -------------------------------------------

def test_cuda_python_imports_without_a_gpu_and_fails_with_a_clear_error():
    from engines.cuda_runtime import get_runtime

    rt = get_runtime()
    assert rt.name == "cuda-python" and rt.supports_graphs
    reason = _gpu_reason()
    if reason is None:
        pytest.skip("a CUDA device is usable here")
    assert reason.startswith("cudaGetDeviceCount: cudaError") or "no CUDA device" in reason
    with pytest.raises(EngineError, match="cudaGetDeviceCount: cudaError"):
        rt.device_count()


def test_selftest_without_a_gpu_says_why_and_exits_0(capsys, tmp_path):
    from pipeline.cli import main

    reason = _gpu_reason()
    if reason is None:
        pytest.skip("a GPU is usable here: the self-check would run for real")
    rc = main(["engines", "selftest", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "no usable NVIDIA GPU here" in out and reason in out and "nothing was checked" in out
    import json

    data = json.loads((tmp_path / "r.json").read_text())
    assert data["gpu_available"] is False and data["reason"] == reason and data["rows"] == []


def test_selftest_row_check_on_onnxruntime_cpu(drive_frames):
    """The self-check's per-engine step (agreement with task metrics, p50/p99), run here with ONNX
    Runtime CPU in the engine's place: the table row it fills is the one a GPU run prints."""
    from engines.onnxruntime_backend import OnnxRuntimeEngine
    from engines.selftest import Row, SelftestReport, _check_one

    with OnnxRuntimeEngine(DEEPLAB, threads=1) as ref:
        row = Row(DEEPLAB.name, "onnxruntime", "fp32")
        _check_one(row, ref, lambda graph: OnnxRuntimeEngine(DEEPLAB, threads=1), drive_frames[:2], "deeplab",
                   "fp32", iters=2, warmup=0, graphs=False)
    assert row.status == "PASS", row.notes
    assert row.agreement.startswith("pixel agreement 1.0000") and row.p50_ms > 0 and row.p99_ms >= row.p50_ms
    report = SelftestReport(True, versions={"gpu": "none (CPU row)"}, rows=[row, Row("m.onnx", "tensorrt", "int8",
                                                                                       notes=["build failed"])])
    lines = report.lines()
    assert report.exit_code() == 1 and "FAILED (1 of 2)" in lines[-1]
    assert any(DEEPLAB.name in ln and "PASS" in ln for ln in lines)
