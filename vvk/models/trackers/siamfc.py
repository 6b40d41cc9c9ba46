"""The SiamFC network on any vvk backbone, registered as ``siamfc`` (task ``tracking``).

Bertinetto et al., "Fully-Convolutional Siamese Networks for Object Tracking" (ECCV-W 2016),
following ``huanglianghua/siamfc-pytorch`` (``siamfc/{siamfc,heads}.py``) and, for frozen
self-supervised features, ``xvjiarui/VFS: projects/siamfc-pytorch`` (reference/
tracking_federated_texture_kernels.md §1)::

    exemplar 127² ─┐                       ┌─ [1×1 conv z] ─┐
                   ├─ adapter (stride 8) ──┤                ├─ xcorr ─ adjust ─► response (17×17)
    search 255² ───┘                       └─ [1×1 conv x] ─┘

The adapter normalises the 0..1 crops, pads them to what the backbone accepts, feeds a video
backbone a static clip, and returns one feature map at total stride 8: a level that has it
(SpineNet ``P3``, R3D ``res3``, an 8-pixel-patch ViT), or a 3D ResNet stage dilated to it.

``vvk.models.build("siamfc", backbone="r3d-50", branch_channels=512)`` builds one, and
``vvk.models.load`` reads the ``tracker.safetensors`` files ``vvk train tracker`` writes (their
architecture record is this builder's keyword arguments). Training (presets, label map, loss)
and tracking live in ``vvk.methods.tracking``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.errors import VvkError
from vvk.models.backbones import Backbone, FeatureSpec
from vvk.models.backbones.resnet3d import ResNet3D
from vvk.models.backbones.scale_permuted import ScalePermutedBackbone
from vvk.models.checkpoint import load_strictly
from vvk.models.registry import build as build_model
from vvk.models.registry import get_entry, register

TOTAL_STRIDE = 8  # huanglianghua/siamfc-pytorch: siamfc/siamfc.py (parse_args, total_stride)
OUT_SCALE = 1e-3  # huanglianghua/siamfc-pytorch: siamfc/heads.py (SiamFC out_scale=0.001)
EXEMPLAR_SIZE, SEARCH_SIZE = 127, 255  # parse_args exemplar_sz, instance_sz (vvk.data.siamfc_crops)
BACKBONE_TASKS = ("image-backbone", "video-backbone", "multimodal-backbone")
# What each kind of backbone is fed, as (mean, std) of the 0..1 input: image backbones ImageNet
# statistics (vvk.models.detectors.common); video backbones [-1, 1], as vvk's pretraining feeds
# them (VideoAugment's zero_center, vvk.eval.features.to_input), i.e. (x - 0.5) / 0.5. Pretrained
# or random, a backbone gets the same input, so the two differ only in their weights.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
VIDEO_MEAN = VIDEO_STD = (0.5, 0.5, 0.5)


def default_normalisation(video: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a backbone of this kind is fed (``IMAGE_*`` or ``VIDEO_*`` above)."""
    return (VIDEO_MEAN, VIDEO_STD) if video else (IMAGE_MEAN, IMAGE_STD)


Adjust = Literal["conv", "bn", "scale"]


def xcorr(z: Tensor, x: Tensor) -> Tensor:
    """Cross-correlate each exemplar with its search maps, one grouped conv for the batch.

    Args:
        z: (B, C, h, w) exemplar features.
        x: (B·K, C, H, W) search features, the K maps of exemplar ``i`` at rows ``i·K .. i·K+K-1``
            (K = 1 in training, the number of scales when tracking).

    Returns:
        (B·K, 1, H-h+1, W-w+1): ``out[i·K+k, 0, u, v] = Σ_c,a,b z[i,c,a,b] · x[i·K+k, c, u+a, v+b]``.
    """
    b, c = z.shape[:2]
    if x.shape[0] % b or x.shape[1] != c:
        raise ValueError(f"search {tuple(x.shape)} does not fit exemplars {tuple(z.shape)}")
    k = x.shape[0] // b
    h, w = x.shape[-2:]
    x = x.reshape(b, k, c, h, w).transpose(0, 1).reshape(k, b * c, h, w)  # (B·K, C, H, W) -> (K, B·C, H, W)
    out = F.conv2d(x, z, groups=b)  # (K, B, H', W'): group i correlates exemplar i with its maps
    return out.transpose(0, 1).reshape(b * k, 1, *out.shape[-2:])  # (K, B, H', W') -> (B·K, 1, H', W')


class FeatureAdapter(nn.Module):
    """Any vvk image or video backbone as a stride-8 feature extractor for 2D crops.

    ``forward(images)``: (B, 3, H, W) in 0..1 -> (B, C, H'/8, W'/8), H' and W' being H and W
    padded up to ``input_multiple`` (127 -> 128 and 255 -> 256: 16² and 32² maps, 17² responses).
    Normalisation is the adapter's, so crops stay in image units.

    Args:
        backbone: a built backbone; a 3D ResNet is dilated in place when ``feature`` needs it.
        feature: the output key to use; None picks ``res5`` (dilated) for a 3D ResNet, ``P3`` for
            SpineNets, ``tokens`` for a ViT, else the last key at stride 8.
        video: whether the backbone takes (B, 3, T, H, W) clips; None: it has a 3D conv.
        clip_frames: frames of the static clip a video backbone sees (the frame repeated); None:
            the feature's temporal stride, the fewest that give one output step.
        mean, std: per-channel normalisation of the 0..1 input; None: the backbone kind's
            (``default_normalisation``: ImageNet's for image backbones, [-1, 1] for video ones).
        input_multiple: the input is zero-padded (in normalised units, i.e. with the mean colour)
            at the bottom and right to a multiple of this; None: what the backbone requires.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        feature: str | None = None,
        video: bool | None = None,
        clip_frames: int | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        input_multiple: int | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        shapes = backbone.output_shape()
        self.feature = _default_feature(backbone, shapes) if feature is None else feature
        if self.feature not in shapes:
            raise VvkError(
                f"feature={self.feature}: the backbone returns {', '.join(shapes)}", params=["feature"]
            )
        spec = shapes[self.feature]
        if spec.stride != TOTAL_STRIDE:
            _dilate_to_stride_8(backbone, self.feature, spec)
        self.video = _has_conv3d(backbone) if video is None else video
        self.clip_frames = int(clip_frames or spec.temporal_stride) if self.video else 1
        self.channels, self.stride = spec.channels, TOTAL_STRIDE
        default_multiple = 2**backbone.max_block_level if isinstance(backbone, ScalePermutedBackbone) else 8
        self.input_multiple = input_multiple or default_multiple
        default_mean, default_std = default_normalisation(self.video)
        mean = default_mean if mean is None else tuple(mean)
        std = default_std if std is None else tuple(std)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = (images - self.mean) / self.std
        h, w = x.shape[-2:]
        m = self.input_multiple
        # bottom/right, 0 after normalising; exemplar and search grow alike, so the response centre
        # still means no displacement
        x = F.pad(x, (0, -w % m, 0, -h % m))
        if self.video:
            x = x.unsqueeze(2).expand(-1, -1, self.clip_frames, -1, -1)  # (B, 3, H, W) -> (B, 3, T, H, W)
        out = self.backbone(x)[self.feature]
        grid = (x.shape[-2] // self.stride, x.shape[-1] // self.stride)
        if out.ndim == 3:  # ViT tokens (B, N, D), N = T'·h·w in (t, h, w) order
            if out.shape[1] % (grid[0] * grid[1]):
                raise VvkError(
                    f"feature={self.feature}: {out.shape[1]} tokens do not tile a {grid[0]}×{grid[1]} grid"
                    " (DropToken on? build the backbone with drop_token_rate=0)"
                )
            out = out.reshape(out.shape[0], -1, *grid, out.shape[-1])  # (B, N, D) -> (B, T', h, w, D)
            out = out.permute(0, 4, 1, 2, 3)  # (B, T', h, w, D) -> (B, D, T', h, w)
        if out.ndim == 5:
            out = out.mean(dim=2)  # (B, C, T', h, w) -> (B, C, h, w): a static clip, so one step
        return out


def _default_feature(backbone: Backbone, shapes: Mapping[str, FeatureSpec]) -> str:
    if isinstance(backbone, ResNet3D):
        return "res5"  # xvjiarui/VFS: projects/siamfc-pytorch/siamfc/default_config_base.py, out_indices (3,)
    at_8 = [name for name, spec in shapes.items() if spec.stride == TOTAL_STRIDE]
    if "tokens" in shapes:
        return "tokens"
    if not at_8:
        strides = ", ".join(f"{n} /{s.stride}" for n, s in shapes.items())
        raise VvkError(f"no feature at stride {TOTAL_STRIDE} in this backbone ({strides}); pass feature=")
    return at_8[-1]


def _has_conv3d(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv3d) for m in module.modules())


def _dilate_to_stride_8(backbone: Backbone, feature: str, spec: FeatureSpec) -> None:
    """Bring a 3D ResNet's res4 / res5 to stride 8: their stride-2 convs become stride 1 and
    later 3×3 convs dilate by the stride removed so far (2 in res4, 4 in res5), as VFS does
    (``xvjiarui/VFS: projects/siamfc-pytorch/siamfc/default_config_base.py``: strides (1, 2, 1,
    1), dilations (1, 1, 2, 4)). Like torchvision's ``replace_stride_with_dilation``
    (``pytorch/vision: torchvision/models/resnet.py``, ``ResNet._make_layer``) the first block
    of a stage keeps the previous dilation; then the dilated output sampled every 2 (res4) or 4
    (res5) pixels equals the undilated output exactly, so pretrained features keep their meaning
    (approximately with squeeze-excitation or self-gating, which average the whole, now denser,
    map). mmcv, which VFS runs, dilates the first block too."""
    path = {"res4": ("res4",), "res5": ("res4", "res5"), "res5_1": ("res4", "res5_1")}
    if spec.stride < TOTAL_STRIDE or not isinstance(backbone, ResNet3D) or feature not in path:
        raise VvkError(
            f"feature={feature}: stride {spec.stride}; SiamFC needs stride {TOTAL_STRIDE} (a level at"
            " stride 8, or a 3D ResNet's res4/res5, which are dilated to it)",
            params=["feature"],
        )
    dilation = 1
    for name in path[feature]:
        previous, dilation = dilation, dilation * 2
        for j, block in enumerate(backbone.stages[name]):
            conv = block.spatial.conv  # the (1, 3, 3) conv; the temporal conv keeps its stride
            d = previous if j == 0 else dilation
            conv.dilation, conv.padding = (1, d, d), (0, d, d)
            if j == 0:
                t = block.stride[0]
                conv.stride = block.stride = (t, 1, 1)
                if block.shortcut is not None:
                    block.shortcut.conv.stride = (t, 1, 1)


class SiamFC(nn.Module):
    """Shared features, optional per-branch 1×1 convs, cross-correlation and a response adjust.

    Args:
        features: the stride-8 feature extractor.
        branch_channels: a 1×1 conv with bias on each branch to this width (VFS ``SiamConvFC``,
            ``extra_conv`` with ``out_channels`` 512: the trained part when features are frozen);
            None: correlate the features directly (plain SiamFC).
        adjust: ``"conv"``: a learned 1×1 conv on the response, gain ``out_scale`` and bias 0 at
            init (bertinetto/siamese-fc: training/make_siameseFC.m, ``add_adjust_layer(...,
            1e-3, 0, ...)``); ``"bn"``: batch norm on the response (huanglianghua/siamfc-pytorch
            @75a105c: src/siamese.py ``bn_adjust``, ported from the MatConvNet nets);
            ``"scale"``: a fixed ``· out_scale`` (huanglianghua/siamfc-pytorch: siamfc/heads.py,
            and VFS's heads.py).
        out_scale: the response gain of ``"conv"`` (initial) and ``"scale"`` (fixed).
        freeze_backbone: no gradients into the backbone and its batch norm kept in eval mode
            (VFS: ``frozen_stages 4``, ``norm_eval True``; the linear-probe protocol).
    """

    def __init__(
        self,
        features: FeatureAdapter,
        *,
        branch_channels: int | None = None,
        adjust: Adjust = "conv",
        out_scale: float = OUT_SCALE,
        freeze_backbone: bool = False,
    ):
        super().__init__()
        self.features = features
        self.total_stride = features.stride
        self.exemplar_conv = self.search_conv = None
        if branch_channels:
            self.exemplar_conv = nn.Conv2d(features.channels, branch_channels, 1)
            self.search_conv = nn.Conv2d(features.channels, branch_channels, 1)
        self.adjust_kind, self.out_scale = adjust, out_scale
        if adjust == "conv":
            self.adjust = nn.Conv2d(1, 1, 1)
            nn.init.constant_(self.adjust.weight, out_scale)
            nn.init.zeros_(self.adjust.bias)
        elif adjust == "bn":
            self.adjust = nn.BatchNorm2d(1)
        elif adjust == "scale":
            self.adjust = None
        else:
            raise VvkError(f"adjust={adjust}: choose conv, bn or scale", params=["adjust"])
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            features.backbone.requires_grad_(False)
            features.backbone.eval()

    def train(self, mode: bool = True) -> SiamFC:
        super().train(mode)
        if self.freeze_backbone:
            self.features.backbone.eval()  # frozen statistics too, not only frozen weights
        return self

    def exemplar(self, z: Tensor) -> Tensor:
        """(B, 3, 127, 127) crops in 0..1 -> (B, C', h, w) correlation kernels."""
        f = self.features(z)
        return self.exemplar_conv(f) if self.exemplar_conv is not None else f

    def search(self, x: Tensor) -> Tensor:
        """(N, 3, 255, 255) crops in 0..1 -> (N, C', H, W) search features."""
        f = self.features(x)
        return self.search_conv(f) if self.search_conv is not None else f

    def correlate(self, kernel: Tensor, search: Tensor) -> Tensor:
        """Responses (B·K, 1, R, R) of ``kernel`` (B, ...) over ``search`` (B·K, ...), logits."""
        out = xcorr(kernel, search)
        return out * self.out_scale if self.adjust is None else self.adjust(out)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        """Exemplars (B, 3, 127, 127) and search crops (B·K, 3, 255, 255) -> (B·K, 1, 17, 17)."""
        return self.correlate(self.exemplar(z), self.search(x))

    def profile_forward(self, x: Tensor) -> Tensor:
        """One training pair from a single search crop, for ``vvk models list --flops``: the
        exemplar is the crop's centre 127² (``vvk.models.profile.run_counted``)."""
        lo = (x.shape[-1] - EXEMPLAR_SIZE) // 2
        z = x[..., lo : lo + EXEMPLAR_SIZE, lo : lo + EXEMPLAR_SIZE]  # (B, 3, 255, 255) -> (B, 3, 127, 127)
        return self(z, x)


@register(
    "siamfc",
    task="tracking",
    default_input=(3, SEARCH_SIZE, SEARCH_SIZE),
    source="huanglianghua/siamfc-pytorch: siamfc/{siamfc,heads}.py; xvjiarui/VFS: "
    "projects/siamfc-pytorch (branch convs, dilation); on any vvk backbone (default r3d-tiny)",
)
def siamfc(
    backbone: str | Backbone = "r3d-tiny",
    *,
    feature: str | None = None,
    pretrained_state: Mapping[str, Tensor] | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
    branch_channels: int | None = None,
    adjust: Adjust = "conv",
    out_scale: float = OUT_SCALE,
    freeze_backbone: bool = False,
    clip_frames: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> SiamFC:
    """A SiamFC network on a registered vvk backbone (or a built one); the ``siamfc`` registry
    entry (``vvk.models.build("siamfc", ...)`` records these arguments for its checkpoints).

    Args:
        backbone: a registry name (an image or video backbone, ``vvk models list``) or a module
            (built by ``vvk.models.build``, for its checkpoints to rebuild it).
        feature, clip_frames, mean, std: see :class:`FeatureAdapter`.
        pretrained_state: a state dict loaded strictly into the backbone (e.g. the ``state_dict()``
            of ``vvk.models.pretrained.load(...)`` or of a pretraining checkpoint's backbone).
        backbone_kwargs: builder arguments for a registry name.
        branch_channels, adjust, out_scale, freeze_backbone: see :class:`SiamFC`.
    """
    if isinstance(backbone, str):
        task = get_entry(backbone).task
        if task not in BACKBONE_TASKS:
            raise VvkError(
                f"backbone={backbone}: a {task} model, not an image or video backbone", params=["backbone"]
            )
        kwargs = dict(backbone_kwargs or {})
        if backbone.startswith("vatt-"):
            kwargs.setdefault("drop_token_rate", 0.0)  # DropToken would break the token grid
        backbone = build_model(backbone, **kwargs)
    if pretrained_state is not None:
        load_strictly(
            "pretrained_state", lambda: backbone.load_state_dict(dict(pretrained_state), strict=False)
        )
    adapter = FeatureAdapter(backbone, feature=feature, clip_frames=clip_frames, mean=mean, std=std)
    return SiamFC(
        adapter,
        branch_channels=branch_channels,
        adjust=adjust,
        out_scale=out_scale,
        freeze_backbone=freeze_backbone,
    )
