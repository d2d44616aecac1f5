"""A static-shape Mask R-CNN for export: the torchvision model's weights, none of its
data-dependent control flow.

TensorRT cannot build the graph torchvision's Mask R-CNN exports to (If/Loop nodes,
NonZero and NMS with data-dependent output shapes). This module re-expresses the
inference path with fixed-size tensors only, the approach of the TensorRT detectron2
sample, but without TensorRT-only plugins, so the same ONNX runs on ONNX Runtime:

- no GeneralizedRCNNTransform: a fixed input size (multiple of 32), normalisation in the
  graph, and the anchors are a constant computed for that size;
- RPN: per-level top-k, decode, clip; small and low-score boxes are masked, not removed;
- NMS: a fixed-point "matrix" NMS on the score-sorted candidates (IoU matrix, then
  ``keep = valid & no kept higher-scoring box overlaps``, iterated a fixed number of
  times). One iteration is Fast NMS; each further iteration moves towards greedy NMS,
  alternating between a subset (odd counts) and a superset (even counts) of greedy
  NMS' result, and equal to it once the count reaches the longest suppression chain;
- multi-scale RoIAlign: every FPN level is edge-padded to the largest level's size and
  stacked, each box is scaled to its level, and one RoiAlign runs with the level as the
  batch index (exactly torchvision's result: boxes are clipped to the image, so no sample
  falls in the padding);
- outputs: the top K detections by score, padded with zero scores, and the 28x28 mask
  probabilities of each detection's class, not pasted into the image.

Box arithmetic is done in coordinates normalised by the input size, so FP16 engines do
not overflow on areas (IoU is invariant to per-axis scaling).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pairwise_iou(boxes: Tensor) -> Tensor:
    """IoU matrix of (N, 4) x1y1x2y2 boxes."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    ix1 = torch.maximum(x1[:, None], x1[None, :])
    iy1 = torch.maximum(y1[:, None], y1[None, :])
    ix2 = torch.minimum(x2[:, None], x2[None, :])
    iy2 = torch.minimum(y2[:, None], y2[None, :])
    inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
    union = area[:, None] + area[None, :] - inter
    return inter / union.clamp(min=1e-12)


def static_nms(boxes: Tensor, valid: Tensor, iou_threshold: float, iterations: int,
               groups: Tensor | None = None) -> Tensor:
    """Fixed-shape NMS over candidates already sorted by descending score.

    Returns a float keep mask (N,). With ``groups`` boxes only suppress boxes of the same
    group (class-wise NMS, like torchvision's batched_nms).
    """
    n = boxes.shape[0]
    over = pairwise_iou(boxes) > iou_threshold
    idx = torch.arange(n, device=boxes.device)
    over = over & (idx[:, None] < idx[None, :])           # row i (higher score) suppresses column j
    if groups is not None:
        over = over & (groups[:, None] == groups[None, :])
    sup = over.to(boxes.dtype)
    valid_f = valid.to(boxes.dtype)
    keep = valid_f
    for _ in range(iterations):
        hits = torch.matmul(keep[None, :], sup)[0]         # kept higher-scoring boxes overlapping each box
        keep = valid_f * (hits < 0.5).to(boxes.dtype)
    return keep


def static_nms_converged(boxes: Tensor, valid: Tensor, iou_threshold: float, iterations: int,
                         groups: Tensor | None = None) -> bool:
    """Whether ``iterations`` reach the fixed point (i.e. equal greedy NMS) on this input (eager only)."""
    a = static_nms(boxes, valid, iou_threshold, iterations, groups)
    b = static_nms(boxes, valid, iou_threshold, iterations + 1, groups)
    return bool(torch.equal(a, b))


def decode_boxes(deltas: Tensor, anchors: Tensor, weights: tuple[float, float, float, float],
                 clip: float = math.log(1000.0 / 16)) -> Tensor:
    """torchvision BoxCoder.decode_single on (N, 4) deltas and (N, 4) reference boxes."""
    wx, wy, ww, wh = weights
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    dx = deltas[:, 0] / wx
    dy = deltas[:, 1] / wy
    dw = torch.clamp(deltas[:, 2] / ww, max=clip)
    dh = torch.clamp(deltas[:, 3] / wh, max=clip)
    pcx = dx * widths + ctr_x
    pcy = dy * heights + ctr_y
    pw = torch.exp(dw) * widths
    ph = torch.exp(dh) * heights
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=1)


class StaticMultiScaleRoIAlign(nn.Module):
    """torchvision MultiScaleRoIAlign for one image of a fixed size, without data-dependent indexing."""

    def __init__(self, pooler, feature_hw: dict[str, tuple[int, int]], image_hw: tuple[int, int]):
        super().__init__()
        self.names = [n for n in pooler.featmap_names if n in feature_hw]
        if not self.names:
            raise ValueError("none of the pooler's feature maps is produced by the backbone")
        self.output_size = tuple(pooler.output_size)
        self.sampling_ratio = int(pooler.sampling_ratio)
        self.canonical_scale = getattr(pooler, "canonical_scale", 224)
        self.canonical_level = getattr(pooler, "canonical_level", 4)
        scales = []
        for n in self.names:
            approx = feature_hw[n][0] / image_hw[0]
            scales.append(2.0 ** round(math.log2(approx)))
        self.scales = scales
        self.k_min = int(-math.log2(scales[0]))
        self.k_max = int(-math.log2(scales[-1]))
        self.max_hw = feature_hw[self.names[0]]
        for i, n in enumerate(self.names):
            h, w = feature_hw[n]
            self.register_buffer(f"rows{i}", torch.clamp(torch.arange(self.max_hw[0]), max=h - 1), persistent=False)
            self.register_buffer(f"cols{i}", torch.clamp(torch.arange(self.max_hw[1]), max=w - 1), persistent=False)
        self.register_buffer("level_scales", torch.tensor(scales, dtype=torch.float32), persistent=False)

    def forward(self, features: dict[str, Tensor], boxes: Tensor, image_hw: tuple[int, int]) -> Tensor:
        from torchvision.ops import roi_align

        feats = [features[n] for n in self.names]
        if len(feats) == 1:
            rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
            return roi_align(feats[0], rois, self.output_size, spatial_scale=self.scales[0],
                             sampling_ratio=self.sampling_ratio, aligned=False)
        padded = []
        for i, f in enumerate(feats):
            rows, cols = getattr(self, f"rows{i}"), getattr(self, f"cols{i}")
            if f.shape[-2] != self.max_hw[0]:
                f = torch.index_select(f, 2, rows)
            if f.shape[-1] != self.max_hw[1]:
                f = torch.index_select(f, 3, cols)
            padded.append(f)
        stacked = torch.cat(padded, dim=0)                        # (L, C, Hmax, Wmax)
        # LevelMapper of the FPN paper, on sqrt(w) * sqrt(h) (no overflow in FP16)
        w = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
        h = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
        s = torch.sqrt(w) * torch.sqrt(h)
        lvl = torch.floor(self.canonical_level + torch.log2(s / self.canonical_scale) + 1e-6)
        lvl = torch.clamp(lvl, min=self.k_min, max=self.k_max) - self.k_min
        lvl_i = lvl.to(torch.int64)
        scale = torch.index_select(self.level_scales, 0, lvl_i)
        rois = torch.cat([lvl[:, None], boxes * scale[:, None]], dim=1)
        return roi_align(stacked, rois, self.output_size, spatial_scale=1.0,
                         sampling_ratio=self.sampling_ratio, aligned=False)


class StaticMaskRCNN(nn.Module):
    """Wraps a torchvision MaskRCNN (eval mode) for a fixed input size.

    ``forward(images)`` takes float32 [1, 3, H, W] RGB in 0..255 and returns
    (boxes [K,4], scores [K], labels [K] int32 taxonomy ids, masks [K,M,M] probabilities).
    ``label_lut[model_label]`` is the taxonomy id (-1: not in the class map; those classes
    have their scores zeroed, so they never take one of the K rows). Padding rows have
    score 0, box 0, mask 0 and label ``pad_label`` (the taxonomy's ignore id).
    """

    def __init__(self, model, input_hw: tuple[int, int], label_lut: list[int], *, pad_label: int = 255,
                 num_detections: int = 100,
                 rpn_pre_nms_top_n: int = 1000, rpn_post_nms_top_n: int = 1000, box_candidates: int = 1000,
                 box_score_thresh: float | None = None, nms_iterations: int = 5):
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        self.backbone = model.backbone
        self.rpn_head = model.rpn.head
        self.box_head = model.roi_heads.box_head
        self.box_predictor = model.roi_heads.box_predictor
        self.mask_head = model.roi_heads.mask_head
        self.mask_predictor = model.roi_heads.mask_predictor
        if self.mask_head is None or self.mask_predictor is None:
            raise ValueError("model has no mask branch")
        self.h, self.w = int(input_hw[0]), int(input_hw[1])
        self.pad_label = int(pad_label)
        self.nms_iterations = int(nms_iterations)
        self.rpn_nms_thresh = float(model.rpn.nms_thresh)
        self.rpn_min_size = float(model.rpn.min_size)
        self.rpn_score_thresh = float(model.rpn.score_thresh)
        self.box_nms_thresh = float(model.roi_heads.nms_thresh)
        self.box_score_thresh = float(model.roi_heads.score_thresh if box_score_thresh is None else box_score_thresh)
        self.box_weights = tuple(float(x) for x in model.roi_heads.box_coder.weights)
        self.rpn_weights = tuple(float(x) for x in model.rpn.box_coder.weights)
        self.bbox_clip = float(model.roi_heads.box_coder.bbox_xform_clip)
        self.rpn_clip = float(model.rpn.box_coder.bbox_xform_clip)
        num_classes = int(self.box_predictor.cls_score.out_features)
        self.num_classes = num_classes
        if len(label_lut) != num_classes:
            raise ValueError(f"label_lut has {len(label_lut)} entries, the model {num_classes} classes")

        tr = getattr(model, "transform", None)
        mean = torch.tensor(list(getattr(tr, "image_mean", IMAGENET_MEAN))).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(list(getattr(tr, "image_std", IMAGENET_STD))).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

        # Anchors and feature sizes for this input size, computed once.
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            dummy = torch.zeros(1, 3, self.h, self.w)
            feats = self.backbone(dummy)
            anchors = model.rpn.anchor_generator(ImageList(dummy, [(self.h, self.w)]), list(feats.values()))[0]
        self.backbone.train(was_training)
        per_loc = model.rpn.anchor_generator.num_anchors_per_location()
        counts = [int(f.shape[-2] * f.shape[-1] * a) for f, a in zip(feats.values(), per_loc)]
        self.level_counts = counts
        self.level_topk = [min(int(rpn_pre_nms_top_n), c) for c in counts]
        self.rpn_pre_nms_top_n = int(rpn_pre_nms_top_n)
        self.num_proposals = min(int(rpn_post_nms_top_n), sum(self.level_topk))
        norm = torch.tensor([self.w, self.h, self.w, self.h], dtype=torch.float32)
        self.register_buffer("anchors", anchors.float() / norm, persistent=False)   # normalised
        self.register_buffer("norm", norm, persistent=False)
        feature_hw = {k: (int(v.shape[-2]), int(v.shape[-1])) for k, v in feats.items()}
        self.box_pool = StaticMultiScaleRoIAlign(model.roi_heads.box_roi_pool, feature_hw, (self.h, self.w))
        self.mask_pool = StaticMultiScaleRoIAlign(model.roi_heads.mask_roi_pool, feature_hw, (self.h, self.w))
        self.num_candidates = min(int(box_candidates), self.num_proposals * (num_classes - 1))
        self.num_detections = int(num_detections)
        if self.num_detections > self.num_candidates:
            raise ValueError(f"num_detections {num_detections} exceeds the {self.num_candidates} candidates "
                             "this input size and these RPN settings give")
        lut = torch.tensor(label_lut, dtype=torch.int32)
        self.register_buffer("label_lut", lut, persistent=False)
        class_keep = (lut[1:] >= 0).float()                       # classes without a taxonomy id: scores zeroed
        self.register_buffer("class_keep", class_keep, persistent=False)
        # One column per candidate (proposal-major): which class each flattened score belongs to.
        self.register_buffer("cand_label", torch.arange(1, num_classes).repeat(self.num_proposals), persistent=False)
        self.register_buffer("cand_prop", torch.arange(self.num_proposals).repeat_interleave(num_classes - 1),
                             persistent=False)

    # -- stages ------------------------------------------------------------------------------
    def _clip01(self, boxes: Tensor) -> Tensor:
        return boxes.clamp(min=0.0, max=1.0)

    def _proposals(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        objectness, deltas = self.rpn_head(list(features.values()))
        boxes_all, scores_all = [], []
        start = 0
        for obj, dl, count, k in zip(objectness, deltas, self.level_counts, self.level_topk):
            a = obj.shape[1]
            obj = obj.permute(0, 2, 3, 1).reshape(-1)
            dl = dl.view(1, a, 4, dl.shape[-2], dl.shape[-1]).permute(0, 3, 4, 1, 2).reshape(-1, 4)
            top, idx = obj.topk(k)
            anchors = self.anchors[start:start + count].index_select(0, idx)
            start += count
            # decoding is per-axis linear in the reference box, so it commutes with normalisation
            boxes = self._clip01(decode_boxes(dl.index_select(0, idx), anchors, self.rpn_weights, self.rpn_clip))
            prob = torch.sigmoid(top)
            wpx = (boxes[:, 2] - boxes[:, 0]) * self.w
            hpx = (boxes[:, 3] - boxes[:, 1]) * self.h
            valid = (wpx >= self.rpn_min_size) & (hpx >= self.rpn_min_size) & (prob >= self.rpn_score_thresh)
            keep = static_nms(boxes, valid, self.rpn_nms_thresh, self.nms_iterations)
            scores_all.append(torch.where(keep > 0.5, prob, torch.full_like(prob, -1.0)))
            boxes_all.append(boxes)
        scores = torch.cat(scores_all)
        boxes = torch.cat(boxes_all)
        top, idx = scores.topk(self.num_proposals)
        return boxes.index_select(0, idx), top

    def candidates(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The final NMS' input: score-sorted class boxes (normalised), validity, labels, scores."""
        proposals, prop_scores = self._proposals(features)              # normalised, (P, 4)
        prop_valid = (prop_scores >= 0).to(proposals.dtype)

        box_feats = self.box_pool(features, proposals * self.norm, (self.h, self.w))
        class_logits, box_regression = self.box_predictor(self.box_head(box_feats))
        c = self.num_classes
        p = self.num_proposals
        scores = torch.softmax(class_logits, -1)[:, 1:] * self.class_keep[None, :] * prop_valid[:, None]
        scores = scores.reshape(-1)                                      # proposal-major (P*(C-1))
        # candidates: the best-scoring class boxes, decoded only for those
        cand_scores, cand = scores.topk(self.num_candidates)
        cand_prop = self.cand_prop.index_select(0, cand)
        cand_label = self.cand_label.index_select(0, cand)
        reg = box_regression.reshape(p * c, 4)
        reg = reg.index_select(0, cand_prop * c + cand_label)
        ref = proposals.index_select(0, cand_prop)
        boxes = self._clip01(decode_boxes(reg, ref, self.box_weights, self.bbox_clip))
        wpx = (boxes[:, 2] - boxes[:, 0]) * self.w
        hpx = (boxes[:, 3] - boxes[:, 1]) * self.h
        valid = (cand_scores > self.box_score_thresh) & (wpx >= 1e-2) & (hpx >= 1e-2)
        return boxes, valid, cand_label, cand_scores

    def forward(self, images: Tensor):
        x = (images - self.mean) / self.std
        features = self.backbone(x)
        boxes, valid, cand_label, cand_scores = self.candidates(features)
        keep = static_nms(boxes, valid, self.box_nms_thresh, self.nms_iterations, groups=cand_label)
        final = cand_scores * keep
        det_scores, det = final.topk(self.num_detections)
        det_valid = (det_scores > 0).to(boxes.dtype)
        det_boxes = boxes.index_select(0, det) * det_valid[:, None]
        det_label = cand_label.index_select(0, det)

        mask_feats = self.mask_pool(features, det_boxes * self.norm, (self.h, self.w))
        mask_logits = self.mask_predictor(self.mask_head(mask_feats))   # (K, C, M, M)
        m = mask_logits.shape[-1]
        index = det_label.view(-1, 1, 1, 1).expand(-1, 1, m, m)
        masks = torch.sigmoid(torch.gather(mask_logits, 1, index))[:, 0] * det_valid[:, None, None]
        valid_i = det_valid.to(torch.int32)
        labels = self.label_lut.index_select(0, det_label) * valid_i + self.pad_label * (1 - valid_i)
        return det_boxes * self.norm, det_scores, labels, masks


class DeepLabGraph(nn.Module):
    """A torchvision DeepLabV3 with the contract around it: float32 [B,3,H,W] RGB 0..255 in,
    ``class_ids`` int32 [B,H,W] taxonomy ids (argmax and class map in the graph) and, if
    ``with_scores``, ``scores`` float32 [B,H,W] (softmax probability of the chosen class) out."""

    def __init__(self, model, label_lut: list[int], with_scores: bool = True):
        super().__init__()
        self.model = model
        self.with_scores = bool(with_scores)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.identity = list(label_lut) == list(range(len(label_lut)))
        self.register_buffer("label_lut", torch.tensor(label_lut, dtype=torch.int32), persistent=False)

    def forward(self, images: Tensor):
        logits = self.model((images - self.mean) / self.std)["out"]
        if self.with_scores:
            score, idx = torch.softmax(logits, dim=1).max(dim=1)
        else:
            idx = logits.argmax(dim=1)
        if self.identity:
            ids = idx.to(torch.int32)
        else:
            ids = self.label_lut[idx]
        if self.with_scores:
            return ids, score
        return ids
