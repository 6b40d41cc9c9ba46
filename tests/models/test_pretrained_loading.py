"""`vvk.models.load(NAME)`: weights entries of each source, made here in that source's format,
found in their local caches offline, checked against their sha256 and loaded strictly."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
import time
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
import torchvision
from open_clip.model import convert_weights_to_lp
from torch import Tensor, nn

from vvk.errors import VvkError
from vvk.models import build, load, register, save
from vvk.models.registry import unregister
from vvk.paths import cache_dir, torch_hub_checkpoints
from vvk.testing import link_videos, twelve_real_videos
from vvk.weights import Source, WeightsEntry, cached_path, sha256_file

TINY_CLIP = "vvk-test-tiny-clip"
DEEPER_CLIP = "vvk-test-tiny-clip-2-layers"  # same widths, one more layer per tower
TOY = "test-pretrained-toy"


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty vvk and torch hub caches, downloads off: only what a test places there loads."""
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "vvk-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VVK_OFFLINE", "1")
    return tmp_path


def _entry(
    name: str,
    architecture: str,
    task: str,
    file: Path,
    *,
    source: Source | None = None,
    sha256: str | None = None,
) -> WeightsEntry:
    """The registry entry of ``file`` (default: from a made-up URL; sha256: the file's, only its
    first 8 hex digits for a torchvision source, as torchvision publishes)."""
    source = source or Source(kind="url", url=f"https://example.org/{file.name}")
    if sha256 is None:
        sha256 = sha256_file(file)[: 8 if source.kind == "torchvision" else 64]
    return WeightsEntry(
        name=name,
        architecture=architecture,
        task=task,
        source=source,
        file=file.name,
        sha256=sha256,
        license="MIT",
        paper="https://example.org",
        metrics={},
    )


def _url_cache(name: str, file: str) -> Path:
    """Where a url entry ``name`` keeps ``file`` (vvk's cache)."""
    path = cache_dir() / "weights" / name / file
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _flip_last_byte(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))


# ---------------------------------------------------------------------------------------------
# torchvision: a state dict in torch hub's cache, named as torchvision names its files


@pytest.fixture
def mobilenet(caches):
    """A torchvision mobilenet_v3_small with non-trivial BN statistics, saved as torchvision's files are."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small()
    model.train()(torch.randn(4, 3, 64, 64))  # move the BN running statistics off their defaults
    staged = caches / "mobilenet_v3_small.pth"
    torch.save(model.state_dict(), staged)
    target = torch_hub_checkpoints() / f"mobilenet_v3_small-{sha256_file(staged)[:8]}.pth"
    target.parent.mkdir(parents=True)
    staged.rename(target)
    source = Source(kind="torchvision", torchvision="MobileNet_V3_Small_Weights.IMAGENET1K_V1")
    entry = _entry(
        "mobilenet_v3_small.test", "torchvision:mobilenet_v3_small", "image-backbone", target, source=source
    )
    return model.eval(), entry


def test_torchvision_state_dict_loads_into_its_builder(mobilenet):
    source, entry = mobilenet
    model = load(entry.name, registry={entry.name: entry})
    assert type(model) is torchvision.models.MobileNetV3
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.eval()(x), source(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# open_clip: OpenAI's TorchScript archive and open_clip's state-dict forms, for a tiny config


@pytest.fixture(scope="module")
def tiny_clip_configs(tmp_path_factory):
    """Two tiny open_clip configs (1 and 2 layers per tower), known to open_clip from here on."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, layers in ((TINY_CLIP, 1), (DEEPER_CLIP, 2)):
        config = {
            "embed_dim": 16,
            "quick_gelu": True,
            "vision_cfg": {"image_size": 32, "layers": layers, "width": 64, "patch_size": 16},
            "text_cfg": {
                "context_length": 77,
                "vocab_size": 49408,
                "width": 64,
                "heads": 1,
                "layers": layers,
            },
        }
        (folder / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder / f"{name}.json")


@pytest.fixture
def tiny_clip(tiny_clip_configs):
    torch.manual_seed(0)
    return open_clip.create_model(TINY_CLIP, pretrained=None).eval()


class _Tensors(nn.Module):
    """Tensors under their dotted state-dict names, as a module TorchScript can save."""

    def __init__(self, tensors: dict[str, Tensor]):
        super().__init__()
        for key, value in tensors.items():
            *parents, leaf = key.split(".")
            module: nn.Module = self
            for part in parents:
                if not hasattr(module, part):
                    module.add_module(part, nn.Module())
                module = getattr(module, part)
            module.register_buffer(leaf, value)

    def forward(self, x: Tensor) -> Tensor:
        return x


def _save_openai_archive(model: nn.Module, path: Path) -> nn.Module:
    """Save ``model`` as OpenAI published CLIP: a TorchScript archive whose state dict holds the
    weights (most in float16) and input_resolution, context_length, vocab_size. Returns the model
    those float16 weights define. (A traced CLIP would not do: tracing saves open_clip's
    non-persistent attention mask, which OpenAI's archives do not hold.)"""
    half = copy.deepcopy(model)
    convert_weights_to_lp(half)  # what OpenAI's archives hold in float16
    extras = {"input_resolution": 32, "context_length": 77, "vocab_size": 49408}
    tensors = {**half.state_dict(), **{k: torch.tensor(v) for k, v in extras.items()}}
    with warnings.catch_warnings():  # torch.jit is deprecated, but it is the format OpenAI used
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(_Tensors(tensors)).save(str(path))
    return half.float().eval()


def _save_state_dict(model: nn.Module, path: Path, form: str) -> None:
    if form == "open_clip_pytorch_model.bin":  # the Hugging Face Hub files of open_clip
        torch.save(model.state_dict(), path)
    elif form == "open_clip_model.safetensors":
        from safetensors.torch import save_model

        save_model(model, str(path))
    else:  # open_clip's training script: DistributedDataParallel keys, wrapped with its epoch
        torch.save(
            {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path
        )


def _assert_same_clip(model: nn.Module, reference: nn.Module) -> None:
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    texts = open_clip.get_tokenizer(TINY_CLIP)(["a photo of a cat", "a diagram"])
    model.eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    torch.testing.assert_close(model.encode_image(images), reference.encode_image(images), rtol=0, atol=0)
    torch.testing.assert_close(model.encode_text(texts), reference.encode_text(texts), rtol=0, atol=0)


def test_openai_torchscript_archive_loads(caches, tiny_clip):
    path = _url_cache("tiny-clip.openai", "tiny.pt")
    reference = _save_openai_archive(tiny_clip, path)
    entry = _entry("tiny-clip.openai", f"open_clip:{TINY_CLIP}", "vision-language", path)
    with torch.no_grad():
        _assert_same_clip(load(entry.name, registry={entry.name: entry}), reference)


@pytest.mark.parametrize("form", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors", "epoch_3.pt"])
def test_open_clip_state_dicts_load(caches, tiny_clip, form, monkeypatch):
    path = _url_cache("tiny-clip.test", form)
    _save_state_dict(tiny_clip, path, form)
    entry = _entry("tiny-clip.test", f"open_clip:{TINY_CLIP}", "vision-language", path)
    unpickled_with = []
    real_torch_load = torch.load

    def spy(*args, **kwargs):
        unpickled_with.append(kwargs.get("weights_only"))
        return real_torch_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with torch.no_grad():
        _assert_same_clip(load(entry.name, registry={entry.name: entry}), tiny_clip)
    assert all(unpickled_with), "a pickled state dict is read with weights_only=True"


# ---------------------------------------------------------------------------------------------
# vvk's own safetensors, published without its sidecar


@pytest.fixture
def toy():
    @register(TOY, task="video-backbone", default_input=(3, 2, 8, 8), source="tests")
    def toy_builder(width: int = 4):
        return nn.Sequential(nn.Conv3d(3, width, 1), nn.BatchNorm3d(width))

    yield TOY
    unregister(TOY)


@pytest.fixture
def toy_weights(caches, toy):
    torch.manual_seed(0)
    model = build(toy, width=5)
    model(torch.randn(2, 3, 2, 8, 8))  # non-trivial BN statistics
    staged = save(model, caches / "toy.safetensors")
    path = _url_cache("toy.test", "toy.safetensors")
    staged.rename(path)  # the sidecar stays behind: the file's own metadata rebuilds it
    return model.eval(), _entry("toy.test", toy, "video-backbone", path)


def test_vvk_checkpoint_loads_by_name(toy_weights):
    source, entry = toy_weights
    model = load(entry.name, registry={entry.name: entry}, tasks={"video-backbone"})
    x = torch.randn(1, 3, 2, 8, 8)
    torch.testing.assert_close(model.eval()(x), source(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Refusals: a changed byte, the wrong architecture, a missing file offline, the wrong task


@pytest.fixture
def cached_entry(request, caches, tiny_clip_configs):
    """An entry of the source ``request.param`` names, with its file in its cache."""
    if request.param == "torchvision":
        return request.getfixturevalue("mobilenet")[1]
    if request.param == "vvk":
        return request.getfixturevalue("toy_weights")[1]
    path = _url_cache("tiny-clip.openai", "tiny.pt")
    _save_openai_archive(request.getfixturevalue("tiny_clip"), path)
    return _entry("tiny-clip.openai", f"open_clip:{TINY_CLIP}", "vision-language", path)


@pytest.mark.parametrize("cached_entry", ["torchvision", "open_clip", "vvk"], indirect=True)
def test_a_changed_byte_is_a_sha256_error(cached_entry):
    _flip_last_byte(cached_path(cached_entry))
    with pytest.raises(VvkError, match=rf"sha256 mismatch for weights '{cached_entry.name}'"):
        load(cached_entry.name, registry={cached_entry.name: cached_entry})


@pytest.mark.parametrize(
    "cached_entry,architecture,message",
    [
        (
            "torchvision",
            "torchvision:resnet18",
            r"does not fit the model: \d+ missing key\(s\): bn1\.bias, .*"
            r"; \d+ unexpected key\(s\): classifier\.0\.bias, ",
        ),
        (
            "open_clip",
            f"open_clip:{DEEPER_CLIP}",
            r"does not fit the model: \d+ missing key\(s\): "
            r"transformer\.resblocks\.1\.",
        ),
        ("vvk", "other-toy", rf"holds a '{TOY}' model, not the registered 'other-toy'"),
    ],
    indirect=["cached_entry"],
)
def test_a_wrong_architecture_is_a_one_line_error_naming_file_and_keys(cached_entry, architecture, message):
    wrong = dataclasses.replace(cached_entry, architecture=architecture)
    with pytest.raises(VvkError) as info:
        load(wrong.name, registry={wrong.name: wrong})
    text = str(info.value)
    assert text.startswith(f"{cached_path(wrong)}: ") and "\n" not in text
    assert re.search(message, text), text


def test_offline_missing_file_is_a_clear_error(caches):
    source = Source(kind="url", url="http://10.255.255.1/never.pt")  # unroutable: would hang online
    entry = _entry(
        "absent.test", "open_clip:RN50", "vision-language", Path("never.pt"), source=source, sha256="0" * 64
    )
    start = time.monotonic()
    with pytest.raises(VvkError, match=r"never.pt.*downloads are off.*vvk weights pull absent.test"):
        load(entry.name, registry={entry.name: entry})
    assert time.monotonic() - start < 5


def test_wrong_task_is_refused_before_any_download(caches):
    # clip.pt is in no cache: trying to fetch it would be a different error.
    entry = _entry("clip.test", "open_clip:RN50", "vision-language", Path("clip.pt"), sha256="0" * 64)
    with pytest.raises(VvkError, match=r"weights 'clip.test' .* has task 'vision-language'; this needs"):
        load(entry.name, registry={entry.name: entry}, tasks={"video-backbone"})


# ---------------------------------------------------------------------------------------------
# Commands that take --weights: a NAME builds the right model, a model of another task is refused


@pytest.fixture
def named_r3d(caches, monkeypatch):
    """A saved r3d-tiny, registered (as ``r3d-tiny.test``) beside a CLIP entry; returns the saved file."""
    torch.manual_seed(0)
    saved = save(build("r3d-tiny"), caches / "run" / "backbone.safetensors")
    cached = _url_cache("r3d-tiny.test", saved.name)
    shutil.copyfile(saved, cached)
    entries = [
        _entry("r3d-tiny.test", "r3d-tiny", "video-backbone", cached),
        _entry("clip.test", "open_clip:RN50", "vision-language", Path("clip.pt"), sha256="0" * 64),
    ]
    monkeypatch.setattr("vvk.weights.load_registry", lambda path=None: {e.name: e for e in entries})
    return saved


def test_eval_retrieval_takes_a_weights_name(cli, shared_data, tmp_path, named_r3d):
    videos = link_videos(tmp_path / "videos", twelve_real_videos(shared_data)[:4])
    command = ("eval", "retrieval", "--data", str(videos), "--frames", "4", "--size", "64", "--crop", "56")
    by_name = cli(*command, "--weights", "r3d-tiny.test", "--compare-random", "--json")
    by_path = cli(*command, "--weights", str(named_r3d), "--compare-random", "--json")
    assert by_name.code == 0 and by_path.code == 0, by_name.stderr + by_path.stderr
    named, pathed = json.loads(by_name.stdout), json.loads(by_path.stdout)
    assert named.pop("weights") == "r3d-tiny.test" and pathed.pop("weights") == str(named_r3d)
    assert named == pathed
    wrong = cli(*command, "--weights", "clip.test")
    assert wrong.code == 1
    (line,) = wrong.stderr.strip().splitlines()
    assert "weights 'clip.test' (open_clip:RN50) has task 'vision-language'" in line
    assert "video-backbone" in line
