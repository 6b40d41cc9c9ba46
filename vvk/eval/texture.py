"""Does a texture translation translate? Texture statistics moved, shapes kept.

::

    from vvk.eval.texture import translation_report

    translation_report(content, texture, translated)   # (H, W, 3) uint8 images, any sizes
    # {"gram_content_texture": 0.93, "gram_translated_texture": 0.31,
    #  "edges_content_translated": 0.63, "edges_content_texture": 0.02}

Two measures, each blind to what the other looks at:

- ``gram_distance``: how far apart two images' texture statistics are, from 0 (the same) to 1.
  The Gram matrices of a convolutional network's feature maps (channel co-activations averaged
  over space, Gatys et al. 2015) describe a texture regardless of where things are. Here each
  layer's features are centred over space first (the Gram matrix of the centred features is
  their covariance), and each layer's squared difference is divided by the two matrices'
  squared norms: ``|Ga - Gb|² / (|Ga|² + |Gb|²)``, averaged over layers. Both choices are
  measured ones: with Gatys' plain Gram matrices and a plain mean squared difference, the
  figure grows with the fourth power of the images' contrast, and on scikit-image's grey
  ``brick`` a flat grey image came out as close to the texture (3.3e-6) as the texture's own
  two halves were to each other (1.3e-6) and closer than ``grass`` (1.8e-6), while any colour
  photo was a thousand times further: a near-blank translation would have scored as a perfect
  one. Relative and centred, a flat image is at 1 from every texture, brick's halves at 0.11,
  brick to grass 0.37 and a photo 0.98. The network is a fixed, seeded random one
  (``random_texture_network``): Ustyuzhaninov et al. 2017 ("What does it take to generate
  natural textures?", ICLR) show that the Gram statistics of random, untrained filters already
  describe textures well enough to synthesise them. That is the choice here because no
  pretrained VGG can be downloaded on the machines vvk is developed and tested on; when VGG-19
  weights are present, ``imagenet_normalised`` turns them into Gatys' own layers, and
  ``network=`` takes any feature extractor. Distances are comparable only when made with the
  same network and side.
- ``edge_correlation``: how well an image keeps another's shapes: the Pearson correlation of the
  two Sobel edge-magnitude maps (greyscale), pixel by pixel, after resizing the second image to
  the first's size.

A good translation lowers the Gram distance to the texture (``gram_translated_texture`` below
``gram_content_texture``) while its edges stay correlated with the content's
(``edges_content_translated`` well above ``edges_content_texture``, the correlation of two
images that share no shapes: the floor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (B, 3, H, W) float RGB in [0, 1] -> feature maps (B, C_i, H_i, W_i)
FeatureNetwork = Callable[[Tensor], Sequence[Tensor]]

SIDE = 128  # both images' short side before the Gram statistics
NETWORK_SEED = 0
# Ustyuzhaninov et al. use many random filters on one or a few scales; here four conv3x3 + ReLU
# stages with 2x2 average pooling between them, a Gram matrix after every stage.
WIDTHS = (32, 64, 128, 128)
# ImageNet's per-channel statistics: centre the inputs so that the ReLUs of the random filters
# see signed values; fixed constants, so a brightness or colour change still moves the distance.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class RandomTextureNetwork(nn.Module):
    """Conv3x3 + ReLU stages with average pooling, He-initialised from ``seed`` alone (a generator
    of its own, never the global RNG), no biases, frozen. Returns each stage's ReLU output."""

    def __init__(self, widths: Sequence[int] = WIDTHS, *, seed: int = NETWORK_SEED):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList()
        channels = 3
        for width in widths:
            conv = nn.Conv2d(channels, width, 3, padding=1, padding_mode="reflect", bias=False)
            with torch.no_grad():
                std = (2.0 / (channels * 9)) ** 0.5  # He: keeps the activations' scale through ReLUs
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * std)
            self.convs.append(conv)
            channels = width
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) in [0, 1] -> [(B, 32, H, W), (B, 64, H/2, W/2), (B, 128, H/4, W/4), ...]."""
        x = (x - self.mean) / self.std
        out = []
        for i, conv in enumerate(self.convs):
            if i:
                x = F.avg_pool2d(x, 2)
            x = F.relu(conv(x))
            out.append(x)
        return out


@lru_cache(maxsize=1)
def random_texture_network() -> RandomTextureNetwork:
    """The default network of ``gram_distance``: the same weights in every process."""
    return RandomTextureNetwork()


def imagenet_normalised(network: FeatureNetwork) -> FeatureNetwork:
    """``network`` (an ImageNet-trained feature extractor) as a ``network=`` for
    ``gram_distance``: its [0, 1] inputs normalised with ImageNet's statistics first. Gatys et
    al.'s own layers are ``imagenet_normalised(VGGPerceptualLoss.from_registry().features)``
    (SITT's VGG-19, relu1_1 ... relu5_1, ``vvk.methods.texture.losses``)."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return lambda x: network((x - mean) / std)


def _rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) as it is; (H, W) greyscale (scikit-image's textures) repeated to three channels."""
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) or (H, W) image, got shape {image.shape}")
    return image


def _to_tensor(image: np.ndarray, side: int) -> Tensor:
    """(H, W, 3) uint8 -> (1, 3, h, w) float in [0, 1], the short side resized to ``side``
    (aspect kept: squashing would change the texture's own proportions)."""
    from torchvision.transforms.v2 import functional as TF

    x = torch.from_numpy(np.ascontiguousarray(_rgb(image))).permute(2, 0, 1).float().div(255)  # (3, H, W)
    return TF.resize(x, [side], antialias=True).clamp(0, 1)[None]


def gram_matrices(maps: Sequence[Tensor]) -> list[Tensor]:
    """(1, C, H, W) maps -> (C, C) Gram matrices of the features centred over space (their
    covariances), each divided by C·H·W (so that layers of any width and images of any size are
    on one scale)."""
    grams = []
    for fmap in maps:
        _, c, h, w = fmap.shape
        flat = fmap[0].reshape(c, h * w).double()  # (C, H·W); float64: flat regions give tiny values
        flat = flat - flat.mean(dim=1, keepdim=True)
        grams.append(flat @ flat.T / (c * h * w))  # (C, C)
    return grams


def relative_difference(ga: Tensor, gb: Tensor) -> float:
    """``|ga - gb|² / (|ga|² + |gb|²)`` (Frobenius norms): 0 for equal matrices, 1 when one of them
    is zero, at most 2; 0 when both are zero (two flat images have the same statistics)."""
    scale = ga.square().sum() + gb.square().sum()
    return float((ga - gb).square().sum() / scale) if scale > 0 else 0.0


@torch.no_grad()
def gram_distance(
    a: np.ndarray, b: np.ndarray, *, network: FeatureNetwork | None = None, side: int = SIDE
) -> float:
    """Texture-statistic distance of two (H, W, 3) uint8 images: the mean over the network's
    layers of the relative squared difference of their Gram matrices of centred features (module
    docstring). 0 for identical images, 1 from a flat image, symmetric, deterministic; (H, W)
    greyscale is taken as grey RGB. ``network``: a feature extractor taking (1, 3, H, W) RGB in
    [0, 1] and returning a list of maps; default ``random_texture_network()``. ``side``: both
    images' short side before the network."""
    net = network if network is not None else random_texture_network()
    grams_a = gram_matrices(net(_to_tensor(a, side)))
    grams_b = gram_matrices(net(_to_tensor(b, side)))
    differences = [relative_difference(ga, gb) for ga, gb in zip(grams_a, grams_b, strict=True)]
    return sum(differences) / len(differences)


def _edges(image: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Sobel edge magnitude of the greyscale of an (H, W, 3) image, resized to ``shape`` first."""
    from skimage.color import rgb2gray
    from skimage.filters import sobel
    from skimage.transform import resize

    grey = rgb2gray(_rgb(image))  # (H, W) float in [0, 1]
    if shape is not None and grey.shape != shape:
        grey = resize(grey, shape, anti_aliasing=True)
    return sobel(grey)


def edge_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the Sobel edge magnitudes of two (H, W, 3) uint8 images, ``b``
    resized to ``a``'s size: 1 for identical images, near 0 for unrelated ones. 0 when either
    has no edges at all (a flat image: the correlation is undefined)."""
    edges_a = _edges(a).ravel()
    edges_b = _edges(b, a.shape[:2]).ravel()
    if edges_a.std() == 0 or edges_b.std() == 0:
        return 0.0
    return float(np.corrcoef(edges_a, edges_b)[0, 1])


def translation_report(
    content: np.ndarray, texture: np.ndarray, translated: np.ndarray, *, network: FeatureNetwork | None = None
) -> dict[str, float]:
    """The measures of one translation (all (H, W, 3) uint8, any sizes):

    - ``gram_content_texture``: Gram distance of the content image to the texture, before;
    - ``gram_translated_texture``: the same for the translation: lower is closer to the texture;
    - ``edges_content_translated``: edge correlation of the content and the translation: how
      much of the content's shapes survive (1: all of them);
    - ``edges_content_texture``: edge correlation of the content and the texture, resized to the
      content's size: what two images without shared shapes score, a floor for the line above.
    """
    return {
        "gram_content_texture": gram_distance(content, texture, network=network),
        "gram_translated_texture": gram_distance(translated, texture, network=network),
        "edges_content_translated": edge_correlation(content, translated),
        "edges_content_texture": edge_correlation(content, texture),
    }
