"""segfuse's own small architectures, for the default models trained on synthetic drives.

Both are built from torchvision parts on a MobileNetV3-Small body (0.93 M parameters),
small enough to train on a 2-core CPU in about an hour and to ship in the repository:

``deeplabv3plus_mobilenet_v3_small``
    DeepLabV3+ (Chen et al. 2018): the body with its last stage dilated (output stride 16),
    torchvision's ASPP (rates 6, 12, 18 and image pooling) over a 96-channel projection,
    and a decoder that adds the stride-8 and stride-4 features back, then a light stride-2
    refinement (depthwise-separable, over the first stride-2 features) that adds a residual
    to the stride-4 logits, so thin structures (lane paint, poles, distant pedestrians: a
    pole is 5 px wide at the median) keep their width. The refinement's last convolution
    starts at zero, so weights trained without it load (``strict=False``) and behave as
    before until fine-tuned. ``forward(x)["out"]``: logits at the input size, as
    torchvision's segmentation models return them, so the export wraps it unchanged.

``maskrcnn_mobilenet_v3_small_fpn``
    torchvision's MaskRCNN with the body's stride-8, 16 and 32 stages in a 64-channel FPN
    (+ max-pooled stride 64), two anchor sizes x three ratios per level, and slimmed heads
    (box head 2x256 fully connected, mask head 4x64 convolutions). Same RPN, RoIAlign,
    losses and post-processing as torchvision's Mask R-CNN; the static-shape export
    (engines/graphs.py) wraps it like the ResNet-50 one.

torch and torchvision are imported inside the builders.
"""
from __future__ import annotations

DEEPLAB_LITE = "deeplabv3plus_mobilenet_v3_small"
MASKRCNN_LITE = "maskrcnn_mobilenet_v3_small_fpn"


def build_deeplab_lite(num_classes: int, *, reduce_channels: int = 96, aspp_channels: int = 64,
                       decoder8_channels: int = 48, decoder4_channels: int = 32, refine2_channels: int = 24):
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torchvision.models import mobilenet_v3_small
    from torchvision.models.segmentation.deeplabv3 import ASPP

    def conv_bn(cin: int, cout: int, k: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))

    class DeepLabV3PlusLite(nn.Module):
        # indices into mobilenet_v3_small(dilated=True).features
        LOW2, LOW4, LOW8, HIGH = 0, 1, 3, 12  # stride 2 (16 ch), 4 (16 ch), 8 (24 ch), 16 (576 ch)

        def __init__(self) -> None:
            super().__init__()
            self.backbone = mobilenet_v3_small(weights=None, dilated=True).features[:self.HIGH + 1]
            # ASPP over a 1x1 projection of the 576 channels (a third of the cost of ASPP on all 576)
            self.reduce = conv_bn(576, reduce_channels, 1)
            self.aspp = ASPP(reduce_channels, [6, 12, 18], out_channels=aspp_channels)
            self.skip8 = conv_bn(24, 32, 1)
            self.fuse8 = conv_bn(aspp_channels + 32, decoder8_channels, 3)
            self.skip4 = conv_bn(16, 16, 1)
            self.fuse4 = nn.Sequential(conv_bn(decoder8_channels + 16, decoder4_channels, 3),
                                       conv_bn(decoder4_channels, decoder4_channels, 3))
            self.classifier = nn.Conv2d(decoder4_channels, num_classes, 1)
            # stride-2 refinement: residual logits from the stride-4 decoder features and the
            # first stride-2 features, depthwise-separable to stay cheap at 192x624
            self.squeeze4 = conv_bn(decoder4_channels, 16, 1)
            cin = 16 + 16
            self.refine2 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                conv_bn(cin, refine2_channels, 1))
            self.refine2_logits = nn.Conv2d(refine2_channels, num_classes, 1)
            nn.init.zeros_(self.refine2_logits.weight)
            nn.init.zeros_(self.refine2_logits.bias)

        def forward(self, x):
            size = x.shape[-2:]
            feats = {}
            for i, layer in enumerate(self.backbone):
                x = layer(x)
                if i in (self.LOW2, self.LOW4, self.LOW8):
                    feats[i] = x
            y = self.aspp(self.reduce(x))
            low8 = feats[self.LOW8]
            y = F.interpolate(y, size=low8.shape[-2:], mode="bilinear", align_corners=False)
            y = self.fuse8(torch.cat([y, self.skip8(low8)], 1))
            low4 = feats[self.LOW4]
            y = F.interpolate(y, size=low4.shape[-2:], mode="bilinear", align_corners=False)
            y = self.fuse4(torch.cat([y, self.skip4(low4)], 1))
            low2 = feats[self.LOW2]
            logits = F.interpolate(self.classifier(y), size=low2.shape[-2:], mode="bilinear", align_corners=False)
            y = F.interpolate(self.squeeze4(y), size=low2.shape[-2:], mode="bilinear", align_corners=False)
            logits = logits + self.refine2_logits(self.refine2(torch.cat([y, low2], 1)))
            return {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}

    return DeepLabV3PlusLite().eval()


def build_maskrcnn_lite(num_classes: int, *, fpn_channels: int = 64, representation: int = 256,
                        mask_channels: int = 64):
    from torchvision.models import mobilenet_v3_small
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    body = mobilenet_v3_small(weights=None).features
    backbone = BackboneWithFPN(body, return_layers={"3": "0", "8": "1", "12": "2"},
                               in_channels_list=[24, 48, 576], out_channels=fpn_channels,
                               extra_blocks=LastLevelMaxPool())
    anchor_sizes = ((16, 24), (32, 64), (96, 160), (256, 384))        # strides 8, 16, 32, 64
    aspect_ratios = ((0.5, 1.0, 2.0),) * len(anchor_sizes)
    anchors = AnchorGenerator(anchor_sizes, aspect_ratios)
    names = ["0", "1", "2"]
    box_pool = MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2)
    mask_pool = MultiScaleRoIAlign(featmap_names=names, output_size=14, sampling_ratio=2)
    model = MaskRCNN(
        backbone, num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(fpn_channels, [mask_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
        # training samples: fewer RoIs per image than torchvision's 512 (few objects per frame)
        box_batch_size_per_image=128, rpn_batch_size_per_image=256,
    )
    return model.eval()
