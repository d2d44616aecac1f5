"""The I/O contract check rejects wrong ONNX files with an error naming the file and tensor."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from engines.contracts import check_contract, read_onnx_io
from pipeline.errors import EngineError


def _identity_model(path, inputs, outputs):
    """A tiny valid ONNX with the given (name, elem_type, shape) inputs/outputs."""
    vi = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    vo = [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs]
    nodes = []
    for n, t, s in outputs:
        dims = [d if isinstance(d, int) else 1 for d in s]
        np_type = np.int64 if t in (TensorProto.INT32, TensorProto.INT64) else np.float32
        value = helper.make_tensor("v", t, dims, np.zeros(dims, np_type).ravel().tolist())
        nodes.append(helper.make_node("Constant", [], [n], name=f"c_{n}", value=value))
    graph = helper.make_graph(nodes, "g", vi, vo)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


F, I32, I64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64
IMG = ("images", F, [1, 3, 64, 96])


def _check(path, kind):
    io = read_onnx_io(path)
    return check_contract(kind, io.inputs, io.outputs, path=path)


def test_accepts_valid_contracts(tmp_path):
    p = _identity_model(tmp_path / "d.onnx", [("images", F, ["B", 3, 64, 96])],
                        [("class_ids", I32, ["B", 64, 96]), ("scores", F, ["B", 64, 96])])
    info = _check(p, "deeplab")
    assert info.batch is None and info.input_hw == (64, 96)
    p = _identity_model(tmp_path / "m.onnx", [IMG], [("boxes", F, [10, 4]), ("scores", F, [10]),
                                                     ("labels", I32, [10]), ("masks", F, [10, 28, 28])])
    info = _check(p, "maskrcnn")
    assert info.num_detections == 10 and info.mask_size == 28


@pytest.mark.parametrize("kind,inputs,outputs,field", [
    ("deeplab", [IMG], [("class_ids", I64, [1, 64, 96])], "outputs.class_ids.dtype"),
    ("deeplab", [IMG], [("logits", F, [1, 11, 64, 96])], "outputs.logits"),
    ("deeplab", [IMG], [("class_ids", I32, [1, 32, 48])], "outputs.class_ids.shape"),
    ("deeplab", [("input", F, [1, 3, 64, 96])], [("class_ids", I32, [1, 64, 96])], "inputs"),
    ("deeplab", [("images", F, [1, 3, "H", "W"])], [("class_ids", I32, [1, "H", "W"])], "inputs.images.shape"),
    ("deeplab", [("images", TensorProto.UINT8, [1, 3, 64, 96])], [("class_ids", I32, [1, 64, 96])],
     "inputs.images.dtype"),
    ("maskrcnn", [IMG], [("boxes", F, ["N", 4]), ("scores", F, ["N"]), ("labels", I32, ["N"]),
                         ("masks", F, ["N", 28, 28])], "outputs.boxes.shape"),
    ("maskrcnn", [IMG], [("boxes", F, [10, 4]), ("scores", F, [10]), ("labels", I32, [10])], "outputs.masks"),
    ("maskrcnn", [IMG], [("boxes", F, [10, 4]), ("scores", F, [10]), ("labels", I32, [10]),
                         ("masks", F, [10, 1, 28, 28])], "outputs.masks.shape"),
    ("maskrcnn", [("images", F, [2, 3, 64, 96])], [("boxes", F, [10, 4]), ("scores", F, [10]),
                                                   ("labels", I32, [10]), ("masks", F, [10, 28, 28])],
     "inputs.images.shape"),
    ("maskrcnn", [IMG], [("boxes", F, [10, 4]), ("scores", F, [12]), ("labels", I32, [10]),
                         ("masks", F, [10, 28, 28])], "outputs.scores.shape"),
])
def test_rejects_wrong_onnx_naming_file_and_tensor(tmp_path, kind, inputs, outputs, field):
    p = _identity_model(tmp_path / "wrong.onnx", inputs, outputs)
    with pytest.raises(EngineError) as err:
        _check(p, kind)
    assert err.value.field == field
    assert str(p) in str(err.value) and "contract" in str(err.value)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(EngineError, match="not found"):
        read_onnx_io(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(EngineError, match="ONNX"):
        read_onnx_io(bad)


def test_frames_from_a_recorded_drive(tmp_path):
    """The calibration/check frame source reads camera images through the drive reader, and a
    drive of noise images is refused as calibration data."""
    import dataclasses

    from engines.frames import check_calibration_frames, iter_frames, procedural_frames
    from pipeline.drive.io import open_writer
    from pipeline.drive.synth import make_calib, make_frame, make_meta
    from pipeline.errors import InputDataError

    calib = make_calib(160, 96)
    scenes = procedural_frames(6, (96, 160), seed=4)
    with open_writer(tmp_path / "drive", calib, make_meta(6), "rosbag2") as writer:
        for i in range(6):
            frame = make_frame(calib, i, 200)
            writer.write(dataclasses.replace(frame, camera=dataclasses.replace(frame.camera, image=scenes[i])))
    images = list(iter_frames(tmp_path / "drive"))
    assert len(images) == 6 and all(np.array_equal(a, b) for a, b in zip(images, scenes))
    check_calibration_frames(images, min_frames=6)
    assert len(list(iter_frames(tmp_path / "drive", stride=2, limit=2))) == 2

    with open_writer(tmp_path / "noise", calib, make_meta(6), "rosbag2") as writer:
        for i in range(6):
            writer.write(make_frame(calib, i, 200))            # its camera images are uniform noise
    with pytest.raises(InputDataError, match="random data"):
        check_calibration_frames(list(iter_frames(tmp_path / "noise")), min_frames=6)
