"""The SITT networks, registered as ``sitt`` (task ``texture``).

Li et al., "SITTA: Single Image Texture Translation for Data Augmentation" (ECCV-W 2022; first
titled SITT), following the official code ``Boyiliee/SITTA`` @ 2582661 (``models.py``,
``train.py``, ``configs/single2single.yaml``; reference/tracking_federated_texture_kernels.md §3).
One model is trained per (content image, texture image) pair: two generators and two
discriminators, as in CycleGAN, but both encoders are always taken from the first generator::

    content ─ stem ─ [conv s2 ─ PONO ─ BN ─ ReLU] ×2 ─► shape code ─┐   (PONO mean, std) ×2
                                                                    ├─ cat ─ conv ─ ResBlock ─┐
    texture ─ conv ─ [conv s2 ─ IN ─ ReLU] ×2 ─ TextureLayer ───────┘                         │
                                       image ◄─ conv+tanh ─ conv ─ [·std+mean, deconv] ×2 ◄───┘

The positional moments that PONO removes from the shape code carry the content's structure;
the decoder puts them back before each upsampling step ("PONO-MS"), so the texture code only has
to supply what is not structure.

Training (losses, presets, loop) lives in ``vvk.methods.texture``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vvk.models.registry import register

Stats = list[tuple[Tensor, Tensor]]  # PONO (mean, std), each (B, 1, h, w), deepest first

PONO_EPS = 1e-5  # models.py PONO(eps=1e-5)
SE_REDUCTION = 16  # models.py AutoGenerator: TextureLayer(dim, reduction=16)
TEXTURE_POOL = 9  # models.py TextureLayer: nn.AdaptiveAvgPool2d(9)
LEAKY_SLOPE = 0.2  # models.py Discriminator: nn.LeakyReLU(0.2, True)
TRAIN_SIZE = 288  # utils.py get_singleM_dataloaders: data_size = 288


class PONO(nn.Module):
    """Positional normalisation (Li et al., NeurIPS 2019): normalise each position over channels.

    Returns the normalised map and the moments it removed, mean and std of shape (B, 1, H, W),
    which the decoder re-injects. The variance is torch's unbiased one, as the reference's
    ``x.var(dim=1)`` (models.py PONO); no affine (the generator builds ``PONO(affine=False)``).
    """

    def __init__(self, eps: float = PONO_EPS):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean = x.mean(dim=1, keepdim=True)  # (B, C, H, W) -> (B, 1, H, W)
        std = (x.var(dim=1, keepdim=True) + self.eps).sqrt()  # (B, 1, H, W), unbiased var
        return (x - mean) / std, mean, std


def _conv_relu(cin: int, cout: int, kernel: int, *, padding_mode: str = "zeros") -> nn.Sequential:
    """models.py ConvBlock2d: a same-size conv with bias, then ReLU. Its ``use_bias='True'`` is a
    string, so every ConvBlock2d has a bias; its padding is zero unless ``pad_type='reflect'``."""
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, padding_mode=padding_mode)
    return nn.Sequential(conv, nn.ReLU(inplace=True))


class PonoDown(nn.Module):
    """One shape-encoder step (models.py Conv2dBlock 'conv' with ``pono=True``): stride-2 3x3
    conv without bias, PONO, BatchNorm, ReLU; returns the map and the PONO moments."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.pono = PONO()
        self.norm = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, mean, std = self.pono(self.conv(x))  # (B, cout, H/2, W/2), moments (B, 1, H/2, W/2)
        return self.act(self.norm(x)), mean, std


class TextureLayer(nn.Module):
    """models.py TextureLayer: a squeeze-and-excitation-style channel vector, broadcast over the
    input's space. Pooling to 9x9 before the conv keeps a little spatial context in the texture
    statistics; the final ReLU makes the code non-negative (the texture loss takes its log)."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(TEXTURE_POOL)
        self.conv = _conv_relu(channels, channels, 3)  # models.py TextureLayer: ConvBlock2d(c, c, 3, 1, 1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        y = self.conv(self.pool(x)).mean(dim=(2, 3))  # (B, C, H, W) -> (B, C, 9, 9) -> (B, C)
        return self.fc(y).view(b, c, 1, 1).expand_as(x)  # (B, C) -> (B, C, H, W), a stride-0 view


class ResnetBlock(nn.Module):
    """models.py ResnetBlock with the yaml's ``pad_type: zero``: x + BN(conv(ReLU(BN(conv(x)))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _up(cin: int, cout: int) -> nn.Sequential:
    """models.py Conv2dBlock 'deconv': a 2x transposed conv without bias, BatchNorm, ReLU."""
    deconv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False)
    return nn.Sequential(deconv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SITTGenerator(nn.Module):
    """models.py AutoGenerator: a shape encoder, a texture encoder and a decoder.

    The reference hard-codes BatchNorm (``self.norm_layer = nn.BatchNorm2d``) and ignores the
    yaml's ``norm: in``: the shape encoder, the ResNet block and the decoder use BatchNorm, the
    texture encoder InstanceNorm (no affine). Its ``ConvBlock2d(use_bias='True')`` default is a
    string, so every ConvBlock2d conv has a bias. train.py always takes both encoders from the
    first generator (netG_A) and the decoder from either, so this class exposes the three parts
    (``encode_shape``, ``encode_texture``, ``decode``) and leaves the pairing to the caller.

    Args:
        ngf: width of the first convs; the codes have ``ngf * 2**n_downsampling`` channels.
        n_downsampling: stride-2 steps in each encoder (and transposed convs in the decoder).
        n_res: ResNet blocks in the decoder.
    """

    def __init__(self, ngf: int = 32, n_downsampling: int = 2, n_res: int = 1):  # single2single.yaml netG
        super().__init__()
        dim = ngf * 2**n_downsampling
        widths = [ngf * 2**i for i in range(n_downsampling + 1)]  # ngf, 2 ngf, ..., dim
        # models.py AutoGenerator.reflection_block: 5x5 reflect-padded conv, then two 3x3 convs.
        self.shape_stem = nn.Sequential(
            _conv_relu(3, ngf, 5, padding_mode="reflect"), _conv_relu(ngf, ngf, 3), _conv_relu(ngf, ngf, 3)
        )
        self.shape_down = nn.ModuleList(PonoDown(a, b) for a, b in zip(widths, widths[1:], strict=False))
        # models.py AutoGenerator.enc_texture: Conv2dBlock(..., use_bias=True, normtype=nn.InstanceNorm2d).
        texture = [_conv_relu(3, ngf, 5, padding_mode="reflect")]
        for a, b in zip(widths, widths[1:], strict=False):
            texture += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.InstanceNorm2d(b), nn.ReLU(inplace=True)]
        self.texture_encoder = nn.Sequential(*texture, TextureLayer(dim))
        # models.py AutoGenerator.pre_dec / dec / out_block.
        self.fuse = nn.Sequential(_conv_relu(2 * dim, dim, 3), *(ResnetBlock(dim) for _ in range(n_res)))
        rev = widths[::-1]  # dim, dim / 2, ..., ngf
        self.up = nn.ModuleList(_up(a, b) for a, b in zip(rev, rev[1:], strict=False))
        out = nn.Conv2d(ngf, 3, 5, padding=2)  # ConvBlock2d's default zero padding, not reflect
        self.head = nn.Sequential(_conv_relu(ngf, ngf, 3), out, nn.Tanh())

    def encode_shape(self, x: Tensor) -> tuple[Tensor, Stats]:
        """(B, 3, H, W) -> shape code (B, dim, H/4, W/4) and the PONO moments of each step,
        deepest first (the order the decoder consumes them)."""
        x = self.shape_stem(x)  # (B, ngf, H, W)
        stats = []
        for down in self.shape_down:
            x, mean, std = down(x)  # (B, 2c, h/2, w/2), moments (B, 1, h/2, w/2)
            stats.append((mean, std))
        return x, stats[::-1]

    def encode_texture(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> texture code (B, dim, H/4, W/4), one non-negative vector per image
        repeated over the positions."""
        return self.texture_encoder(x)

    def decode(self, shape: Tensor, texture: Tensor, stats: Stats) -> Tensor:
        """Shape and texture codes (B, dim, h, w) and PONO moments (deepest first) -> image
        (B, 3, 4h, 4w) in [-1, 1]. Each moment pair is put back (x * std + mean) at its own
        resolution, just before the transposed conv that leaves it."""
        if len(stats) != len(self.up):
            raise ValueError(f"decode: {len(stats)} PONO moment pairs for {len(self.up)} upsampling steps")
        x = self.fuse(torch.cat([shape, texture], dim=1))  # (B, 2 dim, h, w) -> (B, dim, h, w)
        for up, (mean, std) in zip(self.up, stats, strict=True):
            x = up(x * std + mean)  # (B, c, h, w) -> (B, c/2, 2h, 2w)
        return self.head(x)  # (B, ngf, H, W) -> (B, 3, H, W)

    def forward(self, content: Tensor, texture: Tensor) -> Tensor:
        """The content's shape rendered with the texture's texture, by this one generator."""
        shape, stats = self.encode_shape(content)
        return self.decode(shape, self.encode_texture(texture), stats)


class PatchDiscriminator(nn.Module):
    """models.py Discriminator with single2single.yaml netD (3x3 kernels, stride 1, padding 1):
    a full-resolution (B, 1, H, W) map of real/fake scores for an LSGAN loss."""

    def __init__(self, ndf: int = 32, n_layers: int = 3):  # single2single.yaml netD: ndf, num_layer
        super().__init__()
        mults = [min(2**n, 8) for n in range(n_layers + 1)]  # models.py Discriminator: nf_mult
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
        for prev, mult in zip(mults, mults[1:], strict=False):
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 3, padding=1, bias=False),  # bias off before BN
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            ]
        layers.append(nn.Conv2d(ndf * mults[-1], 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, 3, H, W) -> (B, 1, H, W)


def orthogonal_init_(module: nn.Module) -> nn.Module:
    """models.py ``weights_init('orthogonal')`` (single2single.yaml ``init_method``), applied to
    every submodule: orthogonal weights and zero biases for modules whose class name starts with
    ``Conv`` or ``Linear`` (ConvTranspose2d included); norms keep torch's defaults. Returns
    ``module``."""
    for m in module.modules():
        weight = getattr(m, "weight", None)
        if type(m).__name__.startswith(("Conv", "Linear")) and isinstance(weight, Tensor):
            nn.init.orthogonal_(weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return module


class SITT(nn.Module):
    """The whole model train.py trains: netG_A, netG_B, netD_A, netD_B.

    ``d_a`` judges images of the content domain A, ``d_b`` of the texture domain B. Both encoders
    are always ``g_a``'s; ``g_b`` only decodes into domain B, ``g_a`` into domain A.
    """

    def __init__(
        self, *, ngf: int = 32, n_downsampling: int = 2, n_res: int = 1, ndf: int = 32, n_layers: int = 3
    ):
        super().__init__()
        self.g_a = SITTGenerator(ngf, n_downsampling, n_res)
        self.g_b = SITTGenerator(ngf, n_downsampling, n_res)
        self.d_a = PatchDiscriminator(ndf, n_layers)
        self.d_b = PatchDiscriminator(ndf, n_layers)

    def translate(self, content: Tensor, texture: Tensor) -> Tensor:
        """train.py's evaluation: x_ab = netG_B.decode(s_A, t_B, stats_A), with the shape of
        ``content`` and the texture of ``texture`` both encoded by netG_A. (B, 3, H, W) x2 ->
        (B, 3, H, W) in [-1, 1]."""
        shape, stats = self.g_a.encode_shape(content)
        return self.g_b.decode(shape, self.g_a.encode_texture(texture), stats)

    def forward(self, content: Tensor, texture: Tensor) -> Tensor:
        return self.translate(content, texture)

    def profile_forward(self, x: Tensor) -> Tensor:
        """One translation with ``x`` as both content and texture, for ``vvk models list --flops``
        (``vvk.models.profile.run_counted``)."""
        return self.translate(x, x)


@register(
    "sitt",
    task="texture",
    default_input=(3, TRAIN_SIZE, TRAIN_SIZE),
    source="Boyiliee/SITTA: models.py (AutoGenerator, Discriminator), train.py, configs/single2single.yaml",
)
def sitt(
    *,
    ngf: int = 32,
    n_downsampling: int = 2,
    n_res: int = 1,
    ndf: int = 32,
    n_layers: int = 3,
    init: bool = True,
) -> SITT:
    """The SITT model of single2single.yaml: two generators and two discriminators, initialised
    as train.py does a fresh run (``orthogonal_init_``) unless ``init=False``."""
    model = SITT(ngf=ngf, n_downsampling=n_downsampling, n_res=n_res, ndf=ndf, n_layers=n_layers)
    return orthogonal_init_(model) if init else model
