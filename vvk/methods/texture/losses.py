"""The losses of SITT's training step (``Boyiliee/SITTA`` models.py and train.py).

train.py combines, per direction: an LSGAN adversarial loss, L1 cycle and identity losses (plain
``F.l1_loss``: models.py ``compute_recon_loss`` is ``mean(|input - target|)``), the texture-code
loss and a VGG-19 perceptual loss. The adversarial, texture and perceptual terms are here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.errors import VvkError
from vvk.weights import WeightsEntry, cached_path, get, pull

VGG19_WEIGHTS = "vgg19.tv_in1k"  # torchvision's vgg19(pretrained=True), as models.py VGG19 loads
# models.py VGG19: torchvision vgg19().features cut after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
VGG_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
VGG_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)  # models.py VGGLoss.weights


def lsgan_discriminator_loss(fake_out: Tensor, real_out: Tensor) -> Tensor:
    """models.py Discriminator.calc_dis_loss, ``gan_type: lsgan``: fakes pushed to 0, reals to 1,
    ``0.5 * (mean(fake²) + mean((real - 1)²))``."""
    return 0.5 * (fake_out.square().mean() + (real_out - 1).square().mean())


def lsgan_generator_loss(fake_out: Tensor) -> Tensor:
    """models.py Discriminator.calc_gen_loss, ``gan_type: lsgan``: ``mean((out - 1)²)``."""
    return (fake_out - 1).square().mean()


def _kl_div_mean(input: Tensor, target: Tensor) -> Tensor:
    """``F.kl_div(input, target)`` with its default ``reduction='mean'`` (the elementwise mean of
    ``target * (log target - input)``, 0 where target is 0), without that reduction's warning."""
    return F.kl_div(input, target, reduction="sum") / target.numel()


def texture_code_loss(t1: Tensor, t2: Tensor) -> Tensor:
    """train.py's texture loss as written: ``-0.5 * (F.kl_div(t1, t2) + F.kl_div(t2, t1))``.

    The codes are non-negative ReLU outputs passed straight to ``kl_div`` as its input (meant to
    be log-probabilities) and its target (probabilities), with no softmax; zero targets add 0
    (torch computes ``xlogy``). So this is not a divergence between the codes: elementwise it is
    ``mean(t1 * t2) - 0.5 * mean(t1 log t1 + t2 log t2)``, which minimising drives towards small
    products t1·t2 and large code entries (it is unbounded below). Had the codes been
    log-probabilities, the minus sign would push the two distributions apart. vvk keeps the
    reference's sign and form.

    The gradient with respect to a zero entry is NaN (log 0), as in the reference; the texture
    encoder's final ReLU drops it (its backward selects, it does not multiply).

    Args:
        t1, t2: texture codes of the same shape, e.g. (B, 128, h, w) from ``encode_texture``.
    """
    return -0.5 * (_kl_div_mean(t1, t2) + _kl_div_mean(t2, t1))


class VGGPerceptualLoss(nn.Module):
    """models.py VGGLoss: a weighted L1 between VGG-19 features of ``x`` and of ``y``.

    ``sum_i w_i * mean|phi_i(x) - phi_i(y)|`` over relu1_1 ... relu5_1 with weights 1/32, 1/16,
    1/8, 1/4, 1; the target's features carry no gradient. The VGG is frozen and stays in eval mode.
    Like the reference, the generator's [-1, 1] images go into the VGG as they are, without
    ImageNet normalisation.

    Args:
        features: a torchvision VGG-19 ``features`` module (at least its first 30 layers); its
            layers are shared, not copied. ``from_registry`` loads the pretrained one.
    """

    def __init__(self, features: nn.Sequential):
        super().__init__()
        if len(features) < VGG_SLICES[-1][1]:
            raise ValueError(f"features: {len(features)} layers; a VGG-19 `features` has 37")
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in VGG_SLICES)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        """Always eval: a trainer's ``model.train()`` must not change the fixed feature extractor."""
        return super().train(False)

    def features(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> relu1_1 (B, 64, H, W), relu2_1 (B, 128, H/2, W/2), ..., relu5_1
        (B, 512, H/16, W/16)."""
        out = []
        for block in self.slices:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Perceptual distance of ``x`` (gets gradients) to the target ``y``, both (B, 3, H, W)."""
        with torch.no_grad():  # the reference detaches y's features: never build their graph
            targets = self.features(y)
        return sum(
            w * F.l1_loss(fx, fy)
            for w, fx, fy in zip(VGG_LAYER_WEIGHTS, self.features(x), targets, strict=True)
        )

    @classmethod
    def from_registry(
        cls,
        name: str = VGG19_WEIGHTS,
        *,
        device: str | torch.device = "cpu",
        registry: dict[str, WeightsEntry] | None = None,
    ) -> VGGPerceptualLoss:
        """The loss on the VGG-19 weights ``name`` of the weights registry, pulled if needed and
        checked against its sha256 (``vvk.models.pretrained.load``); a missing or wrong file is a
        ``VvkError``."""
        from vvk.models.pretrained import load

        model = load(name, tasks={"image-backbone"}, map_location=device, registry=registry)
        features = getattr(model, "features", None)
        if not isinstance(features, nn.Sequential) or len(features) < VGG_SLICES[-1][1]:
            raise VvkError(f"weights '{name}': not a VGG-19 (no 30-layer `features`)")
        return cls(features)


def load_perceptual_loss(
    spec: str = VGG19_WEIGHTS,
    *,
    device: str | torch.device = "cpu",
    registry: dict[str, WeightsEntry] | None = None,
) -> tuple[VGGPerceptualLoss | None, str]:
    """The perceptual loss on weights ``spec``, or None when the weights cannot be had, with a
    one-line note saying which it is (for the caller to log).

    Pretrained VGG-19 weights are an optional extra of SITT's training: without them a run goes
    on without the perceptual term rather than failing. Only absence makes it optional: an
    unknown name, or a file in the cache that is corrupt or is not a VGG-19, raises ``VvkError``.
    """
    entry = get(spec, registry)
    if cached_path(entry) is None:
        try:
            pull(entry.name, registry={entry.name: entry})
        except VvkError:
            if cached_path(entry) is not None:  # it is there now: what failed is the file itself
                raise
            return None, f"perceptual loss off: no VGG-19 weights here (`vvk weights pull {entry.name}`)"
    loss = VGGPerceptualLoss.from_registry(entry.name, device=device, registry={entry.name: entry})
    return loss, f"perceptual loss on: VGG-19 weights {entry.name}"
