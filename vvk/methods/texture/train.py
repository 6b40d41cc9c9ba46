"""Training one SITT texture model: the texture of one image, learned to be put on others.

::

    from vvk.methods.texture.train import train_texture

    run = train_texture("brick.png", ["astronaut.png", "coffee.png"], preset="tiny", out="runs/brick")
    run.model_path            # runs/brick/texture.safetensors: vvk.methods.texture.translate reads it

What a step does is ``Boyiliee/SITTA: train.py``'s iteration, in its order: the discriminators
first, on the translations detached (``calc_dis_loss``), then the generators against the
*updated* discriminators, with the cycle, identity, texture-code and perceptual losses
(``vvk.methods.texture.losses``). Domain A is the content (the images to re-texture), domain B
the texture; x_ab = ``g_b.decode(shape of a, texture of b)`` is the translation wanted, and all
four codes come from ``g_a``'s encoders, as there. A step uses view ``i mod views`` of each
side (``vvk.methods.texture.views``: drawn once, in the reference's order).

This is not ``vvk.engine``'s loop, which makes one optimizer step of one loss: the reference
updates the discriminators, then computes the generators' adversarial loss with the updated
ones, which one combined step would not reproduce. It keeps the loop's run folder, metrics,
progress bar, checkpoints and stop-on-signal (``RunDir``, ``TrainLog``, ``StopRequest``): a
signal finishes the step, saves, and the run reports ``interrupted``; ``resume=True`` continues
from the newest checkpoint, bit for bit on the CPU (nothing in a step draws random numbers).

The run folder holds, besides the loop's files, ``preset.json`` (the resolved preset and the
images, for ``resume``) and, once finished, ``texture.safetensors`` (``save_texture_model``):
the two generators and the texture's code, all ``vvk.methods.texture.translate`` needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vvk.atomic import atomic_write_text
from vvk.engine import TrainConfig
from vvk.engine.config import check_ranges
from vvk.engine.optim import build_optimizer, lr_at, set_lr
from vvk.engine.report import TrainLog
from vvk.engine.signals import StopRequest
from vvk.engine.state import RunDir, rng_state, seed_all, set_rng_state
from vvk.errors import VvkError
from vvk.methods.overrides import apply_overrides, from_dict, to_dict
from vvk.methods.texture.images import read_content, read_texture
from vvk.methods.texture.losses import (
    VGG19_WEIGHTS,
    load_perceptual_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    texture_code_loss,
)
from vvk.methods.texture.views import VIEWS, fixed_views

METHOD = "texture"
PRESET_FILE = "preset.json"
MODEL_FILE = "texture.safetensors"
# LR drops of StepLR(step_size=1000, gamma=0.1), stepped once an iteration (train.py).
DECAY_EVERY = 1000


@dataclass(frozen=True)
class TexturePreset:
    """How to train one texture model. The defaults are the ``paper`` preset, the reference's
    ``configs/single2single.yaml`` as ``train.py`` runs it.

    Attributes:
        size: side of the square training views, and of the translation (utils.py data_size).
        views: fixed views of each side (utils.py ``num``).
        steps: iterations, one view pair each at batch 1. train.py runs epochs 0 to max_epochs
            (300) inclusive, 10 views each: 3,010, not the 3,000 often quoted.
        lr: Adam's rate for generators and discriminators (yaml lr_g, lr_d), times ``decay``
            every ``decay_every`` iterations (yaml gamma, step_size: StepLR per iteration).
        beta1, beta2: Adam's betas (yaml beta1, beta2).
        gan_w, cycle_w, idt_w, vgg_w, texture_w: the loss weights (yaml).
        ngf, ndf: generator and discriminator widths (yaml netG.ngf, netD.ndf).
        perceptual: the VGG-19 weights of the perceptual loss (a ``weights.toml`` name); when the
            file is not here the loss is off and the run says so (``vgg_w`` then unused).
        checkpoint_every, log_every: iterations between checkpoints, between metrics lines.
    """

    size: int = 288
    views: int = VIEWS
    steps: int = 3010
    lr: float = 5e-4
    beta1: float = 0.5
    beta2: float = 0.999
    decay: float = 0.1
    decay_every: int = DECAY_EVERY
    gan_w: float = 1.0
    cycle_w: float = 10.0
    idt_w: float = 5.0
    vgg_w: float = 1.0
    texture_w: float = 1.0
    ngf: int = 32
    ndf: int = 32
    perceptual: str = VGG19_WEIGHTS
    checkpoint_every: int = 500
    log_every: int = 10

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                ">= 1": ("views", "steps", "decay_every", "ngf", "ndf", "log_every"),
                ">= 0": ("gan_w", "cycle_w", "idt_w", "vgg_w", "texture_w", "checkpoint_every"),
                "> 0": ("lr",),
                "in [0, 1)": ("beta1", "beta2"),
            },
        )
        if self.size < 16 or self.size % 4:
            raise VvkError(f"size={self.size}: must be a multiple of 4, at least 16 (two stride-2 stages)")

    def train_config(self, seed: int) -> TrainConfig:
        """The ``TrainConfig`` the run records and the optimizers read: Adam is AdamW without
        decay; the step schedule at the reference's iterations."""
        drops = tuple(
            k * self.decay_every / self.steps for k in range(1, (self.steps - 1) // self.decay_every + 1)
        )
        return TrainConfig(
            steps=self.steps, batch_size=1, lr=self.lr, optimizer="adamw", momentum=self.beta1,
            betas2=self.beta2, weight_decay=0.0, schedule="step", decay_at=drops, decay_rate=self.decay,
            checkpoint_every=self.checkpoint_every, log_every=self.log_every, seed=seed, num_workers=0,
        )  # fmt: skip


PRESETS: dict[str, TexturePreset] = {
    "paper": TexturePreset(),
    # CPU-sized: 128² views, half the widths (a quarter of the work of most layers) and 400
    # iterations, the drops at a third and two thirds of the run as the paper preset's.
    "tiny": TexturePreset(size=128, steps=400, decay_every=134, ngf=16, ndf=16, checkpoint_every=100),
}


def resolve_preset(name: str = "tiny", overrides: Sequence[str] = ()) -> TexturePreset:
    """``PRESETS[name]`` with ``--set KEY=VALUE`` overrides."""
    if name not in PRESETS:
        raise VvkError(f"preset={name}: expected one of {', '.join(PRESETS)}", params=["preset"])
    return apply_overrides(PRESETS[name], list(overrides))


@dataclass(frozen=True)
class TextureRun:
    """What ``train_texture`` did: ``status`` finished or interrupted; ``note`` says whether the
    perceptual loss was on."""

    status: str
    step: int
    path: Path
    model_path: Path | None
    losses: dict[str, float]
    seconds: float
    note: str

    def record(self) -> dict[str, Any]:
        model = None if self.model_path is None else str(self.model_path)
        return {"status": self.status, "step": self.step, "run": str(self.path), "model": model,
                "losses": self.losses, "seconds": round(self.seconds, 2),
                "perceptual": self.note}  # fmt: skip


def train_texture(
    texture: str | os.PathLike | None = None,
    contents: Sequence[str | os.PathLike] = (),
    *,
    preset: str | TexturePreset = "tiny",
    overrides: Sequence[str] = (),
    out: str | os.PathLike,
    resume: bool = False,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> TextureRun:
    """Train the texture model of ``texture`` (an image file) for the ``contents`` (image files:
    view ``k`` of the content side is of ``contents[k % len(contents)]``) into the run folder
    ``out``. With ``resume``, ``out``'s recorded texture, contents and preset are used (the
    arguments must then be empty)."""
    from vvk.methods.detection.predict import pick_device
    from vvk.models import build

    run = RunDir(out)
    if resume:
        texture, contents, settings, seed = _recorded(run, texture, contents, overrides)
    else:
        settings = resolve_preset(preset, overrides) if isinstance(preset, str) else preset
        if texture is None:
            raise VvkError("texture: an image file is needed", params=["texture"])
        if not contents:
            raise VvkError("contents: at least one image to learn shapes from", params=["contents"])
    texture_views = fixed_views([read_texture(texture)], settings.size, views=settings.views, seed=seed)
    content_views = fixed_views(
        [read_content(p) for p in contents], settings.size, views=settings.views, seed=seed + 1
    )
    where = pick_device(device)
    perceptual, note = (
        load_perceptual_loss(settings.perceptual, device=where) if settings.vgg_w else (None, "off: vgg_w=0")
    )
    config = dataclasses.replace(settings.train_config(seed), progress=progress)
    run.check(method=METHOD, resume=resume)
    if not resume:
        record = {"preset": to_dict(settings), "texture": str(Path(texture).resolve()),
                  "contents": [str(Path(p).resolve()) for p in contents], "seed": seed}  # fmt: skip
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.path / PRESET_FILE, json.dumps(record, indent=2) + "\n")
    run = RunDir.prepare(out, method=METHOD, config=config, resume=resume, is_main=True)
    seed_all(seed)
    model = build("sitt", ngf=settings.ngf, ndf=settings.ndf).to(where).train()
    step_fn = _Step(model, settings, perceptual)
    generators = torch.nn.ModuleList([model.g_a, model.g_b])
    discriminators = torch.nn.ModuleList([model.d_a, model.d_b])
    opt_g, opt_d = build_optimizer(generators, config), build_optimizer(discriminators, config)
    step = 0
    latest = run.latest() if resume else None
    if latest is not None:
        trainer = run.load(latest, model=model, ema=None, device=where)
        opt_g.load_state_dict(trainer["opt_g"])
        opt_d.load_state_dict(trainer["opt_d"])
        set_rng_state(trainer["rng"])
        step = int(trainer["step"])
        run.trim_metrics(step)
    texture_views, content_views = texture_views.to(where), content_views.to(where)
    log = TrainLog(run, config, active=True, world_size=1, start_step=step)
    start, status, losses = time.perf_counter(), "finished", {}
    sums: dict[str, float] = {}
    counted = 0

    def save() -> None:
        trainer = {"step": step, "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "rng": rng_state()}
        run.save(step, model=model, trainer=trainer, keep=config.keep_checkpoints)

    with StopRequest() as stop, contextlib.closing(log):
        while step < settings.steps:
            lr = lr_at(step, config)
            set_lr(opt_g, lr)
            set_lr(opt_d, lr)
            k = step % settings.views
            values = step_fn(content_views[k : k + 1], texture_views[k : k + 1], opt_g, opt_d)
            step += 1
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
            counted += 1
            stopping = stop.requested is not None
            checkpoint = stopping or (config.checkpoint_every and step % config.checkpoint_every == 0)
            if checkpoint or step % config.log_every == 0 or step == settings.steps:
                losses = {name: round(total / counted, 6) for name, total in sums.items()}
                log.line(step, losses, lr=lr)
                sums, counted = {}, 0
            log.advance(step)
            if checkpoint or step == settings.steps:
                save()
            if stopping:
                status = "interrupted"
                break
        log.finish(status=status, step=step, losses=losses, bad_files={})
    model_path = None
    if status == "finished":
        model_path = save_texture_model(model, texture_views[-1:], run.path / MODEL_FILE, settings)
    return TextureRun(status, step, run.path, model_path, losses, time.perf_counter() - start, note)


class _Step:
    """One iteration of train.py on a view pair: returns the losses, as floats, after both
    updates. ``a``: (1, 3, S, S) content view; ``b``: (1, 3, S, S) texture view."""

    def __init__(self, model, settings: TexturePreset, perceptual):
        self.model, self.w, self.perceptual = model, settings, perceptual

    def __call__(self, a: Tensor, b: Tensor, opt_g, opt_d) -> dict[str, float]:
        m, w = self.model, self.w
        s_a, stats_a = m.g_a.encode_shape(a)  # (1, 128, S/4, S/4), moments per stage
        s_b, stats_b = m.g_a.encode_shape(b)
        t_a, t_b = m.g_a.encode_texture(a), m.g_a.encode_texture(b)  # (1, 128, S/4, S/4)
        x_ab = m.g_b.decode(s_a, t_b, stats_a)  # a's shapes in b's texture: the translation
        x_ba = m.g_a.decode(s_b, t_a, stats_b)

        # Discriminators first, on the translations as they are now (train.py: netD_*.step())
        d_loss = w.gan_w * (
            lsgan_discriminator_loss(m.d_a(x_ba.detach()), m.d_a(a))
            + lsgan_discriminator_loss(m.d_b(x_ab.detach()), m.d_b(b))
        )
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        # Generators, judged by the updated discriminators
        s_ab, stats_ab = m.g_a.encode_shape(x_ab)
        s_ba, stats_ba = m.g_a.encode_shape(x_ba)
        parts = {
            "adv": lsgan_generator_loss(m.d_a(x_ba)) + lsgan_generator_loss(m.d_b(x_ab)),
            "cycle": F.l1_loss(m.g_a.decode(s_ab, t_a, stats_ab), a)
            + F.l1_loss(m.g_b.decode(s_ba, t_b, stats_ba), b),
            "idt": F.l1_loss(m.g_a.decode(s_a, t_a, stats_a), a)
            + F.l1_loss(m.g_b.decode(s_b, t_b, stats_b), b),
        }
        if w.texture_w:
            parts["texture"] = texture_code_loss(t_a, m.g_a.encode_texture(x_ba)) + texture_code_loss(
                t_b, m.g_a.encode_texture(x_ab)
            )
        if self.perceptual is not None and w.vgg_w:
            parts["vgg"] = self.perceptual(x_ab, a) + self.perceptual(x_ba, b)
        weights = {"adv": w.gan_w, "cycle": w.cycle_w, "idt": w.idt_w, "texture": w.texture_w, "vgg": w.vgg_w}
        g_loss = sum(weights[name] * value for name, value in parts.items())
        if not torch.isfinite(g_loss) or not torch.isfinite(d_loss):
            raise VvkError(
                f"the losses are not finite (generators {g_loss.item()}, discriminators {d_loss.item()})"
            )
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        return {"loss": g_loss.item(), "d_loss": d_loss.item(), **{k: v.item() for k, v in parts.items()}}


def _recorded(run: RunDir, texture, contents, overrides) -> tuple[str, list[str], TexturePreset, int]:
    if texture is not None or contents or overrides:
        raise VvkError("--resume: a resumed run keeps its texture, images and preset; pass only --save RUN")
    path = run.path / PRESET_FILE
    if not path.is_file():
        raise VvkError(f"--resume: {run.path} holds no texture run (no {PRESET_FILE})")
    record = json.loads(path.read_text(encoding="utf-8"))
    return (
        record["texture"],
        record["contents"],
        from_dict(TexturePreset(), record["preset"], what=str(path)),
        int(record["seed"]),
    )


def save_texture_model(model, texture_view: Tensor, path: Path, settings: TexturePreset) -> Path:
    """Write what translation needs: both generators and the texture code of ``texture_view``
    (1, 3, S, S), the plain resized view (train.py's evaluation encodes the texture's views
    with netG_A; the code is one vector broadcast over space, so one (128,) vector is kept)."""
    from safetensors.torch import save_file

    from vvk.atomic import atomic_path
    from vvk.methods.texture.translate import batch_statistics

    with torch.no_grad(), batch_statistics(model):
        code = model.g_a.encode_texture(texture_view)[0, :, 0, 0]  # (1, 128, h, w) -> (128,)
    tensors = {f"g_a.{k}": v for k, v in model.g_a.state_dict().items()}
    tensors |= {f"g_b.{k}": v for k, v in model.g_b.state_dict().items()}
    tensors["texture_code"] = code
    metadata = {"format": "vvk-texture", "preset": json.dumps(to_dict(settings))}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path
