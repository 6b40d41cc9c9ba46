"""Building blocks shared by several model families (written once, imported everywhere)."""

from vvk.models.layers.conv import ConvNormAct, activation_layer, fold_batch_norms, init_conv_weights
from vvk.models.layers.mbconv import MBConv, mbconv_group
from vvk.models.layers.squeeze_excitation import SqueezeExcitation
from vvk.models.layers.stochastic_depth import StochasticDepth, drop_rate_for_block

__all__ = [
    "ConvNormAct",
    "MBConv",
    "SqueezeExcitation",
    "StochasticDepth",
    "activation_layer",
    "drop_rate_for_block",
    "fold_batch_norms",
    "init_conv_weights",
    "mbconv_group",
]
