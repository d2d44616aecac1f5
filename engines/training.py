"""`segfuse train deeplab|maskrcnn`: train the default models on synthetic drives.

Data: recorded drives with ground truth (``segfuse sim`` output: the camera image and
the semantic/instance ground-truth topics). Every frame is decoded once into memory; each
step draws random frames and augments them (scale, crop, flip, colour jitter, blur, noise).

- DeepLab: cross-entropy over the whole taxonomy (ignore id ignored) on random crops; the
  network is fully convolutional, so it is exported at the full camera size.
- Mask R-CNN: torchvision's Mask R-CNN losses on random crops, one target per ground-truth
  instance of a thing class (box = the tight box of its visible mask).

Checkpoints (``OUT/last.pt``: weights, optimiser, step, RNG states) are written every
``--checkpoint-every`` steps and at the end; ``--resume`` continues from one. Losses go to
``OUT/loss_log.csv``. At the end the model is exported to ONNX (the I/O contract of
engines/contracts.py) next to the checkpoint, with a ``train_report.json``.
torch is imported inside the functions.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.config import Taxonomy, load_taxonomy
from pipeline.errors import ConfigError, InputDataError
from pipeline.preprocess import resize_labels, resize_to_input

log = logging.getLogger(__name__)

@dataclass
class TrainConfig:
    kind: str                                  # deeplab | maskrcnn
    arch: str
    drives: list[str]
    out_dir: str
    steps: int = 3000
    minutes: float | None = None               # time budget: the schedule runs on max(step, time) progress
    batch: int = 8
    crop_hw: tuple[int, int] = (256, 512)
    scale_range: tuple[float, float] = (0.7, 1.4)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    threads: int = 0                           # 0: torch's default
    seed: int = 0
    checkpoint_every: int = 200
    export_hw: tuple[int, int] = (384, 1248)   # ONNX input size (letterboxed KITTI-like frames)
    frame_stride: int = 1                      # use every n-th frame of each drive
    min_box_px: int = 10                       # Mask R-CNN targets: instances at least this tall and wide
    class_balance: str = "none"                # DeepLab loss weights: none | sqrt-median (frequency balancing)
    init_weights: str | None = None            # start from these weights (a state dict), fresh optimiser and schedule
    bias_drives: list[str] = field(default_factory=list)   # DeepLab: tune per-class logit offsets on these (held out)
    bias_resize: str = "letterbox"             # ... with frames resized as the pipeline will (engines.resize)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    image: np.ndarray        # (H, W, 3) uint8 BGR
    semantic: np.ndarray     # (H, W) uint8 taxonomy ids
    instance: np.ndarray     # (H, W) uint16 instance ids, 0 = none
    source: str


def load_samples(drives: Sequence[str | Path], *, stride: int = 1, progress: bool = True) -> list[Sample]:
    """Camera image + semantic and instance ground truth of every ``stride``-th frame."""
    from tqdm import tqdm

    from pipeline.drive.io import open_drive

    samples: list[Sample] = []
    for path in drives:
        with open_drive(path) as drive:
            n_before = len(samples)
            frames = drive.frames(on_error="skip")
            for frame in tqdm(frames, total=len(drive), desc=f"load {Path(path).name}", unit="frame",
                              disable=not progress, leave=False):
                if frame.index % stride:
                    continue
                if frame.semantic is None or frame.instance is None:
                    raise InputDataError("the drive has no semantic/instance ground truth (segfuse sim drives "
                                         "have it)", path=path, field="semantic")
                samples.append(Sample(frame.camera.image, frame.semantic, frame.instance,
                                      f"{Path(path).name}#{frame.index}"))
            if drive.num_skipped:
                log.warning("%s: %d unreadable frames skipped", path, drive.num_skipped)
            log.info("%s: %d frames", path, len(samples) - n_before)
    if not samples:
        raise InputDataError("no frames with ground truth in the given drives", field="drives")
    return samples


# -- augmentation ----------------------------------------------------------------------------

def augment(sample: Sample, crop_hw: tuple[int, int], scale_range: tuple[float, float],
            rng: np.random.Generator, ignore_id: int = 255) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random scale, crop (padded with the ignore id where the image ends), flip, colour jitter,
    blur and noise. Returns (image BGR uint8, semantic, instance), all cropped."""
    import cv2

    img, sem, inst = sample.image, sample.semantic, sample.instance
    s = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
    h, w = img.shape[:2]
    nh, nw = max(8, int(round(h * s))), max(8, int(round(w * s)))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    sem, inst = resize_labels(sem, (nh, nw)), resize_labels(inst, (nh, nw))
    ch, cw = crop_hw
    y0 = int(rng.integers(0, max(nh - ch, 0) + 1))
    x0 = int(rng.integers(0, max(nw - cw, 0) + 1))
    out_img = np.zeros((ch, cw, 3), np.uint8)
    out_sem = np.full((ch, cw), ignore_id, np.uint8)
    out_inst = np.zeros((ch, cw), np.uint16)
    hh, ww = min(ch, nh - y0), min(cw, nw - x0)
    # pad evenly where the scaled image is smaller than the crop (as a letterbox would)
    py, px = (ch - hh) // 2 if nh < ch else 0, (cw - ww) // 2 if nw < cw else 0
    out_img[py:py + hh, px:px + ww] = img[y0:y0 + hh, x0:x0 + ww]
    out_sem[py:py + hh, px:px + ww] = sem[y0:y0 + hh, x0:x0 + ww]
    out_inst[py:py + hh, px:px + ww] = inst[y0:y0 + hh, x0:x0 + ww]
    if rng.random() < 0.5:
        out_img, out_sem, out_inst = out_img[:, ::-1], out_sem[:, ::-1], out_inst[:, ::-1]
    out_img = jitter_colour(np.ascontiguousarray(out_img), rng)
    return out_img, np.ascontiguousarray(out_sem), np.ascontiguousarray(out_inst)


def jitter_colour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation, white balance, gamma, then blur and sensor noise."""
    import cv2

    x = img.astype(np.float32)
    x *= rng.uniform(0.6, 1.4)                                      # exposure
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.7, 1.3) + mean                   # contrast
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * rng.uniform(0.6, 1.4) + grey                   # saturation
    x *= rng.uniform(0.9, 1.1, size=3).astype(np.float32)           # white balance
    x = np.clip(x, 0, 255)
    gamma = rng.uniform(0.8, 1.25)
    x = 255.0 * (x / 255.0) ** gamma
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.4, 1.3))
    if rng.random() < 0.7:
        x += rng.normal(0.0, rng.uniform(1.0, 7.0), size=x.shape).astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)


def to_tensor_rgb01(images: Sequence[np.ndarray]):
    """BGR uint8 (H, W, 3) images -> float32 [B, 3, H, W] RGB in 0..1."""
    import torch

    arr = np.stack([im[:, :, ::-1].transpose(2, 0, 1) for im in images]).astype(np.float32) / 255.0
    return torch.from_numpy(arr)


def normalise(x):
    """RGB 0..1 -> the ImageNet normalisation the exported graphs apply (engines.graphs)."""
    import torch

    from engines.graphs import IMAGENET_MEAN, IMAGENET_STD

    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def maskrcnn_targets(sem: np.ndarray, inst: np.ndarray, taxonomy: Taxonomy, label_of: dict[int, int],
                     min_box_px: int) -> dict[str, np.ndarray]:
    """One target per visible instance of a thing class (engines.evaluation.gt_instances, the
    same instances the evaluation scores): tight box of its mask, model label, mask."""
    from engines.evaluation import gt_instances

    boxes, labels, masks = [], [], []
    for cls, m in gt_instances(sem, inst, taxonomy):
        if cls not in label_of:
            continue
        ys, xs = np.nonzero(m)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        if (x2 - x1) < min_box_px or (y2 - y1) < min_box_px:
            continue
        boxes.append([x1, y1, x2, y2])
        labels.append(label_of[cls])
        masks.append(m)
    h, w = inst.shape
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, np.int64),
            "masks": np.asarray(masks, np.uint8).reshape(-1, h, w)}


def class_weights(samples: Sequence[Sample], num_classes: int, mode: str) -> np.ndarray | None:
    """Cross-entropy weights per class. ``sqrt-median``: the square root of median-frequency
    balancing (Eigen & Fergus 2015), median pixel frequency / class frequency, clipped to
    0.25..10: rare thin classes (lane paint, poles, pedestrians) count more, without the
    false positives full inverse-frequency weights bring."""
    if mode == "none":
        return None
    if mode != "sqrt-median":
        raise ConfigError(f"class balance must be none or sqrt-median, got {mode!r}", field="class_balance")
    counts = np.zeros(num_classes, np.float64)
    for s in samples:
        counts += np.bincount(s.semantic.reshape(-1), minlength=256)[:num_classes]
    freq = counts / max(counts.sum(), 1.0)
    present = freq > 0
    median = np.median(freq[present]) if present.any() else 1.0
    w = np.ones(num_classes)
    w[present] = np.sqrt(median / freq[present])
    return np.clip(w, 0.25, 10.0)


# -- the loop --------------------------------------------------------------------------------

def progress_of(step: int, seconds: float, cfg: TrainConfig) -> float:
    """Fraction of the schedule done: by steps, or by time when a time budget is set (whichever
    is further), so a time-budgeted run decays its learning rate exactly to its end."""
    p = step / cfg.steps
    if cfg.minutes:
        p = max(p, seconds / (60.0 * cfg.minutes))
    return min(1.0, p)


def lr_at(step: int, cfg: TrainConfig, progress: float | None = None) -> float:
    """Linear warm-up over the first steps, then cosine decay to 1% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = progress if progress is not None else step / cfg.steps
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
          samples: list[Sample] | None = None) -> dict[str, Any]:
    """Train, checkpoint, export. Returns the training report (also written as JSON)."""
    import torch
    from tqdm import tqdm

    from engines.models import default_spec

    if cfg.kind not in ("deeplab", "maskrcnn"):
        raise ConfigError(f"model kind must be deeplab or maskrcnn, got {cfg.kind!r}", field="kind")
    if cfg.steps < 1 or cfg.batch < 1:
        raise ConfigError("steps and batch must be at least 1", field="steps")
    overlap = {str(Path(d).resolve()) for d in cfg.bias_drives} & {str(Path(d).resolve()) for d in cfg.drives}
    if overlap:                                      # checked before hours of training, not after
        raise ConfigError(f"bias drives must be held out from training; both have {sorted(overlap)[0]}",
                          field="bias_drives")
    taxonomy = load_taxonomy()
    spec = default_spec(cfg.arch, taxonomy=taxonomy, input_hw=tuple(cfg.export_hw))
    if spec.kind != cfg.kind:
        raise ConfigError(f"architecture {cfg.arch} is a {spec.kind} model, not {cfg.kind}", field="arch")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "last.pt"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    from engines.models import build_torchvision_model

    model = build_torchvision_model(cfg.arch, spec.num_classes)
    if cfg.kind == "maskrcnn":
        model.transform.min_size = (cfg.crop_hw[0],)
        model.transform.max_size = cfg.crop_hw[1]
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    start, elapsed_before = 0, 0.0
    if resume and ckpt_path.is_file():
        state = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)
        if state.get("arch") != cfg.arch:
            raise ConfigError(f"checkpoint is a {state.get('arch')} model, not {cfg.arch}", path=ckpt_path,
                              field="arch")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        elapsed_before = float(state.get("train_seconds", 0.0))
        rng = np.random.default_rng()
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from %s at step %d", ckpt_path, start)
    elif ckpt_path.is_file() and not resume:
        raise ConfigError("a checkpoint already exists here: pass --resume to continue it, or pick another --out",
                          path=ckpt_path, field="out")
    elif cfg.init_weights:
        init_from(model, cfg.init_weights)

    if samples is None:
        samples = load_samples(cfg.drives, stride=cfg.frame_stride, progress=progress)
    label_of = {taxonomy.id(name): label for label, name in spec.class_map.items()}   # taxonomy id -> model label
    ignore = taxonomy.ignore_id
    ce_weights = None
    if cfg.kind == "deeplab":
        w = class_weights(samples, spec.num_classes, cfg.class_balance)
        if w is not None:
            ce_weights = torch.from_numpy(w.astype(np.float32))
            log.info("class weights: %s", ", ".join(f"{n} {v:.2f}" for n, v in zip(taxonomy.names, w)))

    log_path = out / "loss_log.csv"
    new_log = not (resume and log_path.is_file())
    log_file = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.writer(log_file)
    loss_names: list[str] | None = None

    def save(step: int, seconds: float) -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"arch": cfg.arch, "kind": cfg.kind, "step": step, "model": model.state_dict(),
                    "optimizer": opt.state_dict(), "numpy_rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "train_seconds": seconds,
                    "config": asdict(cfg)}, str(tmp))
        tmp.replace(ckpt_path)                      # never a half-written checkpoint

    model.train()
    t0 = time.perf_counter()
    smooth: dict[str, float] = {}
    step = start
    try:
        with tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.kind}", unit="step",
                  disable=not progress) as bar:
            for step in range(start, cfg.steps):
                done = progress_of(step, elapsed_before + time.perf_counter() - t0, cfg)
                if done >= 1.0:
                    break
                lr = lr_at(step, cfg, done)
                for g in opt.param_groups:
                    g["lr"] = lr
                batch = [augment(samples[int(rng.integers(len(samples)))], cfg.crop_hw, cfg.scale_range, rng,
                                 ignore) for _ in range(cfg.batch)]
                x = to_tensor_rgb01([b[0] for b in batch])
                if cfg.kind == "deeplab":
                    target = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64))
                    logits = model(normalise(x))["out"]
                    loss = torch.nn.functional.cross_entropy(logits, target, weight=ce_weights, ignore_index=ignore)
                    losses = {"loss": loss}
                else:
                    targets = []
                    for b in batch:
                        t = maskrcnn_targets(b[1], b[2], taxonomy, label_of, cfg.min_box_px)
                        targets.append({k: torch.from_numpy(v) for k, v in t.items()})
                    parts = model(list(x), targets)
                    loss = sum(parts.values())
                    losses = {"loss": loss, **parts}
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                opt.step()
                values = {k: float(v.detach()) for k, v in losses.items()}
                if not all(math.isfinite(v) for v in values.values()):
                    raise FloatingPointError(f"loss is not finite at step {step}: {values}")
                if loss_names is None:
                    loss_names = list(values)
                    if new_log:
                        writer.writerow(["step", "seconds", "lr", *loss_names])
                seconds = elapsed_before + time.perf_counter() - t0
                writer.writerow([step + 1, f"{seconds:.1f}", f"{lr:.3e}", *(f"{values[k]:.5f}" for k in loss_names)])
                for k, v in values.items():
                    smooth[k] = v if k not in smooth else 0.95 * smooth[k] + 0.05 * v
                bar.set_postfix(loss=f"{smooth['loss']:.3f}", lr=f"{lr:.1e}")
                bar.update(1)
                if (step + 1) % cfg.checkpoint_every == 0:
                    log_file.flush()
                    save(step + 1, seconds)
            else:
                step = cfg.steps
    finally:
        log_file.close()
    seconds = elapsed_before + time.perf_counter() - t0
    save(step, seconds)
    model.eval()
    bias_report = None
    if cfg.bias_drives and cfg.kind == "deeplab":
        held_out = load_samples(cfg.bias_drives, progress=progress)
        bias_report = calibrate_class_bias(model, held_out, taxonomy, input_hw=tuple(cfg.export_hw),
                                           resize=cfg.bias_resize, progress=progress)
    weights = out / f"{cfg.arch}.pt"
    torch.save(model.state_dict(), str(weights))
    report = {"kind": cfg.kind, "arch": cfg.arch, "steps": step, "train_seconds": round(seconds, 1),
              "frames": len(samples), "drives": [str(d) for d in cfg.drives],
              "final_loss": {k: round(v, 4) for k, v in smooth.items()}, "config": asdict(cfg),
              "torch_threads": torch.get_num_threads(), "weights": str(weights), "class_bias": bias_report}
    (out / "train_report.json").write_text(json.dumps(report, indent=1))
    return report


def logit_bias(model):
    """The bias of the layer whose output is added last into DeepLab's per-class logits: the
    lite model's stride-2 refinement, or torchvision's classifier (a constant added there
    reaches the output unchanged through the bilinear upsampling)."""
    for name in ("refine2_logits", "classifier"):
        layer = getattr(model, name, None)
        if layer is not None:
            last = layer[-1] if hasattr(layer, "__getitem__") else layer
            if getattr(last, "bias", None) is not None:
                return last.bias
    raise ConfigError("no final classifier bias found in this DeepLab", field="arch")


def calibrate_class_bias(model, samples: Sequence[Sample], taxonomy: Taxonomy, *, input_hw: tuple[int, int],
                         resize: str = "letterbox", row_stride: int = 2, rounds: int = 3,
                         grid: Sequence[float] = (-1.5, -1.0, -0.6, -0.3, -0.15, 0.15, 0.3, 0.6, 1.0),
                         progress: bool = True) -> dict[str, Any]:
    """Per-class offsets added to DeepLab's logits, chosen to maximise mIoU on held-out frames
    (coordinate ascent over the classes). Class-balanced training (sqrt median-frequency
    weights) buys recall of thin classes with false positives (poles predicted over the
    building behind them); the offsets move each class's decision boundary back to where IoU
    is best. Frames are resized as the pipeline will (``resize``: its engines.resize mode); the
    ground truth follows with nearest resampling, padding ignored; every ``row_stride``-th row
    is scored. The offsets are added to the model's final bias in place. Returns them with
    mIoU before and after."""
    import torch
    from tqdm import tqdm

    n = taxonomy.num_classes
    logits, truth = [], []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for smp in tqdm(samples, desc="class bias: logits", unit="frame", disable=not progress, leave=False):
            img, t = resize_to_input(smp.image, input_hw, mode=resize)
            nh, nw = t.content_hw
            x = normalise(to_tensor_rgb01([img]))
            out = model(x)["out"][0, :, t.pad_y:t.pad_y + nh:row_stride, t.pad_x:t.pad_x + nw]
            gt = resize_labels(smp.semantic, (nh, nw))[::row_stride]
            keep = torch.from_numpy((gt < n).reshape(-1))
            logits.append(out.reshape(n, -1)[:, keep].T.to(torch.float16))
            truth.append(torch.from_numpy(gt.reshape(-1)[keep.numpy()].astype(np.int64)))
    L, y = torch.cat(logits).float(), torch.cat(truth)
    del logits

    def miou_of(pred) -> float:
        conf = torch.bincount(y * n + pred, minlength=n * n).reshape(n, n).double()
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        present = union > 0
        return float((tp[present] / union[present]).mean())

    bias = np.zeros(n)
    start = best = miou_of(L.argmax(1))
    for _ in range(rounds):
        improved = False
        for c in range(n):
            # moving class c's offset only changes pixels between c and the best other class
            Lb = L + torch.from_numpy(bias.astype(np.float32))
            lc = Lb[:, c].clone()
            Lb[:, c] = -torch.inf
            other_val, other_arg = Lb.max(1)
            del Lb
            best_d = 0.0
            for d in grid:
                m = miou_of(torch.where(lc + d > other_val, c, other_arg))
                if m > best + 1e-5:
                    best, best_d = m, d
            if best_d:
                bias[c] += best_d
                improved = True
        if not improved:
            break
    bias -= bias.mean()                       # only differences matter
    with torch.no_grad():
        logit_bias(model).add_(torch.from_numpy(bias.astype(np.float32)))
    model.train(was_training)
    log.info("class logit offsets (mIoU on %d held-out frames %.4f -> %.4f): %s", len(samples), start, best,
             ", ".join(f"{name} {b:+.2f}" for name, b in zip(taxonomy.names, bias)))
    return {"offsets": {name: round(float(b), 3) for name, b in zip(taxonomy.names, bias)},
            "frames": len(samples), "resize": resize, "miou_before": round(start, 4), "miou_after": round(best, 4)}


def init_from(model, weights: str | Path) -> list[str]:
    """Load a state dict (or a training checkpoint) into ``model`` to fine-tune it. Layers the
    weights lack keep their initialisation (an added layer, e.g. DeepLab's zero-initialised
    stride-2 refinement); a weight of another shape, or one the model has no place for, is
    an error naming the key. Returns the keys left at their initialisation."""
    import torch

    path = Path(weights)
    if not path.is_file():
        raise ConfigError("initial weights not found", path=path, field="init")
    state = torch.load(str(path), map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "model" in state and "step" in state:
        state = state["model"]                                    # a last.pt checkpoint
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise ConfigError(f"the weights hold {key!r}, which this architecture does not have", path=path,
                              field="init")
        if tuple(own[key].shape) != tuple(value.shape):
            raise ConfigError(f"{key!r} is {tuple(value.shape)} in the weights, {tuple(own[key].shape)} in the model",
                              path=path, field="init")
    missing = model.load_state_dict(state, strict=False).missing_keys
    log.info("initialised from %s; %d tensors kept their initialisation: %s", path, len(missing),
             ", ".join(missing) or "none")
    return list(missing)


def export_trained(arch: str, weights: str | Path, out_path: str | Path, *, input_hw: tuple[int, int] = (384, 1248),
                   verify_frames: Sequence[np.ndarray] | None = None, **spec_overrides: Any):
    """Export a trained state dict to a contract ONNX (engines.export.export_onnx)."""
    from engines.export import export_onnx
    from engines.models import default_spec

    spec = default_spec(arch, input_hw=tuple(input_hw), checkpoint=Path(weights), **spec_overrides)
    return export_onnx(spec, out_path, verify_frames=verify_frames)
