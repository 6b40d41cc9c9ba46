"""Convolution + batch norm + activation, the unit every convolutional family is made of."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "swish": nn.SiLU,  # TF's name for x * sigmoid(x)
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": nn.Hardsigmoid,
}


def activation_layer(name: str | None) -> nn.Module:
    """The activation module called ``name`` (TF names accepted); ``None`` gives the identity."""
    if name is None:
        return nn.Identity()
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}' (choose from {', '.join(sorted(_ACTIVATIONS))})")
    return _ACTIVATIONS[name]()


def _tuple(value: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    return (value,) * dims if isinstance(value, int) else tuple(value)


class ConvNormAct(nn.Sequential):
    """Bias-free conv, batch norm, optional activation; 2D or 3D; "same" padding.

    Padding is symmetric ``k // 2`` (the TPU code's ``conv2d_fixed_padding``): the output size
    is ``ceil(size / stride)`` like TF's ``padding='same'``. TF pads stride-2 convs asymmetrically,
    which only matters when porting TF weights.

    Args:
        dims: 2 for images, 3 for video.
        groups: ``in_channels`` for a depthwise conv.
        activation: name for :func:`activation_layer`, or ``None`` for no activation.
        norm_momentum: PyTorch convention (TF momentum 0.99 is 0.01 here).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...] = 1,
        *,
        stride: int | tuple[int, ...] = 1,
        groups: int = 1,
        dims: int = 2,
        activation: str | None = "relu",
        norm_momentum: float = 0.01,
        norm_eps: float = 1e-3,
    ):
        conv_cls = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
        norm_cls = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        kernel = _tuple(kernel_size, dims)
        conv = conv_cls(
            in_channels,
            out_channels,
            kernel,
            stride=_tuple(stride, dims),
            padding=tuple(k // 2 for k in kernel),
            groups=groups,
            bias=False,
        )
        norm = norm_cls(out_channels, momentum=norm_momentum, eps=norm_eps)
        super().__init__(OrderedDict(conv=conv, bn=norm, act=activation_layer(activation)))


def init_conv_weights(model: nn.Module) -> None:
    """He-normal (fan-out) init of the bias-free 2D/3D convs (the ones followed by batch norm).

    Convs with a bias (squeeze-excitation, gating) keep the init their module chose. Skipped on
    the meta device, where there is nothing to initialise (keeps `vvk models list` fast).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d) and m.bias is None and not m.weight.is_meta:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def fold_batch_norms(model: nn.Module) -> int:
    """Fold the batch norm of every ``ConvNormAct`` in eval mode into its conv (a conv with a
    bias, the norm replaced by the identity), in place; returns how many were folded.

    For inference only: the outputs are the same up to float rounding (the scale is multiplied
    into the weights once instead of applied to every output), a norm layer less per block runs
    (a fifth of RetinaNet SpineNet-Mobile-49's CPU time), and the state dict no longer has the
    norms' entries, so a folded model is not one to save or train. Modules in training mode are
    left as they are (their norms still learn batch statistics)."""
    folded = 0
    for module in model.modules():
        if isinstance(module, ConvNormAct) and isinstance(module.bn, nn.modules.batchnorm._BatchNorm):
            if module.training:
                continue
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
            folded += 1
    return folded
