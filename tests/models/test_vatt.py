"""VATT: token counts and DropToken, position tables, the T5 text encoder over CLIP ids, the UT."""

from __future__ import annotations

import pytest
import torch

from vvk.models import build
from vvk.models.backbones.vatt import _resize_table, drop_tokens
from vvk.models.backbones.vatt_text import (
    CLIP_EOT_TOKEN,
    clip_padding_mask,
    relative_position_bucket,
    tokenize,
)


@pytest.mark.parametrize(
    "name,shape,full,kept",
    [
        ("vatt-video-base", (1, 3, 32, 224, 224), 1568, 784),
        ("vatt-audio-base", (1, 153600), 1200, 600),
        ("vatt-ut-medium", (1, 3, 32, 224, 224), 1568, 784),
        ("vatt-ut-medium", (1, 153600), 1200, 600),
    ],
)
def test_token_counts_with_and_without_droptoken(name, shape, full, kept):
    with torch.device("meta"):
        model = build(name)
        x = torch.zeros(shape)
        assert model.eval()(x)["tokens"].shape[1] == full
        assert model.train()(x)["tokens"].shape[1] == kept


def test_droptoken_is_one_permutation_for_the_whole_batch():
    torch.manual_seed(0)
    # tokens[b, n] = (b, n) so the kept positions can be read back.
    b, n = 3, 10
    tokens = torch.stack(torch.meshgrid(torch.arange(b), torch.arange(n), indexing="ij"), dim=-1).float()
    kept = drop_tokens(tokens, 4)
    positions = kept[..., 1]
    assert kept.shape == (b, 4, 2)
    assert (positions == positions[:1]).all()  # same positions in every sample
    assert len(set(positions[0].tolist())) == 4
    assert (kept[..., 0] == torch.arange(b)[:, None]).all()  # samples never mixed


def test_droptoken_in_a_model_treats_identical_samples_identically():
    torch.manual_seed(0)
    model = build("vatt-video-tiny", dropout=0.0).train()
    clip = torch.randn(1, 3, 4, 32, 32).expand(2, -1, -1, -1, -1)
    out = model(clip)
    assert out["tokens"].shape == (2, 16, 32)  # 2x4x4 = 32 tokens, half kept
    torch.testing.assert_close(out["tokens"][0], out["tokens"][1])
    assert model.eval()(clip)["tokens"].shape == (2, 32, 32)


def test_position_tables_interpolate_to_other_grids():
    table = torch.randn(4, 3)
    assert torch.equal(_resize_table(table, 4), table)
    doubled = _resize_table(table, 8)
    torch.testing.assert_close(doubled[::2], table)  # trained positions are kept exactly
    torch.testing.assert_close(doubled[1], (table[0] + table[1]) / 2)
    # 8 frames instead of the 4 the tiny video model was built for: 4x4x4 = 64 tokens.
    model = build("vatt-video-tiny").eval()
    assert model(torch.randn(1, 3, 8, 32, 32))["tokens"].shape == (1, 64, 32)


def test_relative_position_buckets_match_t5():
    relative = torch.tensor([0, -1, 1, -7, -8, -20, 20, -63, -100, 100])
    buckets = relative_position_bucket(relative, num_buckets=32, max_distance=64)
    # key before the query: lower half; after: upper half (+16); exact below 8, log-spaced above.
    assert buckets.tolist() == [0, 1, 17, 7, 8, 11, 27, 15, 15, 31]


def test_tokenizer_works_offline_and_marks_padding_after_eot():
    ids = tokenize(["a dog runs", "a cat"], context_length=16)
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    assert (ids[:, 0] == 49406).all()
    eot = (ids == CLIP_EOT_TOKEN).int().argmax(dim=1)
    mask = clip_padding_mask(ids)
    assert mask.sum(dim=1).tolist() == (eot + 1).tolist()
    no_eot = torch.tensor([[49406, 320, 1929]])
    assert clip_padding_mask(no_eot).all()


@pytest.mark.parametrize("name", ["vatt-text-tiny", "vatt-ut-tiny"])
def test_text_padding_is_ignored_but_words_are_not(name):
    torch.manual_seed(0)
    model = build(name).eval()
    ids = tokenize(["a dog runs on the grass"], context_length=16)
    noisy = ids.clone()
    end = int((ids[0] == CLIP_EOT_TOKEN).nonzero()[0])
    noisy[0, end + 1 :] = torch.randint(1, 49000, (16 - end - 1,))
    other_word = ids.clone()
    other_word[0, 2] = 2368
    pooled = model(ids)["pooled"]
    torch.testing.assert_close(model(noisy)["pooled"], pooled)
    assert not torch.allclose(model(other_word)["pooled"], pooled)


def test_t5_encoder_shares_one_relative_bias_and_has_no_attention_biases():
    with torch.device("meta"):
        model = build("vatt-text-small")
    assert model.relative_bias.weight.shape == (32, 8)
    assert sum("relative" in n for n, _ in model.named_parameters()) == 1
    attn = model.layers[0].attn
    assert attn.q.bias is None and attn.o.bias is None and attn.scale == 1.0
    assert len(model.layers) == 6 and model.output_shape()["pooled"].channels == 512


def test_ut_routes_each_modality_through_the_shared_transformer():
    torch.manual_seed(0)
    model = build("vatt-ut-tiny").eval()
    inputs = {
        "video": torch.randn(2, 3, 4, 32, 32),
        "audio": torch.randn(2, 512),
        "text": tokenize(["a dog", "a cat"], context_length=16),
    }
    out = model(inputs)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "video.tokens": (2, 32, 32),
        "video.pooled": (2, 32),
        "audio.tokens": (2, 32, 32),
        "audio.pooled": (2, 32),
        "text.tokens": (2, 16, 32),
        "text.pooled": (2, 32),
    }
    torch.testing.assert_close(model(inputs["audio"])["pooled"], out["audio.pooled"])
    torch.testing.assert_close(model(inputs["text"])["pooled"], out["text.pooled"])
