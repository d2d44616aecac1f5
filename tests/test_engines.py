"""Export, ONNX Runtime, quantisation, factory and check, on small random-weight models.

Each model is built and exported once per test run (shared with the runtime, profiling and
TensorRT tests: ``deeplab_onnx`` / ``maskrcnn_onnx`` in tests/conftest.py). The models are random
but not degenerate (engines.models.random_model), so disagreements would show.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from engines import contracts as C
from engines.agreement import DeepLabAccumulator, MaskRCNNAccumulator
from engines.frames import procedural_frames
from engines.models import random_model
from pipeline.errors import ConfigError, EngineError, InputDataError
from pipeline.preprocess import preprocess_frames

DEEPLAB_HW = (96, 192)
MASKRCNN_HW = (192, 256)


@pytest.fixture(scope="session")
def frames(model_frames):
    return model_frames


@pytest.fixture(scope="session")
def deeplab(deeplab_onnx):
    """(spec, model, path, report) of the session's shared DeepLab (tests/conftest.py)."""
    assert deeplab_onnx.spec.input_hw == DEEPLAB_HW
    return deeplab_onnx.spec, deeplab_onnx.model, deeplab_onnx.path, deeplab_onnx.report


@pytest.fixture(scope="session")
def maskrcnn(maskrcnn_onnx):
    assert maskrcnn_onnx.spec.input_hw == MASKRCNN_HW
    return maskrcnn_onnx.spec, maskrcnn_onnx.model, maskrcnn_onnx.path, maskrcnn_onnx.report


@pytest.fixture(scope="session")
def deeplab_int8(deeplab, frames, tmp_path_factory):
    from engines.quantize import quantize_int8

    _, _, path, _ = deeplab
    out = tmp_path_factory.mktemp("q") / "deeplab.int8.onnx"
    calib = procedural_frames(24, (375, 1242), seed=40)
    report = quantize_int8(path, out, calib, min_frames=20, method="entropy")
    return out, report


# --- export --------------------------------------------------------------------------------

def test_deeplab_export_matches_pytorch(deeplab):
    spec, _, path, report = deeplab
    assert report.frames == 3
    assert report.agreement["pixel_agreement"] >= 0.999
    assert report.max_abs_diff["scores"] < 1e-4
    io = C.read_onnx_io(path)
    info = C.check_contract("deeplab", io.inputs, io.outputs, path=path)
    assert info.input_hw == DEEPLAB_HW and info.outputs == ("class_ids", "scores")
    assert io.opset == 17
    assert io.metadata[C.META_KIND] == "deeplab" and io.metadata[C.META_INPUT_SIZE] == "96x192"
    assert C.decode_class_map(io.metadata)[6] == "car"


def test_deeplab_predicts_several_classes_in_taxonomy_range(deeplab, frames):
    from engines.onnxruntime_backend import OnnxRuntimeEngine

    _, _, path, _ = deeplab
    with OnnxRuntimeEngine(path) as engine:
        out = engine.infer(preprocess_frames(frames[:2], DEEPLAB_HW).feed()) if engine.contract.batch is None else \
            engine.infer(preprocess_frames(frames[:1], DEEPLAB_HW).feed())
    ids = out["class_ids"]
    assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < 11
    assert len(np.unique(ids)) >= 2, "the test model must not be degenerate"
    assert ((out["scores"] > 0) & (out["scores"] <= 1)).all()


def test_maskrcnn_export_matches_pytorch_and_stock_torchvision(maskrcnn):
    spec, _, path, report = maskrcnn
    assert report.agreement["matched"] >= 0.95, report.lines()
    assert report.agreement["mask_iou"] >= 0.97, report.lines()
    # the static-shape graph reproduces torchvision's own (data-dependent) inference
    assert report.stock["matched"] >= 0.9, report.lines()
    assert report.stock["mask_iou"] >= 0.95, report.lines()
    assert report.nms_converged == 1.0


def test_maskrcnn_graph_is_static_and_plugin_free(maskrcnn):
    _, _, path, _ = maskrcnn
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"If", "Loop", "Scan", "NonZero", "NonMaxSuppression"}, ops
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    io = C.read_onnx_io(path)
    info = C.check_contract("maskrcnn", io.inputs, io.outputs, path=path)
    assert info.num_detections == 16 and info.mask_size == 28
    for spec in io.outputs:
        assert all(d is not None for d in spec.shape), spec


def test_maskrcnn_outputs_follow_the_contract(maskrcnn, frames):
    from engines.onnxruntime_backend import OnnxRuntimeEngine

    _, _, path, _ = maskrcnn
    with OnnxRuntimeEngine(path) as engine:
        out = engine.infer(preprocess_frames(frames[:1], MASKRCNN_HW).feed())
    scores, labels, boxes, masks = out["scores"], out["labels"], out["boxes"], out["masks"]
    assert np.all(np.diff(scores) <= 1e-6), "detections sorted by score"
    valid = scores > 0
    assert valid.sum() >= 4
    assert set(np.unique(labels[valid])) <= {6, 7, 8, 9}, "labels are taxonomy thing ids"
    assert (boxes[valid, 2] >= boxes[valid, 0]).all() and boxes.max() <= MASKRCNN_HW[1]
    assert masks.min() >= 0 and masks.max() <= 1


def test_static_nms_equals_greedy_nms():
    import torch
    from torchvision.ops import batched_nms

    from engines.graphs import static_nms

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 0.5
    wh = torch.rand(300, 2, generator=g) * 0.3 + 0.2
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(300, generator=g)
    labels = torch.randint(0, 3, (300,), generator=g)
    order = scores.argsort(descending=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    greedy = set(batched_nms(boxes, scores, labels, 0.5).tolist())
    assert 10 < len(greedy) < 200
    valid = torch.ones(300, dtype=torch.bool)
    exact = static_nms(boxes, valid, 0.5, 300, groups=labels)
    assert set(torch.nonzero(exact).flatten().tolist()) == greedy
    fast = set(torch.nonzero(static_nms(boxes, valid, 0.5, 1, groups=labels)).flatten().tolist())
    assert fast < greedy, "one iteration (Fast NMS) keeps a strict subset here"
    two = set(torch.nonzero(static_nms(boxes, valid, 0.5, 2, groups=labels)).flatten().tolist())
    assert two > greedy, "even iteration counts keep a superset"
    invalid = valid.clone()
    invalid[0] = False
    assert static_nms(boxes, invalid, 0.5, 300, groups=labels)[0] == 0


def test_static_multiscale_roi_align_matches_torchvision():
    import torch
    from torchvision.ops import MultiScaleRoIAlign

    from engines.graphs import StaticMultiScaleRoIAlign

    g = torch.Generator().manual_seed(0)
    hw = (128, 160)
    feats = {"0": torch.randn(1, 8, 32, 40, generator=g), "1": torch.randn(1, 8, 16, 20, generator=g),
             "2": torch.randn(1, 8, 8, 10, generator=g)}
    xy = torch.rand(50, 2, generator=g) * torch.tensor([150.0, 120.0])
    wh = torch.rand(50, 2, generator=g) * 120 + 2
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([160.0, 128.0]))], 1)
    pooler = MultiScaleRoIAlign(["0", "1", "2"], 7, 2)
    ref = pooler(feats, [boxes], [hw])
    ours = StaticMultiScaleRoIAlign(pooler, {k: tuple(v.shape[-2:]) for k, v in feats.items()}, hw)(feats, boxes, hw)
    assert torch.allclose(ours, ref, atol=1e-5)


# --- engines, factory -----------------------------------------------------------------------

def test_factory_yaml_and_errors(deeplab, tmp_path, frames):
    from engines.factory import create_engine, load_engine_config

    _, _, path, _ = deeplab
    cfg = tmp_path / "engine.yaml"
    cfg.write_text(f"engine:\n  model: {path}\n  backend: onnxruntime\n  threads: 1\n")
    engine = create_engine(cfg)
    assert engine.kind == "deeplab" and engine.backend == "onnxruntime" and engine.precision == "fp32"
    d = engine.describe()
    assert d["input_hw"] == list(DEEPLAB_HW) and d["threads"] == 1
    with pytest.raises(EngineError, match="inputs.images"):
        engine.infer({"images": np.zeros((1, 3, *DEEPLAB_HW), np.float64)})
    with pytest.raises(EngineError, match="inputs"):
        engine.infer({"image": np.zeros((1, 3, *DEEPLAB_HW), np.float32)})
    engine.close()
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"engine:\n  model: {path}\n  backend: onnxruntime\n  thread: 1\n")
    with pytest.raises(ConfigError, match="thread"):
        load_engine_config(bad)
    with pytest.raises(EngineError, match="precision"):
        create_engine({"model": str(path), "precision": "int8"})
    with pytest.raises(ConfigError, match="backend"):
        create_engine({"model": str(path), "backend": "tflite"})


def test_tensorrt_backend_reports_missing_tensorrt(deeplab):
    pytest.importorskip("numpy")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here: the missing-package message cannot be shown")
    except ImportError:
        pass
    from engines.factory import create_engine

    _, _, path, _ = deeplab
    with pytest.raises(EngineError, match="tensorrt"):
        create_engine({"model": str(path), "backend": "tensorrt", "precision": "fp16"})


def test_end_to_end_pipeline_functions(maskrcnn, deeplab, frames):
    """preprocess -> engine -> postprocess gives typed results at camera resolution."""
    from engines.factory import create_engine
    from pipeline.postprocess import postprocess_batch
    from pipeline.types import CameraFrame, Instances, SemanticMask

    cam = CameraFrame("camera_front", 0, frames[0])
    for _, _, path, _ in (deeplab, maskrcnn):
        with create_engine({"model": str(path)}) as engine:
            batch = preprocess_frames([cam], engine.input_hw)
            out = engine.infer(batch.feed())
            (result,) = postprocess_batch(engine.kind, out, batch.transforms, batch.camera_ids, **(
                {"score_threshold": 0.05} if engine.kind == "maskrcnn" else {}))
        if engine.kind == "deeplab":
            assert isinstance(result, SemanticMask) and result.class_ids.shape == frames[0].shape[:2]
        else:
            assert isinstance(result, Instances) and len(result) > 0
            assert result.masks.shape == (len(result), *frames[0].shape[:2])
            assert result.boxes[:, 2].max() <= frames[0].shape[1]
            assert result.masks.any(axis=(1, 2)).all()


# --- quantisation ---------------------------------------------------------------------------

@pytest.mark.slow
def test_quantize_gives_a_qdq_onnx_that_runs(deeplab, deeplab_int8, frames):
    from engines.onnxruntime_backend import OnnxRuntimeEngine

    _, _, fp32_path, _ = deeplab
    path, report = deeplab_int8
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    assert report.quantized_ops > 10 and report.frames == 24
    # first conv and classifier kept in FP32: their weights are not fed by a DequantizeLinear
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert not any(i in dq_out for i in convs[0].input[1:])
    assert not any(i in dq_out for i in convs[-1].input[1:])
    assert any(i in dq_out for i in convs[5].input[1:])
    # opset 17, ReduceMax with its axes as an attribute: what TensorRT 8.5/8.6's parser reads
    # (Model Optimizer writes opset 19, where that parser reduces `scores` to a scalar)
    from engines.onnx_compat import reduce_nodes_with_axes_input

    assert model.opset_import[0].version == 17 and reduce_nodes_with_axes_input(model) == []
    (red,) = [n for n in model.graph.node if n.op_type == "ReduceMax"]
    assert len(red.input) == 1 and [list(a.ints) for a in red.attribute if a.name == "axes"] == [[1]]
    a, b = OnnxRuntimeEngine(fp32_path), OnnxRuntimeEngine(path)
    assert b.precision == "int8" and b.kind == "deeplab"
    acc = DeepLabAccumulator()
    for f in frames[4:8]:
        feed = preprocess_frames([f], DEEPLAB_HW).feed()
        acc.add(a.infer(feed)["class_ids"], b.infer(feed)["class_ids"])
    assert acc.result()["pixel_agreement"] > 0.6
    out = b.infer(preprocess_frames([frames[0]], DEEPLAB_HW).feed())
    assert out["scores"].shape == (1, *DEEPLAB_HW)


def test_keep_patterns_leave_matching_convolutions_unquantized(deeplab):
    from engines.quantize import higher_precision_nodes

    _, _, path, _ = deeplab
    model = onnx.load(str(path))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    keep = higher_precision_nodes(model, "deeplab", keep_patterns=[r"/classifier\.0/"])
    kept = keep["--keep /classifier\\.0/"]
    assert kept and all("/classifier.0/" in n for n in kept) and set(kept) < set(convs)
    assert keep["first conv"] == [convs[0]] and keep["classifier"]
    with pytest.raises(EngineError, match="matches no convolution"):
        higher_precision_nodes(model, "deeplab", keep_patterns=["/no_such_layer/"])
    with pytest.raises(EngineError, match="not a regular expression"):
        higher_precision_nodes(model, "deeplab", keep_patterns=["(unclosed"])


@pytest.mark.slow
def test_quantize_maskrcnn_runs_on_cpu(maskrcnn, tmp_path, frames, capsys):
    import re

    from engines.onnxruntime_backend import OnnxRuntimeEngine
    from engines.quantize import quantize_int8

    _, _, path, _ = maskrcnn
    out = tmp_path / "mr.int8.onnx"
    report = quantize_int8(path, out, procedural_frames(10, (375, 1242), seed=50), min_frames=10, method="max")
    # the terminal shows our bars only (Model Optimizer draws one per frame and per tensor)
    bars = [b for b in re.split(r"[\r\n]+", capsys.readouterr().err) if "|" in b and "/" in b]
    assert any(b.startswith("calibrating (max)") and "/10 " in b for b in bars), bars[-3:]
    assert all(b.startswith(("calibration frames", "calibrating (max)")) for b in bars), \
        [b for b in bars if not b.startswith("calibrat")][:3]
    assert report.qdq_nodes > 0 and any("mask head" in k for k in report.kept_high_precision)
    engine = OnnxRuntimeEngine(out)
    assert engine.precision == "int8" and engine.contract.num_detections == 16
    res = engine.infer(preprocess_frames(frames[:1], MASKRCNN_HW).feed())
    assert res["masks"].shape == (16, 28, 28) and res["labels"].dtype == np.int32


def test_quantize_refuses_random_data(deeplab, tmp_path):
    from engines.frames import check_calibration_frames
    from engines.quantize import quantize_int8

    _, _, path, _ = deeplab
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (120, 200, 3), dtype=np.uint8) for _ in range(30)]
    with pytest.raises(InputDataError, match="random data"):
        quantize_int8(path, tmp_path / "x.onnx", noise, min_frames=20)
    with pytest.raises(InputDataError, match="at least 500"):
        quantize_int8(path, tmp_path / "x.onnx", procedural_frames(30, (120, 200)))
    same = procedural_frames(1, (120, 200)) * 25
    with pytest.raises(InputDataError, match="same image"):
        check_calibration_frames(same, min_frames=20)
    blank = [np.full((120, 200, 3), 80, np.uint8)] * 25
    with pytest.raises(InputDataError, match="blank"):
        check_calibration_frames(blank, min_frames=20)
    assert not (tmp_path / "x.onnx").exists()


def test_calibration_accepts_real_camera_frames(kitti_object):
    from engines.frames import check_calibration_frames, load_frames

    frames = load_frames(kitti_object / "image_2")
    assert len(frames) == 10
    check_calibration_frames(frames, min_frames=10, source=kitti_object)


def test_autocast_fp16_runs_and_agrees_within_fp16_tolerance(deeplab, tmp_path, frames):
    from engines.agreement import TOLERANCES
    from engines.onnxruntime_backend import OnnxRuntimeEngine
    from engines.quantize import autocast_fp16

    _, _, path, _ = deeplab
    out = autocast_fp16(path, tmp_path / "fp16.onnx", frames[4:8])
    b = OnnxRuntimeEngine(out)
    assert b.precision == "fp16"
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(str(out)).graph.initializer)
    a = OnnxRuntimeEngine(path)
    acc = DeepLabAccumulator()
    for f in frames[:3]:
        feed = preprocess_frames([f], DEEPLAB_HW).feed()
        acc.add(a.infer(feed)["class_ids"], b.infer(feed)["class_ids"])
    assert acc.result()["pixel_agreement"] >= TOLERANCES["fp16"].pixel_agreement


# --- check ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_check_cli_passes_for_same_model_and_judges_int8_with_int8_tolerance(deeplab, deeplab_int8, tmp_path,
                                                                               capsys):
    import json

    from pipeline.cli import main

    _, _, path, _ = deeplab
    int8, _ = deeplab_int8
    rc = main(["engines", "check", str(path), f"onnxruntime:{path}", "--frames", "2"])
    assert rc == 0
    assert "fp32 tolerances" in capsys.readouterr().out
    js = tmp_path / "m.json"
    rc = main(["engines", "check", str(path), str(int8), "--frames", "2", "--json", str(js)])
    out = capsys.readouterr().out
    assert "int8 tolerances" in out
    data = json.loads(js.read_text())
    assert rc == (0 if data["passed"] else 1)
    assert 0.0 <= data["metrics"]["miou"] <= 1.0


@pytest.mark.slow
def test_check_fails_when_models_disagree(maskrcnn, tmp_path, frames):
    """Two different Mask R-CNNs must not pass at FP32 tolerance."""
    from engines.check import compare_engines
    from engines.export import export_onnx
    from engines.onnxruntime_backend import OnnxRuntimeEngine

    spec, _, path, _ = maskrcnn
    other = tmp_path / "other.onnx"
    strict = dataclasses.replace(spec, box_score_thresh=0.6)     # few detections: padding rows appear
    export_onnx(strict, other, model=random_model(spec, seed=9), verify_frames=[])
    engine = OnnxRuntimeEngine(other)
    result = compare_engines(OnnxRuntimeEngine(path), engine, frames[:2], score_threshold=0.05)
    assert not result.passed and result.failures
    out = engine.infer(preprocess_frames(frames[:1], MASKRCNN_HW).feed())
    pad = out["scores"] == 0
    assert pad.any() and (out["scores"][~pad] > 0.6).all()
    assert (out["labels"][pad] == 255).all() and (out["boxes"][pad] == 0).all() and (out["masks"][pad] == 0).all()


def test_maskrcnn_accumulator_matches_identical_outputs(maskrcnn, frames):
    from engines.onnxruntime_backend import OnnxRuntimeEngine

    _, _, path, _ = maskrcnn
    engine = OnnxRuntimeEngine(path)
    out = engine.infer(preprocess_frames(frames[:1], MASKRCNN_HW).feed())
    acc = MaskRCNNAccumulator(MASKRCNN_HW, 0.05)
    acc.add(out, out)
    res = acc.result()
    assert res["matched"] == 1.0 and res["mask_iou"] == 1.0 and res["score_diff"] == 0.0
    shifted = dict(out, boxes=out["boxes"] + 40.0)
    acc2 = MaskRCNNAccumulator(MASKRCNN_HW, 0.05)
    acc2.add(out, shifted)
    assert acc2.result()["matched"] < 1.0


def test_export_cli_and_info(tmp_path, capsys):
    from pipeline.cli import main

    out = tmp_path / "cli.onnx"
    assert main(["engines", "export", "--arch", "deeplabv3_mobilenet_v3_large", "--input-size", "64x96",
                 "--no-scores", "-o", str(out)]) == 0
    assert "exported deeplab" in capsys.readouterr().out
    assert main(["engines", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "contract: ok" in text and "class_ids int32[1,64,96]" in text
    assert main(["engines", "export", "--arch", "maskrcnn_resnet50_fpn", "--input-size", "100x100",
                 "-o", str(tmp_path / "x.onnx")]) == 2      # not a multiple of 32: one clear error line


def test_checkpoint_loading_and_class_map(tmp_path):
    import torch

    from engines.export import label_lut
    from engines.models import build_model, build_torchvision_model, load_model_spec
    from pipeline.config import load_taxonomy

    # a "COCO-style" checkpoint: 91 classes, FrozenBatchNorm-like (no num_batches_tracked)
    src = build_torchvision_model("maskrcnn_mobilenet_v3_large_fpn", 91)
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    ckpt = tmp_path / "coco.pth"
    torch.save({"model": state}, ckpt)
    cfg = tmp_path / "m.yaml"
    cfg.write_text("model:\n  arch: maskrcnn_mobilenet_v3_large_fpn\n  num_classes: 91\n  checkpoint: coco.pth\n"
                   "  input_size: 256x320\n  class_map: {3: car, 8: truck, 1: pedestrian, 2: cyclist}\n")
    spec = load_model_spec(cfg)
    model = build_model(spec)
    sd = model.state_dict()
    k = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(sd[k], state[k])
    lut = label_lut(spec, load_taxonomy())
    assert lut[3] == 6 and lut[1] == 8 and lut[5] == -1 and len(lut) == 91
    # wrong class count: a clear error naming the checkpoint
    spec.num_classes = 5
    spec.class_map = {1: "car"}
    with pytest.raises(EngineError, match="num_classes"):
        build_model(spec)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  arch: maskrcnn_mobilenet_v3_large_fpn\n  class_map: {1: road}\n")
    with pytest.raises(ConfigError, match="thing class"):
        load_model_spec(bad)
