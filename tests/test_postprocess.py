"""Preprocess (letterbox, RGB, NCHW) and postprocess (class ids back to the camera, mask pasting)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import InputDataError
from pipeline.postprocess import instances_from_output, paste_masks, semantic_from_output
from pipeline.preprocess import make_transform, preprocess_frames, resize_to_input
from pipeline.types import CameraFrame


def test_letterbox_transform_roundtrip_and_layout():
    image = np.zeros((375, 1242, 3), np.uint8)
    image[:, :, 0] = 255                                   # pure blue in BGR
    batch = preprocess_frames([CameraFrame("cam", 0, image)], (256, 512))
    t = batch.transforms[0]
    assert batch.images.shape == (1, 3, 256, 512) and batch.images.dtype == np.float32
    assert abs(t.scale_x - 512 / 1242) < 1e-3 and t.pad_x == 0 and t.pad_y > 0
    inside = batch.images[0, :, t.pad_y + 5, 100]
    assert inside.tolist() == [0.0, 0.0, 255.0], "RGB order: blue is channel 2"
    assert batch.images[0, :, 0, 100].tolist() == [0.0, 0.0, 0.0], "padding"
    boxes = np.array([[10, 20, 300, 200], [0, 0, 1242, 375]], np.float32)
    back = t.boxes_to_camera(t.boxes_to_input(boxes))
    assert np.allclose(back, boxes, atol=1e-3)
    s = make_transform((375, 1242), (256, 512), "stretch")
    assert s.pad_x == s.pad_y == 0 and s.content_hw == (256, 512)
    with pytest.raises(InputDataError):
        resize_to_input(np.zeros((10, 10), np.uint8), (32, 32))


def test_pad_mode_never_resamples_a_frame_that_fits():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (375, 1242, 3), dtype=np.uint8)
    out, t = resize_to_input(image, (384, 1248), mode="pad")
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == (1.0, 1.0, 3, 4) and t.content_hw == (375, 1242)
    assert np.array_equal(out[4:379, 3:1245], image) and not out[:4].any() and not out[:, :3].any()
    ids = np.zeros((384, 1248), np.int32)
    ids[4:379, 3:1245] = image[:, :, 0] % 11                   # one class per camera pixel
    assert np.array_equal(semantic_from_output(ids, t, "cam").class_ids, image[:, :, 0] % 11)
    big = make_transform((750, 2484), (384, 1248), "pad")      # larger frames are letterboxed down
    assert big == make_transform((750, 2484), (384, 1248), "letterbox")
    lb = make_transform((375, 1242), (384, 1248), "letterbox")
    assert lb.scale_x > 1.0 and lb.content_hw == (377, 1248)   # what letterbox does to the same frame


def test_letterboxed_labels_come_back_on_their_own_pixels():
    """A model that predicts the truth perfectly in its letterboxed input (each input pixel
    takes the label at its centre) gives back the camera's labels: thin stripes (lane paint,
    poles) land on their own columns. OpenCV's INTER_NEAREST (floor(x * scale)) moved most
    columns of a 1242 -> 1248 -> 1242 round trip by one."""
    import cv2

    truth = np.zeros((375, 1242), np.uint8)
    for x0 in range(5, 1230, 17):
        truth[:, x0:x0 + 3] = 1 + (x0 % 3)                     # 3 px stripes of three classes
    truth[100:103] = 4                                        # and a 3 px row
    t = make_transform((375, 1242), (384, 1248), "letterbox")
    ch, cw = t.content_hw
    ids = np.zeros((384, 1248), np.int32)
    ys = np.minimum(((np.arange(ch) + 0.5) / t.scale_y).astype(int), 374)
    xs = np.minimum(((np.arange(cw) + 0.5) / t.scale_x).astype(int), 1241)
    ids[t.pad_y:t.pad_y + ch, t.pad_x:t.pad_x + cw] = truth[ys[:, None], xs[None, :]]
    back = semantic_from_output(ids, t, "cam").class_ids
    stripes = truth > 0
    iou = (stripes & (back == truth)).sum() / (stripes | (back > 0)).sum()
    assert iou > 0.98, iou
    floor_resize = cv2.resize(ids[t.pad_y:t.pad_y + ch, t.pad_x:t.pad_x + cw].astype(np.uint8), (1242, 375),
                              interpolation=cv2.INTER_NEAREST)
    assert (stripes & (floor_resize == truth)).sum() / (stripes | (floor_resize > 0)).sum() < 0.9


def test_semantic_back_to_camera_resolution():
    src = (300, 600)
    t = make_transform(src, (128, 128), "letterbox")
    ids = np.full((1, 128, 128), 255, np.int32)             # padding area marked 255
    ch, cw = t.content_hw
    ids[0, t.pad_y:t.pad_y + ch, t.pad_x:t.pad_x + cw // 2] = 3
    ids[0, t.pad_y:t.pad_y + ch, t.pad_x + cw // 2:t.pad_x + cw] = 7
    mask = semantic_from_output(ids, t, "cam")
    assert mask.class_ids.shape == src and mask.class_ids.dtype == np.uint8
    assert (mask.class_ids[:, :295] == 3).all() and (mask.class_ids[:, 305:] == 7).all()
    assert not (mask.class_ids == 255).any(), "padding cropped away"
    lut = np.arange(256, dtype=np.uint8)
    lut[3] = 0
    assert (semantic_from_output(ids, t, "cam", label_lut=lut).class_ids[:, :295] == 0).all()


def test_paste_masks_matches_torchvision_for_ordinary_boxes():
    torch = pytest.importorskip("torch")
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    g = torch.Generator().manual_seed(0)
    masks = torch.nn.functional.interpolate(torch.rand(6, 1, 5, 5, generator=g), size=(28, 28), mode="bilinear")
    boxes = torch.tensor([[10, 20, 60, 90], [100.5, 30.2, 200.7, 95.9], [0, 0, 320, 256], [280, 200, 320, 256],
                          [5.3, 7.7, 120.2, 160.9], [150, 10, 190, 40]])
    ref = paste_masks_in_image(masks, boxes, (256, 320))[:, 0].numpy() >= 0.5
    ours = paste_masks(masks[:, 0].numpy(), boxes.numpy(), (256, 320), 0.5)
    for r, o in zip(ref, ours):
        assert (r & o).sum() / (r | o).sum() > 0.9


def _reference_paste(mask: np.ndarray, box: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Exact bilinear paste, dense over the whole image: pixel centre (x + 0.5) samples mask
    coordinate (x + 0.5 - x0) / (x1 - x0) * M - 0.5, zero outside the mask (align_corners=False)."""
    m = mask.shape[0]

    def weights(n, lo, hi):
        coord = (np.arange(n) + 0.5 - lo) / max(hi - lo, 1e-6) * m - 0.5
        return np.maximum(0.0, 1.0 - np.abs(coord[:, None] - np.arange(m)[None, :]))

    return weights(hw[0], box[1], box[3]) @ mask.astype(np.float64) @ weights(hw[1], box[0], box[2]).T


def test_paste_masks_match_an_exact_bilinear_reference_and_stay_in_their_boxes():
    rng = np.random.default_rng(0)
    masks = rng.random((20, 28, 28)).astype(np.float32)
    xy = rng.random((20, 2)) * 200
    boxes = np.concatenate([xy, xy + rng.random((20, 2)) * 100 + 1], 1).astype(np.float32)
    boxes[3] = [-20, -10, 30, 40]                          # partly outside the image
    boxes[4] = [50, 50, 50, 50]                            # empty
    full = paste_masks(masks, boxes, (240, 320), 0.5)
    assert full.shape == (20, 240, 320) and not full[4].any()
    for k in range(20):
        ref = _reference_paste(masks[k], boxes[k], (240, 320)) >= 0.5
        if k != 4:
            # OpenCV interpolates with 1/32-pixel weights: at most a few boundary pixels differ
            assert (full[k] != ref).sum() <= max(3, 0.01 * ref.sum()), k
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        ys, xs = np.nonzero(full[k])
        if len(ys):
            assert xs.min() >= np.floor(x0) and xs.max() < np.ceil(x1)
            assert ys.min() >= np.floor(y0) and ys.max() < np.ceil(y1)
    ones = paste_masks(np.ones((1, 28, 28), np.float32), np.array([[10, 20, 50, 60]], np.float32), (100, 100))
    assert ones[0, 20:60, 10:50].all() and ones[0].sum() == 40 * 40


def test_instances_drop_padding_map_boxes_and_labels():
    t = make_transform((200, 400), (128, 256), "letterbox")
    outputs = {
        "boxes": np.array([[20, 20, 60, 60], [100, 30, 200, 100], [0, 0, 0, 0], [5, 5, 10, 10]], np.float32),
        "scores": np.array([0.9, 0.7, 0.0, 0.3], np.float32),
        "labels": np.array([6, 8, 255, 7], np.int32),
        "masks": np.ones((4, 28, 28), np.float32),
    }
    inst = instances_from_output(outputs, t, "cam", score_threshold=0.5)
    assert len(inst) == 2 and inst.class_ids.tolist() == [6, 8] and inst.class_ids.dtype == np.int32
    assert np.allclose(inst.boxes[0], np.array([20, 20, 60, 60]) / t.scale_x - [t.pad_x / t.scale_x, t.pad_y / t.scale_y] * 2,
                       atol=1e-3)
    assert inst.masks.shape == (2, 200, 400) and inst.masks.dtype == bool
    x0, y0, x1, y1 = inst.boxes[1]
    assert inst.masks[1, int(y0) + 2:int(y1) - 2, int(x0) + 2:int(x1) - 2].all()
    assert not inst.masks[1, :int(y0) - 1].any() and not inst.masks[1, :, int(x1) + 2:].any()
    none = instances_from_output(outputs, t, "cam", score_threshold=0.95)
    assert len(none) == 0 and none.masks.shape == (0, 200, 400)
