"""Training data, augmentation, the metrics, and a short training run: checkpoint, resume, export."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from engines.evaluation import MaskAPScorer, SemanticScorer, gt_instances
from engines.training import Sample, augment, load_samples, maskrcnn_targets
from pipeline.config import load_taxonomy

TAX = load_taxonomy()


@pytest.fixture(scope="module")
def small_drive(tmp_path_factory) -> Path:
    from pipeline.sim.simulate import simulate

    path = tmp_path_factory.mktemp("train") / "drive"
    simulate(path, frames=3, seed=4242, scale=0.5, progress=False)
    return path


@pytest.fixture(scope="module")
def samples(small_drive) -> list[Sample]:
    return load_samples([small_drive], progress=False)


def test_samples_hold_ground_truth(samples):
    assert len(samples) == 3
    s = samples[0]
    assert s.image.shape[:2] == s.semantic.shape == s.instance.shape
    assert s.image.dtype == np.uint8 and s.semantic.dtype == np.uint8 and s.instance.dtype == np.uint16
    # every instance pixel carries a thing class in the semantic mask (the two topics agree)
    things = np.isin(s.semantic, TAX.thing_ids)
    assert np.mean(things[s.instance > 0]) > 0.99


def test_augment_keeps_image_and_labels_aligned(samples):
    rng = np.random.default_rng(0)
    s = samples[0]
    for _ in range(10):
        img, sem, inst = augment(s, (96, 160), (0.7, 1.4), rng, TAX.ignore_id)
        assert img.shape == (96, 160, 3) and sem.shape == inst.shape == (96, 160)
        # labels are resampled nearest: only ids that exist in the source (or the pad id) appear
        assert set(np.unique(sem)) <= set(np.unique(s.semantic)) | {TAX.ignore_id}
        assert set(np.unique(inst)) <= set(np.unique(s.instance))
        # instance pixels still lie on thing-class semantic pixels after scale, crop and flip
        if (inst > 0).any():
            assert np.mean(np.isin(sem[inst > 0], TAX.thing_ids)) > 0.99
        # padding (ignore id) is black in the image
        pad = sem == TAX.ignore_id
        if pad.any():
            assert img[pad].max() == 0


@pytest.mark.parametrize("axis", [0, 1])
def test_augment_keeps_labels_on_their_pixels_to_a_fraction_of_a_pixel(axis):
    """Stripes 6 px wide, grey 60 on road and 190 on lane paint, scaled, cropped, flipped and
    jittered: each edge between labels must lie where the image crosses mid-grey (found to a
    fraction of a pixel on the profile averaged along the stripes). Labels resampled with
    OpenCV's INTER_NEAREST (floor(x * scale)) sat ~0.5 px off the image."""
    road, lane = TAX.id("road"), TAX.id("lane_marking")
    yy, xx = np.mgrid[:150, :300]
    on = ((xx if axis == 1 else yy) // 6) % 2 == 1
    sem = np.where(on, lane, road).astype(np.uint8)
    img = np.repeat(np.where(on, 190, 60).astype(np.uint8)[..., None], 3, axis=2)
    smp = Sample(img, sem, np.zeros(sem.shape, np.uint16), "stripes")
    rng = np.random.default_rng(1)
    offsets = []                # per crop: its edges' mean offset (a flip turns a shift's sign)
    for _ in range(24):
        shifts = []
        out, lab, _ = augment(smp, (96, 160), (0.8, 1.3), rng, TAX.ignore_id)
        grey = out.astype(np.float32).mean(axis=2)
        if axis == 0:
            grey, lab = grey.T, lab.T
        rows = np.flatnonzero((lab != TAX.ignore_id).all(axis=1))      # lines across the stripes
        cols = np.flatnonzero((lab[rows] != TAX.ignore_id).all(axis=0))
        profile, labels = grey[np.ix_(rows, cols)].mean(axis=0), lab[rows[0], cols] == lane
        d = profile - (np.median(profile[~labels]) + np.median(profile[labels])) / 2
        i = np.flatnonzero(np.sign(d[:-1]) != np.sign(d[1:]))
        crossing = i + d[i] / (d[i] - d[i + 1])                         # sub-pixel, pixel-centre coordinates
        j = np.flatnonzero(labels[:-1] != labels[1:])
        for edge in j + 0.5:
            near = crossing[np.abs(crossing - edge) < 2]
            if len(near) == 1:
                shifts.append(near[0] - edge)
        assert len(shifts) >= 8
        offsets.append(np.mean(shifts))
    assert np.mean(np.abs(offsets)) < 0.1, offsets


def test_maskrcnn_targets_are_tight_boxes_of_their_masks(samples):
    label_of = {TAX.id(n): i + 1 for i, n in enumerate(TAX.thing_names)}
    s = max(samples, key=lambda x: len(np.unique(x.instance)))
    t = maskrcnn_targets(s.semantic, s.instance, TAX, label_of, min_box_px=4)
    assert len(t["boxes"]) > 0
    for box, label, mask in zip(t["boxes"], t["labels"], t["masks"]):
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert 1 <= label <= len(TAX.thing_names)
        cls = TAX.thing_names[label - 1]
        assert np.all(s.semantic[mask.astype(bool)] == TAX.id(cls))


def test_semantic_scorer_iou_by_hand():
    sc = SemanticScorer(TAX)
    true = np.zeros((4, 4), np.uint8)               # all road
    true[0, :] = TAX.id("sky")
    pred = true.copy()
    pred[1, 0] = TAX.id("sky")                      # one road pixel called sky
    pred[3, 3] = TAX.ignore_id                      # one road pixel left unlabelled: a miss
    sc.add(pred, true)
    r = sc.result()
    assert r["iou"]["sky"] == pytest.approx(4 / 5)
    assert r["iou"]["road"] == pytest.approx(10 / 12)
    assert r["miou"] == pytest.approx((4 / 5 + 10 / 12) / 2)
    ident = SemanticScorer(TAX)
    ident.add(true, true)
    assert ident.result()["miou"] == 1.0


def test_mask_ap_perfect_shifted_and_ignored(samples):
    s = max(samples, key=lambda x: len(np.unique(x.instance)))
    gts = gt_instances(s.semantic, s.instance, TAX)
    assert gts
    classes = np.array([c for c, _ in gts])
    masks = np.stack([m for _, m in gts])
    perfect = MaskAPScorer(TAX, min_gt_height_px=0)
    perfect.add(s.semantic, s.instance, classes, np.linspace(0.9, 0.5, len(gts)), masks)
    r = perfect.result()
    assert r["ap50"] == pytest.approx(1.0) and r["ap"] == pytest.approx(1.0)
    # masks shifted far off their objects: nothing matches
    shifted = MaskAPScorer(TAX, min_gt_height_px=0)
    shifted.add(s.semantic, s.instance, classes, np.full(len(gts), 0.9), np.roll(masks, 40, axis=2))
    assert shifted.result()["ap50"] < 0.5
    # with no detections on the small ones, requiring them costs recall; ignoring them does not
    heights = np.array([np.ptp(np.nonzero(m)[0]) + 1 for m in masks])
    big = heights >= 8
    assert big.any() and (~big).any(), "the drive should hold both small and large instances"
    strict = MaskAPScorer(TAX, min_gt_height_px=0)
    strict.add(s.semantic, s.instance, classes[big], np.full(big.sum(), 0.9), masks[big])
    lenient = MaskAPScorer(TAX, min_gt_height_px=8)
    lenient.add(s.semantic, s.instance, classes[big], np.full(big.sum(), 0.9), masks[big])
    assert lenient.result()["ap50"] == pytest.approx(1.0)
    assert strict.result()["ap50"] < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["deeplab", pytest.param("maskrcnn", marks=pytest.mark.xfail(
    strict=True, reason="known: a 3-step Mask R-CNN's export disagrees with its PyTorch graph in this environment "
    "(matched 0.80 < 0.99: same scores to 6e-6, boxes up to 128 px apart, NMS converged); it fails the same way "
    "at ab04d9b, which passed CI on 2026-12-02, so a dependency changed; the committed and random-weight Mask "
    "R-CNN exports still agree (test_engines, test_default_models). Strict: passing again fails this mark."))])
def test_train_checkpoint_resume_and_export(kind, small_drive, samples, tmp_path):
    from engines.contracts import read_onnx_io
    from engines.training import TrainConfig, export_trained, train

    arch = {"deeplab": "deeplabv3plus_mobilenet_v3_small", "maskrcnn": "maskrcnn_mobilenet_v3_small_fpn"}[kind]
    crop = (96, 160) if kind == "deeplab" else (128, 192)
    cfg = TrainConfig(kind=kind, arch=arch, drives=[str(small_drive)], out_dir=str(tmp_path), steps=2, batch=2,
                      crop_hw=crop, warmup_steps=1, checkpoint_every=1, export_hw=(192, 640), threads=1)
    first = train(cfg, progress=False, samples=samples)
    assert first["steps"] == 2
    with pytest.raises(Exception, match="--resume"):
        train(cfg, progress=False, samples=samples)          # never overwrites a run by accident
    cfg.steps = 3
    second = train(cfg, resume=True, progress=False, samples=samples)
    assert second["steps"] == 3
    rows = list(csv.reader(open(tmp_path / "loss_log.csv")))
    assert rows[0][:3] == ["step", "seconds", "lr"] and [r[0] for r in rows[1:]] == ["1", "2", "3"]
    assert all(np.isfinite(float(v)) for r in rows[1:] for v in r[3:])
    report = json.loads((tmp_path / "train_report.json").read_text())
    assert report["arch"] == arch and report["steps"] == 3
    overrides = {"num_detections": 10, "rpn_pre_nms_top_n": 100, "rpn_post_nms_top_n": 50,
                 "box_candidates": 50} if kind == "maskrcnn" else {}
    rep = export_trained(arch, report["weights"], tmp_path / "m.onnx", input_hw=(192, 640),
                         verify_frames=[samples[0].image], **overrides)
    io = read_onnx_io(tmp_path / "m.onnx")
    assert io.metadata["segfuse.arch"] == arch
    assert io.metadata["segfuse.source"].startswith(Path(report["weights"]).name)
    if kind == "deeplab":
        assert rep.agreement["pixel_agreement"] > 0.999
    else:
        assert rep.agreement["matched"] >= 0.99 or rep.frames == 0 or np.isnan(rep.agreement["matched"])


def test_class_weights_favour_rare_classes(samples):
    from engines.training import class_weights

    assert class_weights(samples, TAX.num_classes, "none") is None
    w = class_weights(samples, TAX.num_classes, "sqrt-median")
    counts = np.bincount(np.concatenate([s.semantic.reshape(-1) for s in samples]), minlength=256)[:TAX.num_classes]
    present = np.flatnonzero(counts)
    rare, common = present[np.argmin(counts[present])], present[np.argmax(counts[present])]
    assert w[rare] > 1.0 > w[common]
    assert np.all((w >= 0.25) & (w <= 10.0))
    with pytest.raises(Exception, match="class balance"):
        class_weights(samples, TAX.num_classes, "inverse")


def test_init_from_weights_without_the_stride2_refinement(tmp_path):
    """Fine-tuning starts from weights trained before DeepLab gained its stride-2 refinement:
    they load, the refinement starts at zero (the output ignores it), and weights that do not
    fit are refused, naming the key."""
    import torch

    from engines.lite import build_deeplab_lite
    from engines.training import init_from
    from pipeline.errors import ConfigError

    torch.manual_seed(0)
    old = {k: v for k, v in build_deeplab_lite(TAX.num_classes).state_dict().items()
           if not k.startswith(("refine2", "squeeze4"))}
    torch.save(old, tmp_path / "old.pt")
    model = build_deeplab_lite(TAX.num_classes)
    missing = init_from(model, tmp_path / "old.pt")
    assert missing and all(k.startswith(("refine2", "squeeze4")) for k in missing)
    assert torch.equal(model.state_dict()["fuse4.0.0.weight"], old["fuse4.0.0.weight"])
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        before = model(x)["out"]
        model.refine2[0].weight.mul_(3.0)                # the refinement's features change ...
        assert torch.equal(model(x)["out"], before)      # ... but its zero last layer hides them
        model.refine2_logits.weight.fill_(0.01)
        assert not torch.equal(model(x)["out"], before)
    bad = dict(old, **{"classifier.weight": torch.zeros(3, 32, 1, 1)})
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="classifier.weight"):
        init_from(build_deeplab_lite(TAX.num_classes), tmp_path / "bad.pt")
    torch.save(dict(old, extra=torch.zeros(1)), tmp_path / "extra.pt")
    with pytest.raises(ConfigError, match="extra"):
        init_from(build_deeplab_lite(TAX.num_classes), tmp_path / "extra.pt")
    with pytest.raises(ConfigError, match="not found"):
        init_from(build_deeplab_lite(TAX.num_classes), tmp_path / "none.pt")


def test_class_bias_offsets_reach_the_logits_and_do_not_lower_miou(samples):
    import torch

    from engines.lite import build_deeplab_lite
    from engines.training import calibrate_class_bias

    torch.manual_seed(1)
    model = build_deeplab_lite(TAX.num_classes)
    x = torch.rand(1, 3, 96, 320)
    with torch.no_grad():
        before = model(x)["out"]
    rep = calibrate_class_bias(model, samples, TAX, input_hw=(192, 640), rounds=2, progress=False)
    offsets = np.array([rep["offsets"][name] for name in TAX.names])
    assert rep["miou_after"] >= rep["miou_before"] and rep["frames"] == len(samples)
    assert abs(offsets.mean()) < 1e-3 and np.abs(offsets).max() > 0      # a random model has a lot to fix
    with torch.no_grad():
        shift = (model(x)["out"] - before)[0]
    # a constant per class, everywhere: the offset reached the output through the upsampling
    np.testing.assert_allclose(shift.numpy(), np.broadcast_to(offsets[:, None, None], shift.shape), atol=2e-3)


def test_bias_drives_must_be_held_out(small_drive, samples, tmp_path):
    from engines.training import TrainConfig, train
    from pipeline.errors import ConfigError

    cfg = TrainConfig(kind="deeplab", arch="deeplabv3plus_mobilenet_v3_small", drives=[str(small_drive)],
                      out_dir=str(tmp_path), steps=1, batch=1, crop_hw=(64, 96), warmup_steps=1, threads=1,
                      bias_drives=[str(small_drive)])
    with pytest.raises(ConfigError, match="held out"):
        train(cfg, progress=False, samples=samples)
