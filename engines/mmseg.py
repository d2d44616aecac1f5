"""MMSegmentation's DeepLabV3 and DeepLabV3+ (ResNetV1c-D8 backbone) in plain PyTorch, with
mmseg's module names, so that an mmseg Cityscapes checkpoint (``{"meta": ..., "state_dict": ...}``,
keys ``backbone.*``, ``decode_head.*``, ``auxiliary_head.*``) loads strictly and exports through
the same DeepLab graph as torchvision's. mmsegmentation itself (and mmcv) is not needed.

What is reproduced (mmseg 1.x configs ``deeplabv3_r50-d8`` / ``deeplabv3plus_r50-d8``, Cityscapes):
- ``ResNetV1c``: a deep stem of three 3x3 convolutions (``stem.0/1``, ``stem.3/4``, ``stem.6/7``),
  max pool, Bottleneck stages in the "pytorch" style (stride on the 3x3), strides (1, 2, 1, 1),
  dilations (1, 1, 2, 4) with ``contract_dilation`` (a dilated stage's first block at half the
  dilation), downsample = 1x1 conv + BN (``downsample.0/1``);
- ``ASPPHead`` (V3): ``image_pool.1`` (global pool + ConvModule), ``aspp_modules.{0..3}`` (1x1 and
  3x3 at dilations 12, 24, 36), ``bottleneck`` (3x3), ``conv_seg``;
- ``DepthwiseSeparableASPPHead`` (V3+): the dilated ASPP branches as depthwise-separable
  (``depthwise_conv``/``pointwise_conv``), ``c1_bottleneck`` (48 channels from stage 1),
  ``sep_bottleneck.{0,1}``, ``conv_seg``;
- every ConvModule is ``conv`` (no bias) + ``bn`` + ReLU; upsampling bilinear, align_corners=False;
  the auxiliary FCN head is dropped (not used at inference).
Inputs are normalised as mmseg's Cityscapes configs do (ImageNet mean/std on RGB 0..255), which
the DeepLab graph already does.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MMSEG_ARCHS = ("mmseg_deeplabv3_r50_d8", "mmseg_deeplabv3plus_r50_d8", "mmseg_deeplabv3_r101_d8",
               "mmseg_deeplabv3plus_r101_d8")
DEPTHS = {"r50": (3, 4, 6, 3), "r101": (3, 4, 23, 3)}


class ConvModule(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, *, padding: int = 0, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=padding, dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, *, padding: int = 0, dilation: int = 1):
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, k, padding=padding, dilation=dilation, groups=cin)
        self.pointwise_conv = ConvModule(cin, cout, 1)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetV1c(nn.Module):
    def __init__(self, depths: tuple[int, ...], strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for i, (n, s, d) in enumerate(zip(depths, strides, dilations)):
            planes = 64 * 2 ** i
            down = None
            if s != 1 or cin != planes * 4:
                down = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride=s, bias=False), nn.BatchNorm2d(planes * 4))
            first_d = d // 2 if d > 1 else d                  # contract_dilation
            blocks = [Bottleneck(cin, planes, s, first_d, down)]
            cin = planes * 4
            blocks += [Bottleneck(cin, planes, 1, d, None) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs


class ASPPHead(nn.Module):
    def __init__(self, num_classes: int, *, separable: bool, in_channels: int = 2048, channels: int = 512,
                 dilations=(1, 12, 24, 36), c1_in_channels: int = 256, c1_channels: int = 48):
        super().__init__()
        self.separable = separable
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(in_channels, channels, 1))
        mods = []
        for d in dilations:
            if d == 1:
                mods.append(ConvModule(in_channels, channels, 1))
            elif separable:
                mods.append(DepthwiseSeparableConvModule(in_channels, channels, 3, padding=d, dilation=d))
            else:
                mods.append(ConvModule(in_channels, channels, 3, padding=d, dilation=d))
        self.aspp_modules = nn.ModuleList(mods)
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3, padding=1)
        if separable:
            self.c1_bottleneck = ConvModule(c1_in_channels, c1_channels, 1)
            self.sep_bottleneck = nn.Sequential(
                DepthwiseSeparableConvModule(channels + c1_channels, channels, 3, padding=1),
                DepthwiseSeparableConvModule(channels, channels, 3, padding=1))
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats):
        x = feats[3]
        pooled = F.interpolate(self.image_pool(x), size=x.shape[2:], mode="bilinear", align_corners=False)
        out = self.bottleneck(torch.cat([pooled] + [m(x) for m in self.aspp_modules], dim=1))
        if self.separable:
            c1 = self.c1_bottleneck(feats[0])
            out = F.interpolate(out, size=c1.shape[2:], mode="bilinear", align_corners=False)
            out = self.sep_bottleneck(torch.cat([out, c1], dim=1))
        return self.conv_seg(out)


class MMSegDeepLab(nn.Module):
    """``forward(images normalised) -> {"out": logits at the input size}`` (torchvision's convention)."""

    def __init__(self, arch: str, num_classes: int):
        super().__init__()
        if arch not in MMSEG_ARCHS:
            raise ValueError(arch)
        depth = "r101" if "_r101_" in arch else "r50"
        self.backbone = ResNetV1c(DEPTHS[depth])
        self.decode_head = ASPPHead(num_classes, separable="deeplabv3plus" in arch)

    def forward(self, x):
        logits = self.decode_head(self.backbone(x))
        return {"out": F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)}


def build_mmseg_deeplab(arch: str, num_classes: int) -> MMSegDeepLab:
    return MMSegDeepLab(arch, num_classes).eval()
