"""The translation measures of vvk.eval.texture on real DTD textures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vvk.data.images import load_rgb
from vvk.eval.texture import (
    RandomTextureNetwork,
    edge_correlation,
    gram_distance,
    imagenet_normalised,
    random_texture_network,
    translation_report,
)


@pytest.fixture(scope="module")
def dtd(shared_data: Path) -> dict[str, list[np.ndarray]]:
    """The first two images of the DTD classes banded and bubbly."""
    root = shared_data / "textures" / "dtd"
    return {
        name: [load_rgb(p) for p in sorted((root / name).glob("*.jpg"))[:2]] for name in ("banded", "bubbly")
    }


def halves(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width = image.shape[1]
    return image[:, : width // 2], image[:, width // 2 :]


def test_gram_distance_zero_for_identical_and_symmetric(dtd):
    a, b = dtd["banded"][0], dtd["bubbly"][0]
    assert gram_distance(a, a) == 0.0
    assert gram_distance(a, b) > 0
    assert gram_distance(a, b) == pytest.approx(gram_distance(b, a), rel=1e-6)


def test_gram_distance_flat_image_is_far_from_any_texture(dtd):
    # plain Gram matrices scored a flat grey image as close to a grey texture as the texture's own
    # halves (vvk.eval.texture's docstring): centred and relative, it is at the far end
    a = dtd["banded"][0]
    flat = np.full_like(a, 128)
    assert gram_distance(flat, a) == pytest.approx(1.0)
    assert gram_distance(flat, flat) == 0.0
    assert 0 <= gram_distance(a, dtd["bubbly"][0]) < 1


def test_gram_distance_separates_textures_more_than_crops_of_one(dtd):
    for name in ("banded", "bubbly"):
        left, right = halves(dtd[name][0])
        other = dtd["bubbly" if name == "banded" else "banded"][0]
        within = gram_distance(left, right)
        between = min(gram_distance(left, other), gram_distance(right, other))
        assert between > 3 * within, (name, within, between)


def test_gram_distance_deterministic_and_independent_of_the_global_rng(dtd):
    a, b = dtd["banded"][0], dtd["bubbly"][1]
    first = gram_distance(a, b)
    torch.manual_seed(123)
    fresh = RandomTextureNetwork()  # built again from its own seed: the same weights
    assert gram_distance(a, b, network=fresh) == pytest.approx(first, rel=1e-6)
    assert all(
        torch.equal(p, q)
        for p, q in zip(fresh.parameters(), random_texture_network().parameters(), strict=True)
    )
    assert RandomTextureNetwork(seed=1).convs[0].weight.ne(fresh.convs[0].weight).any()


def test_gram_distance_takes_any_feature_network_and_greyscale(dtd):
    a = dtd["banded"][0]
    pixels = lambda x: [x]  # noqa: E731  the Gram matrix of the RGB values alone
    darker = (a * 0.5).astype(np.uint8)  # half the contrast: a quarter of the covariance
    assert gram_distance(a, darker, network=pixels) == pytest.approx(0.75**2 / (1 + 0.25**2), rel=0.02)
    grey = a.mean(axis=2).astype(np.uint8)  # (H, W): taken as grey RGB
    assert gram_distance(grey, np.repeat(grey[:, :, None], 3, axis=2)) == 0.0


def test_edge_correlation(dtd):
    a, unrelated = dtd["banded"][0], dtd["bubbly"][0]
    assert edge_correlation(a, a) == pytest.approx(1.0)
    brighter = np.clip(a.astype(np.int16) + 40, 0, 255).astype(np.uint8)  # clipped: not exactly linear
    assert edge_correlation(a, brighter) > 0.9
    assert edge_correlation(a, (a * 0.6).astype(np.uint8)) > 0.99
    assert abs(edge_correlation(a, unrelated)) < 0.15
    # b is resized to a's size: a copy at another size still correlates
    half = a[::2, ::2]
    assert edge_correlation(a, half) > 0.5
    flat = np.full_like(a, 128)
    assert edge_correlation(a, flat) == 0.0


def test_translation_report(dtd):
    content, texture = dtd["banded"][0], dtd["bubbly"][0]
    report = translation_report(content, texture, content)  # a "translation" that changed nothing
    assert set(report) == {
        "gram_content_texture",
        "gram_translated_texture",
        "edges_content_translated",
        "edges_content_texture",
    }
    assert report["gram_translated_texture"] == pytest.approx(report["gram_content_texture"])
    assert report["edges_content_translated"] == pytest.approx(1.0)
    assert report["edges_content_texture"] < 0.15
    # the texture itself as the "translation": all the way to the texture, no shapes kept
    report = translation_report(content, texture, texture)
    assert report["gram_translated_texture"] == 0.0
    assert report["edges_content_translated"] == pytest.approx(report["edges_content_texture"])


def test_an_imagenet_network_sees_normalised_inputs(dtd):
    """``imagenet_normalised`` feeds a network what an ImageNet model expects: the wrapped
    network sees exactly (x - mean) / std of what the bare one sees, and the distance changes."""

    def recording(seen: list):
        def network(x):
            seen.append(x)
            return [x]

        return network

    a, b = dtd["banded"][0], dtd["bubbly"][0]
    bare, wrapped = [], []
    raw = gram_distance(a, b, network=recording(bare))
    normalised = gram_distance(a, b, network=imagenet_normalised(recording(wrapped)))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert len(bare) == len(wrapped) > 0
    for x, seen in zip(bare, wrapped, strict=True):
        torch.testing.assert_close(seen, (x - mean) / std)
    assert normalised > 0 and raw > 0 and normalised != pytest.approx(raw, rel=1e-3)
