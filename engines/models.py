"""Model builders (torchvision), torchvision-format checkpoint loading and class maps.

Models are built with ``weights=None, weights_backbone=None``: nothing is downloaded.
Trained weights come from a checkpoint a user already has (COCO, VOC, Cityscapes
fine-tunes), and a class map in the model config says which of its labels become
which taxonomy class. torch/torchvision are imported inside the functions.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Taxonomy, check_unknown_keys, get_key, load_taxonomy, load_yaml
from pipeline.errors import ConfigError, EngineError

DEEPLAB_ARCHS = ("deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101",
                 "deeplabv3plus_mobilenet_v3_small",
                 # mmsegmentation's key layout (engines/mmseg.py): Cityscapes checkpoints from mmseg
                 "mmseg_deeplabv3_r50_d8", "mmseg_deeplabv3plus_r50_d8", "mmseg_deeplabv3_r101_d8",
                 "mmseg_deeplabv3plus_r101_d8")
MASKRCNN_ARCHS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "maskrcnn_mobilenet_v3_large_fpn",
                  "maskrcnn_mobilenet_v3_small_fpn")
ARCHS = DEEPLAB_ARCHS + MASKRCNN_ARCHS
DEFAULT_INPUT_HW = (512, 1024)


def model_kind(arch: str) -> str:
    if arch in DEEPLAB_ARCHS:
        return "deeplab"
    if arch in MASKRCNN_ARCHS:
        return "maskrcnn"
    raise ConfigError(f"unknown architecture '{arch}' (known: {', '.join(ARCHS)})", field="arch")


@dataclass
class ModelSpec:
    """What to build and export: architecture, classes, checkpoint, the static input size and,
    for Mask R-CNN, the sizes of the static-shape detection stages."""

    arch: str
    num_classes: int
    class_map: dict[int, str]                  # model label -> taxonomy class name
    input_hw: tuple[int, int] = DEFAULT_INPUT_HW
    checkpoint: Path | None = None
    # Mask R-CNN only (defaults are torchvision's test-time settings)
    num_detections: int = 100                  # K, fixed number of output rows
    rpn_pre_nms_top_n: int = 1000              # per FPN level
    rpn_post_nms_top_n: int = 1000             # proposals fed to the box head
    box_candidates: int = 1000                 # class-box candidates kept before the final NMS
    box_score_thresh: float = 0.05
    nms_iterations: int = 5                    # fixed-point iterations of the static NMS (odd: never keeps
                                               # a box greedy NMS would drop)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return model_kind(self.arch)


def default_class_map(kind: str, taxonomy: Taxonomy) -> dict[int, str]:
    """DeepLab: every taxonomy class, label = taxonomy id. Mask R-CNN: labels 1..N are the
    taxonomy's thing classes in taxonomy order (0 is background)."""
    if kind == "deeplab":
        return {i: n for i, n in enumerate(taxonomy.names)}
    return {i + 1: n for i, n in enumerate(taxonomy.thing_names)}


def default_spec(arch: str, *, taxonomy: Taxonomy | None = None, **overrides: Any) -> ModelSpec:
    taxonomy = taxonomy or load_taxonomy()
    kind = model_kind(arch)
    cmap = default_class_map(kind, taxonomy)
    num_classes = taxonomy.num_classes if kind == "deeplab" else len(taxonomy.thing_ids) + 1
    spec = ModelSpec(arch=arch, num_classes=num_classes, class_map=cmap)
    for key, value in overrides.items():
        if value is not None:
            setattr(spec, key, value)
    validate_class_map(spec, taxonomy)
    return spec


def validate_class_map(spec: ModelSpec, taxonomy: Taxonomy, *, path: str | Path | None = None) -> None:
    kind = spec.kind
    lo = 0 if kind == "deeplab" else 1
    if not spec.class_map:
        raise ConfigError("class_map is empty: no model class would reach the pipeline", path=path, field="class_map")
    for label, name in spec.class_map.items():
        if not lo <= label < spec.num_classes:
            raise ConfigError(f"model label {label} is outside {lo}..{spec.num_classes - 1}"
                              + (" (0 is Mask R-CNN's background)" if kind == "maskrcnn" else ""),
                              path=path, field=f"class_map.{label}")
        cid = taxonomy.id(name)
        if kind == "maskrcnn" and not taxonomy.things[cid]:
            raise ConfigError(f"'{name}' is not a thing class; Mask R-CNN labels must map to one of "
                              f"{', '.join(taxonomy.thing_names)}", path=path, field=f"class_map.{label}")


def load_model_spec(path: str | Path, *, taxonomy: Taxonomy | None = None) -> ModelSpec:
    """Read a model config (configs/engines/*.yaml, section ``model``, or the whole file)."""
    taxonomy = taxonomy or load_taxonomy()
    data = load_yaml(path)
    prefix = ""
    if "model" in data:
        data = get_key(data, "model", dict, path=path)
        prefix = "model."
    allowed = {"arch", "num_classes", "class_map", "input_size", "checkpoint", "num_detections",
               "rpn_pre_nms_top_n", "rpn_post_nms_top_n", "box_candidates", "box_score_thresh", "nms_iterations"}
    check_unknown_keys(data, allowed, path=path, prefix=prefix)
    arch = get_key(data, "arch", str, path=path, prefix=prefix)
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture '{arch}' (known: {', '.join(ARCHS)})", path=path, field=prefix + "arch")
    spec = default_spec(arch, taxonomy=taxonomy)
    if "num_classes" in data:
        spec.num_classes = get_key(data, "num_classes", int, path=path, prefix=prefix)
    if "class_map" in data:
        raw = get_key(data, "class_map", dict, path=path, prefix=prefix)
        cmap: dict[int, str] = {}
        for k, v in raw.items():
            try:
                label = int(k)
            except (TypeError, ValueError):
                raise ConfigError("class_map keys are model label numbers", path=path,
                                  field=f"{prefix}class_map.{k}") from None
            if not isinstance(v, str):
                raise ConfigError("class_map values are taxonomy class names", path=path,
                                  field=f"{prefix}class_map.{k}")
            cmap[label] = v
        spec.class_map = cmap
    elif "num_classes" in data and spec.num_classes != default_spec(arch, taxonomy=taxonomy).num_classes:
        raise ConfigError("num_classes differs from the taxonomy's: give a class_map saying which model label "
                          "is which taxonomy class", path=path, field=prefix + "class_map")
    if "input_size" in data:
        spec.input_hw = parse_hw(get_key(data, "input_size", (list, str), path=path, prefix=prefix),
                                 path=path, field=prefix + "input_size")
    if "checkpoint" in data:
        ckpt = Path(get_key(data, "checkpoint", str, path=path, prefix=prefix)).expanduser()
        if not ckpt.is_absolute():
            ckpt = (Path(path).parent / ckpt).resolve()
        spec.checkpoint = ckpt
    for key in ("num_detections", "rpn_pre_nms_top_n", "rpn_post_nms_top_n", "box_candidates", "nms_iterations"):
        if key in data:
            value = get_key(data, key, int, path=path, prefix=prefix)
            if value < 1:
                raise ConfigError("must be at least 1", path=path, field=prefix + key)
            setattr(spec, key, value)
    if "box_score_thresh" in data:
        spec.box_score_thresh = get_key(data, "box_score_thresh", float, path=path, prefix=prefix)
    validate_class_map(spec, taxonomy, path=path)
    check_input_hw(spec, path=path)
    return spec


def parse_hw(value: Any, *, path: str | Path | None = None, field: str = "input_size") -> tuple[int, int]:
    """'512x1024', [512, 1024] or (512, 1024) -> (H, W)."""
    try:
        if isinstance(value, str):
            parts = value.lower().replace(",", "x").split("x")
        else:
            parts = list(value)
        h, w = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"expected HxW (e.g. 512x1024), got {value!r}", path=path, field=field) from None
    if h < 32 or w < 32:
        raise ConfigError(f"input size {h}x{w} is too small (at least 32x32)", path=path, field=field)
    return h, w


def check_input_hw(spec: ModelSpec, *, path: str | Path | None = None) -> None:
    h, w = spec.input_hw
    if spec.kind == "maskrcnn" and (h % 32 or w % 32):
        raise ConfigError(f"Mask R-CNN input size must be a multiple of 32 (the FPN strides), got {h}x{w}",
                          path=path, field="input_size")
    if spec.kind == "deeplab" and (h % 8 or w % 8):
        raise ConfigError(f"DeepLab input size must be a multiple of 8 (its output stride), got {h}x{w}",
                          path=path, field="input_size")


def build_model(spec: ModelSpec):
    """The torchvision model for ``spec`` (random init, eval mode), with the checkpoint loaded if given."""
    model = build_torchvision_model(spec.arch, spec.num_classes)
    if spec.checkpoint is not None:
        load_checkpoint(model, spec.checkpoint)
    return model.eval()


def build_torchvision_model(arch: str, num_classes: int):
    from torchvision.models import detection, segmentation

    from engines import lite

    if arch == lite.DEEPLAB_LITE:
        return lite.build_deeplab_lite(num_classes)
    if arch == lite.MASKRCNN_LITE:
        return lite.build_maskrcnn_lite(num_classes)
    if arch.startswith("mmseg_"):
        from engines.mmseg import build_mmseg_deeplab

        return build_mmseg_deeplab(arch, num_classes)
    if arch in DEEPLAB_ARCHS:
        builder = getattr(segmentation, arch)
        return builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False).eval()
    if arch in ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"):
        builder = getattr(detection, arch)
        return builder(weights=None, weights_backbone=None, num_classes=num_classes).eval()
    if arch == "maskrcnn_mobilenet_v3_large_fpn":
        # Built from torchvision parts: MobileNetV3-Large with an FPN on its stride-8, 16 and 32
        # stages (+ a max-pooled stride-64 level), two anchor sizes x three ratios per level,
        # and torchvision's Mask R-CNN RPN, box and mask heads. (torchvision's own
        # fasterrcnn_mobilenet_v3_large_fpn uses only stride 32, too coarse for masks.)
        from torch import nn
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.backbone_utils import mobilenet_backbone

        backbone = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True,
                                      trainable_layers=6, norm_layer=nn.BatchNorm2d, returned_layers=[2, 3, 5])
        anchor_sizes = ((32, 48), (64, 96), (128, 192), (256, 512))
        aspect_ratios = ((0.5, 1.0, 2.0),) * len(anchor_sizes)
        return detection.MaskRCNN(backbone, num_classes=num_classes,
                                  rpn_anchor_generator=AnchorGenerator(anchor_sizes, aspect_ratios)).eval()
    raise ConfigError(f"unknown architecture '{arch}' (known: {', '.join(ARCHS)})", field="arch")


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict", "net"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if hasattr(obj, "state_dict") and not isinstance(obj, dict):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not obj:
        raise EngineError("no state dict found (expected a torchvision state_dict, or one under "
                          "'model' / 'state_dict')", path=path, field="checkpoint")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise EngineError("checkpoint not found", path=path, field="checkpoint")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EngineError(f"cannot read the checkpoint: {exc}", path=path, field="checkpoint") from exc
    return _unwrap_state_dict(obj, path)


def checkpoint_num_classes(state: dict[str, Any], arch: str) -> int | None:
    """Number of classes a torchvision checkpoint was trained with (None if it cannot tell)."""
    keys = (("classifier.4.weight", "classifier.weight", "decode_head.conv_seg.weight") if model_kind(arch) == "deeplab"
            else ("roi_heads.box_predictor.cls_score.weight",))
    tensor = next((state[k] for k in keys if k in state), None)
    return int(tensor.shape[0]) if tensor is not None else None


def load_checkpoint(model, path: str | Path) -> None:
    """Load a torchvision-format checkpoint strictly; the only keys allowed to be missing are
    BatchNorm's ``num_batches_tracked`` (absent from FrozenBatchNorm checkpoints, unused in eval).
    The auxiliary DeepLab head of a checkpoint (torchvision ``aux_classifier.``, mmseg
    ``auxiliary_head.``) is dropped (not exported)."""
    path = Path(path)
    state = read_checkpoint(path)
    own = model.state_dict()
    state = {k: v for k, v in state.items()
             if not k.startswith(("aux_classifier.", "auxiliary_head.")) or k in own}
    mismatched = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        hint = ""
        if any("classifier.4" in m or "box_predictor" in m or "mask_predictor" in m for m in mismatched):
            hint = " (set num_classes to the checkpoint's and map its labels with class_map)"
        raise EngineError(f"checkpoint does not fit the model{hint}: {'; '.join(mismatched[:4])}",
                          path=path, field="checkpoint")
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:3])}")
        raise EngineError("checkpoint is not a state dict of this architecture: " + "; ".join(parts),
                          path=path, field="checkpoint")
    model.load_state_dict(state, strict=False)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def random_model(spec: ModelSpec, *, seed: int = 0, frames: list | None = None):
    """A random-weight model whose outputs are not degenerate, for tests and benchmarks.

    torchvision's initialisation with untouched BatchNorm statistics gives near-zero
    features (every detection with the same score, one class everywhere). Here the
    BatchNorm statistics are adapted to structured frames and the prediction layers are
    redrawn at unit gain, so scores, classes and boxes vary like a trained model's do.
    """
    import torch
    from torch import nn

    from engines.frames import procedural_frames
    from pipeline.preprocess import preprocess_frames

    torch.manual_seed(seed)
    model = build_torchvision_model(spec.arch, spec.num_classes)
    frames = frames if frames is not None else procedural_frames(6, (375, 1242), seed=seed)
    images = torch.from_numpy(preprocess_frames(frames, spec.input_hw).images)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    x = (images - mean) / std
    body = model.backbone
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None                   # cumulative average over the frames
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        body.train()
        for i in range(len(x)):
            body(x[i:i + 1].repeat(2, 1, 1, 1) + 0.1 * torch.randn(2, *x.shape[1:], generator=g))
        body.eval()
        if spec.kind == "deeplab":
            model.classifier.train()
            model.classifier(body(x)["out"])
            model.classifier.eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):       # a few frames leave some channels with ~0 variance:
                floor = 0.05 * float(m.running_var.mean())   # floor it, or unseen images blow up
                m.running_var.clamp_(min=max(floor, 1e-3))
        if spec.kind == "deeplab":
            targets = {"classifier": (model.classifier[-1], 2.0, 0.5)}
        else:
            targets = {"rpn_cls": (model.rpn.head.cls_logits, 1.5, 0.5),
                       "rpn_box": (model.rpn.head.bbox_pred, 0.3, 0.05),
                       "cls": (model.roi_heads.box_predictor.cls_score, 1.5, 0.5),
                       "box": (model.roi_heads.box_predictor.bbox_pred, 0.3, 0.05),
                       "mask": (model.roi_heads.mask_predictor.mask_fcn_logits, 2.0, 0.5)}
        # one pass to measure each prediction layer's input, then weights for a target output scale
        mean_sq: dict[str, float] = {}
        hooks = [layer.register_forward_pre_hook(
            lambda mod, inp, name=name: mean_sq.__setitem__(name, max(mean_sq.get(name, 0.0),
                                                                       float(inp[0].pow(2).mean()))))
            for name, (layer, _, _) in targets.items()]
        try:
            if spec.kind == "deeplab":
                model(x)
            else:
                h, w = spec.input_hw
                model.transform.min_size, model.transform.max_size = (min(h, w),), max(h, w)
                model([img / 255.0 for img in images])
        finally:
            for hk in hooks:
                hk.remove()
        for name, (layer, out_std, bias_std) in targets.items():
            fan_in = layer.weight[0].numel()
            w_std = out_std / max(fan_in * mean_sq.get(name, 1.0), 1e-12) ** 0.5
            layer.weight.normal_(0.0, w_std, generator=g)
            layer.bias.normal_(0.0, bias_std, generator=g)
    return model.eval()
