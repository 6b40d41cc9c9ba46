"""ViLD's teacher: an aligned image/text embedding space that embeds region crops and category
names (CLIP in the paper).

A :class:`Teacher` gives unit embeddings of image crops (``embed_images``) and of a vocabulary
(``embed_vocabulary``: one row per category, synonyms averaged). Two kinds:

- :class:`ClipTeacher`: an ``open_clip`` CLIP from ``weights.toml`` (``clip-vit-b-32.openai``, the
  paper's), its text side through the 63 prompt templates of :mod:`vvk.methods.vild.text`;
- :class:`StandInTeacher`: a small image encoder and a table of class embeddings that vvk trains
  itself (:func:`train_stand_in_teacher`) on crops of *every* category of the built-in example
  set, with CLIP's contrastive image-to-class objective. It knows the categories the detector
  is never shown boxes of, which is all the open-vocabulary mechanism needs of a teacher; no
  CLIP weights can be downloaded on the machines vvk is tested on. Its text side is the table:
  it knows exactly the names it was trained with.

``load_teacher(spec)`` resolves ``--teacher``: ``stand-in`` (the built-in one, trained once and
cached), a stand-in file (``*.safetensors`` written by :func:`save_stand_in`), or a
``vision-language`` name of ``weights.toml``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.errors import VvkError
from vvk.methods.vild.text import TEMPLATES, clean_name, prompts, text_classifier

STAND_IN = "stand-in"


class Teacher(nn.Module):
    """The interface ViLD needs of a teacher (frozen, in eval mode).

    Attributes:
        name: what recorded embeddings are keyed by (a weights name, or the stand-in's).
        dim: the embedding width D.
        image_size: the side crops are resized to before ``embed_images``.
    """

    name: str
    dim: int
    image_size: int

    def embed_images(self, crops: Tensor) -> Tensor:
        """(N, 3, S, S) RGB in 0..1 -> (N, D) unit embeddings."""
        raise NotImplementedError

    def embed_vocabulary(self, vocabulary: Sequence[Sequence[str]]) -> Tensor:
        """K categories, each a list of synonyms (its name first) -> (K, D) unit embeddings."""
        raise NotImplementedError

    def check_text(self, text: str) -> None:
        """A one-line ``VvkError`` if ``text`` cannot be embedded as it is (cheap: no encoding)."""


class ClipTeacher(Teacher):
    """An open_clip CLIP: crops normalised with OpenAI's statistics at the model's input size;
    names through the prompt templates, tokenised by open_clip's bundled BPE (offline)."""

    def __init__(self, model: nn.Module, *, name: str, templates: Sequence[str] = TEMPLATES):
        super().__init__()
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self.model = model.eval().requires_grad_(False)
        self.name, self.templates = name, tuple(templates)
        size = model.visual.image_size
        self.image_size = size[0] if isinstance(size, tuple | list) else int(size)
        self.dim = int(model.text_projection.shape[-1])
        self.register_buffer("mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def embed_images(self, crops: Tensor) -> Tensor:
        return F.normalize(self.model.encode_image((crops - self.mean) / self.std).float(), dim=-1)

    @torch.no_grad()
    def embed_vocabulary(self, vocabulary: Sequence[Sequence[str]]) -> Tensor:
        from open_clip import tokenize

        for synonyms in vocabulary:
            for name in synonyms:
                self.check_text(name)
        device, context = self.mean.device, self.context_length
        return text_classifier(
            lambda texts: self.model.encode_text(tokenize(texts, context).to(device)),
            vocabulary,
            self.templates,
        )

    @property
    def context_length(self) -> int:
        """The tokens the text encoder reads, start and end tokens included (CLIP: 77)."""
        return int(self.model.context_length)

    def check_text(self, name: str) -> None:
        """Refuse a name whose longest prompt exceeds the text encoder's context: open_clip's
        tokenizer would cut it silently, and a cut query asks for something else than was typed."""
        from open_clip.tokenizer import SimpleTokenizer

        tokenizer = _bpe(SimpleTokenizer)
        longest = max(prompts(name, self.templates), key=lambda text: len(tokenizer.encode(text)))
        tokens = len(tokenizer.encode(longest)) + 2  # the start and end tokens
        if tokens > self.context_length:
            raise VvkError(
                f"query {name!r}: {tokens} tokens in its longest prompt, more than the "
                f"{self.context_length} of {self.name}'s text encoder",
                hint="shorten it: vvk refuses a query rather than truncate it",
            )


@functools.cache
def _bpe(tokenizer_class: type):
    return tokenizer_class()  # reads the bundled BPE vocabulary: once per process


class StandInTeacher(Teacher):
    """A small CNN image encoder and a table of K class embeddings, trained together so that a
    crop's embedding is closest to its class's row (:func:`train_stand_in_teacher`).

    Args:
        names: the K class names the table rows stand for (cleaned as the text classifier cleans
            names, so "Seven" and "seven" are one).
        dim: the embedding width.
        image_size: the crop side.
        width: channels of the first conv (doubled at each of the three strided stages).
    """

    def __init__(self, names: Sequence[str], *, dim: int = 64, image_size: int = 32, width: int = 32):
        super().__init__()
        self.names = [clean_name(n) for n in names]
        if len(set(self.names)) != len(self.names):
            raise VvkError(f"stand-in teacher: duplicate class names in {list(names)}")
        self.name, self.dim, self.image_size, self.width = STAND_IN, dim, image_size, width

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.encoder = nn.Sequential(
            *stage(3, width), *stage(width, 2 * width), *stage(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, dim),
        )  # fmt: skip
        self.table = nn.Parameter(torch.randn(len(self.names), dim) * dim**-0.5)  # (K, D)
        self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07).log())  # CLIP's initial temperature

    def forward(self, crops: Tensor) -> Tensor:
        """(N, 3, S, S) -> (N, K) logits against the table, for training."""
        table = F.normalize(self.table, dim=-1)
        return self.logit_scale.exp() * F.normalize(self.encoder(crops), dim=-1) @ table.t()

    @torch.no_grad()
    def embed_images(self, crops: Tensor) -> Tensor:
        return F.normalize(self.encoder(crops).float(), dim=-1)

    @torch.no_grad()
    def embed_vocabulary(self, vocabulary: Sequence[Sequence[str]]) -> Tensor:
        rows = []
        for synonyms in vocabulary:
            known = [self.names.index(clean_name(s)) for s in synonyms if clean_name(s) in self.names]
            if not known:
                self.check_text(synonyms[0])
            rows.append(F.normalize(self.table[known], dim=-1).mean(dim=0))
        return F.normalize(torch.stack(rows), dim=-1)

    def check_text(self, text: str) -> None:
        """Its text side is a table: it embeds exactly the names it was trained with."""
        if clean_name(text) not in self.names:
            raise VvkError(
                f"vocabulary: the stand-in teacher does not know '{text}'",
                hint=f"it knows only {', '.join(self.names)}; use a CLIP teacher for other names",
            )


def save_stand_in(teacher: StandInTeacher, path: str | os.PathLike, *, metadata: dict | None = None) -> Path:
    """Write a stand-in teacher as safetensors, its names and sizes in the header (atomically)."""
    from safetensors.torch import save_file

    from vvk.atomic import atomic_path

    header = {"vvk_teacher": STAND_IN, "names": teacher.names, "dim": teacher.dim,
              "image_size": teacher.image_size, "width": teacher.width, **(metadata or {})}  # fmt: skip
    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in teacher.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"vvk": json.dumps(header)})
    return path


def load_stand_in(path: str | os.PathLike) -> StandInTeacher:
    """A stand-in teacher written by :func:`save_stand_in`; anything else is a one-line error."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            header = json.loads((f.metadata() or {}).get("vvk", "{}"))
        state = load_file(str(path))
    except (OSError, SafetensorError, json.JSONDecodeError) as e:
        raise VvkError(
            f"teacher={path}: not a readable safetensors file ({e})", params=("teacher",)
        ) from None
    if header.get("vvk_teacher") != STAND_IN:
        raise VvkError(f"teacher={path}: not a stand-in teacher written by vvk", params=("teacher",))
    teacher = StandInTeacher(
        header["names"], dim=header["dim"], image_size=header["image_size"], width=header["width"]
    )
    from vvk.models.checkpoint import load_strictly
    from vvk.weights import sha256_file

    load_strictly(path, lambda: teacher.load_state_dict(state, strict=False))
    # named by its file's contents: embeddings made by one stand-in never pass for another's
    teacher.name = f"{STAND_IN}-{sha256_file(path)[:12]}"
    return teacher.eval().requires_grad_(False)


@functools.cache
def shared_teacher(spec: str) -> Teacher:
    """``load_teacher(spec)`` on the CPU, once per process: a query-modulated detector's text
    encoder and the training plan that checks its queries read one copy (a CLIP is 600 MB)."""
    return load_teacher(spec)


def load_teacher(spec: str | os.PathLike, *, device: str | torch.device = "cpu") -> Teacher:
    """The teacher ``--teacher`` names: ``stand-in``, a stand-in file, or a vision-language
    entry of ``weights.toml`` (an open_clip CLIP)."""
    spec = str(spec)
    if spec == STAND_IN:
        from vvk.methods.vild.stand_in import built_in_stand_in

        return built_in_stand_in().to(device)
    if spec.endswith(".safetensors"):
        if not os.path.isfile(spec):
            raise VvkError(f"teacher={spec}: no such file", params=("teacher",))
        return load_stand_in(spec).to(device)
    from vvk.models.pretrained import load
    from vvk.weights import lookup

    entry = lookup(spec)
    if entry is None:
        raise VvkError(
            f"teacher={spec}: not a teacher vvk knows",
            hint="stand-in, a stand-in .safetensors file, or a CLIP (vvk weights list --model 'open_clip:*')",
            params=("teacher",),
        )
    model = load(spec, tasks={"vision-language"}, map_location=device)
    return ClipTeacher(model, name=entry.name).to(device)
