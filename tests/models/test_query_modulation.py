"""Query modulation (vvk.models.detectors.query_modulation): a fresh module is the identity, on
its own and inside a registry RetinaNet; FiLM's formula by hand; product fusion's shapes and its
indifference to the query's scale; training makes the detector depend on the query and reaches
the encoders; the adapter's context; the encoders' errors and the text encoder's cache."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from vvk.errors import VvkError
from vvk.methods.vild.teacher import StandInTeacher
from vvk.models import build
from vvk.models.detectors.query_modulation import (
    FiLM,
    LabelQueryEncoder,
    ModulatedFeatures,
    ProductFusion,
    TextQueryEncoder,
    query_modulation,
)

DETECTOR = "retinanet-spinenet-mobile-tiny"
CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
LEVELS = ("P3", "P4")
KINDS = ["film", "product"]
TARGETS = [
    {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
    {"boxes": torch.tensor([[20.0, 12.0, 60.0, 52.0]]), "labels": torch.tensor([2])},
]


def _features(batch: int = 2, channels: int = 8) -> dict[str, Tensor]:
    # channels-last, as the detectors' backbones hand them over
    return {
        level: torch.randn(batch, channels, size, size + 1).contiguous(memory_format=torch.channels_last)
        for level, size in zip(LEVELS, (6, 3), strict=True)
    }


def _add_noise(module: nn.Module, std: float = 0.5) -> nn.Module:
    """Noise on every parameter: zero-initialised layers no longer hide the query."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module


def _detector():
    # score 0: every image has detections, so comparing them compares boxes and scores
    return build(DETECTOR, categories=CATEGORIES, score_threshold=0.0)


def _modulated_detector(kind: str, encoder: nn.Module | None = None, query_dim: int = 8):
    # noise: a fresh detector's features are so small that its outputs round to the same values
    # whatever they are; a comparison of outputs would then prove nothing
    model = _add_noise(_detector(), 0.05)
    levels, channels = model.backbone.levels, model.backbone.out_channels
    module = query_modulation(kind, channels=channels, query_dim=query_dim, levels=levels)
    adapter = ModulatedFeatures(module, encoder=encoder)
    model.set_feature_modulation(adapter)
    return model, adapter


def _images() -> Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _same_detections(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> bool:
    assert all(len(x["boxes"]) > 0 for x in a + b)
    return all(
        torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in ("boxes", "scores", "labels")
    )


# ---------------------------------------------------------------------------------------------
# The modules


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("training", [True, False])
def test_a_fresh_module_returns_the_features_exactly(kind, training):
    torch.manual_seed(0)
    module = query_modulation(kind, channels=8, query_dim=5, levels=LEVELS).train(training)
    features = _features()
    out = module(features, torch.randn(2, 5))
    assert list(out) == list(LEVELS)
    assert all(torch.equal(out[level], features[level]) for level in LEVELS)


def test_film_matches_hand_computed_values():
    module = FiLM(channels=2, query_dim=1, levels=["P3"])
    with torch.no_grad():
        module.affine["P3"].weight.copy_(torch.tensor([[1.0], [2.0], [3.0], [4.0]]))  # gamma 1, 2; beta 3, 4
        module.affine["P3"].bias.zero_()
    x = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1).expand(2, 2, 1, 2)  # both images: channels 2, -1
    out = module({"P3": x}, torch.tensor([[0.5], [-1.0]]))["P3"]
    # image 0: gamma (0.5, 1), beta (1.5, 2): 2·1.5 + 1.5 = 4.5, -1·2 + 2 = 0
    # image 1: gamma (-1, -2), beta (-3, -4): 2·0 - 3 = -3, -1·(-1) - 4 = -3
    expected = torch.tensor([[4.5, 0.0], [-3.0, -3.0]]).view(2, 2, 1, 1).expand(2, 2, 1, 2)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("training", [True, False])
def test_product_fusion_keeps_shapes_and_ignores_the_scale_of_the_query(training):
    torch.manual_seed(0)
    module = _add_noise(ProductFusion(channels=8, query_dim=5, levels=LEVELS)).train(training)
    features, query = _features(batch=3), torch.randn(3, 5)
    out = module(features, query)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in features.items()}
    scaled = module(features, query * torch.tensor([[7.0], [0.1], [3.0]]))
    other = module(features, torch.randn(3, 5))
    for level in LEVELS:
        assert not torch.allclose(out[level], features[level])  # it modulates...
        torch.testing.assert_close(scaled[level], out[level])  # ...by the query's direction alone
        assert not torch.allclose(other[level], out[level])


def test_product_fusion_trains_on_a_single_query_with_the_running_statistics():
    torch.manual_seed(0)
    module = _add_noise(ProductFusion(channels=8, query_dim=5, levels=LEVELS)).train()
    norm = module.text_norm
    running = norm.running_mean.clone(), norm.running_var.clone()
    query = torch.randn(1, 5)
    trained = module.embed_query(query)
    assert torch.equal(norm.running_mean, running[0]) and torch.equal(norm.running_var, running[1])
    torch.testing.assert_close(trained, module.eval().embed_query(query))
    module.train()(_features(batch=1), query)  # the whole module, too


def test_the_query_must_have_one_row_per_image():
    module = FiLM(channels=8, query_dim=5, levels=LEVELS)
    with pytest.raises(ValueError, match=r"query: expected \(2, 5\), one row per image, got \(3, 5\)"):
        module(_features(), torch.randn(3, 5))
    with pytest.raises(ValueError, match="features: levels"):
        module({"P3": _features()["P3"]}, torch.randn(2, 5))


def test_the_builder_names_its_kinds_and_options():
    assert isinstance(query_modulation("film", channels=4, query_dim=3, levels=LEVELS), FiLM)
    product = query_modulation("product", channels=4, query_dim=3, levels=LEVELS, fused_dim=6)
    assert isinstance(product, ProductFusion) and product.text.out_features == 6
    with pytest.raises(VvkError, match=r"^kind=concat: expected one of film, product$"):
        query_modulation("concat", channels=4, query_dim=3, levels=LEVELS)
    with pytest.raises(VvkError, match="fused_dim: only kind='product'"):
        query_modulation("film", channels=4, query_dim=3, levels=LEVELS, fused_dim=6)


# ---------------------------------------------------------------------------------------------
# In a detector


@pytest.mark.parametrize("kind", KINDS)
def test_a_fresh_module_leaves_the_detector_exactly_as_it_was(kind):
    torch.manual_seed(0)
    model, adapter = _modulated_detector(kind)
    model.eval()
    images = _images()
    query = torch.randn(2, 8)
    with torch.no_grad():
        model.set_feature_modulation(None)
        plain = model(images)
        model.set_feature_modulation(adapter)
        with adapter.querying(query):
            fresh = model(images)
        _add_noise(adapter)
        with adapter.querying(query):
            trained = model(images)
    assert _same_detections(fresh, plain)
    assert not _same_detections(trained, plain)  # the comparison can see a modulation


def test_without_a_query_the_detector_is_a_standard_one():
    torch.manual_seed(0)
    model, adapter = _modulated_detector("film")
    _add_noise(adapter)
    model.eval()
    images = _images()
    with torch.no_grad():
        unqueried = model(images)
        with adapter.querying(torch.randn(2, 8)):
            queried = model(images)
        model.set_feature_modulation(None)
        plain = model(images)
    assert _same_detections(unqueried, plain)
    assert not _same_detections(queried, plain)


def test_the_modules_parameters_are_the_detectors():
    teacher = StandInTeacher(["a", "b"], dim=6, image_size=8, width=4)
    model, adapter = _modulated_detector("product", encoder=TextQueryEncoder(teacher, 8))
    parameters = {id(p) for p in model.parameters()}
    assert all(id(p) in parameters for p in adapter.parameters())
    keys = set(model.state_dict())
    assert "backbone.feature_modulation.modulation.project.P3.weight" in keys
    assert "backbone.feature_modulation.encoder.project.weight" in keys
    assert not any("table" in k for k in keys)  # the frozen teacher stays out


def _encoder(kind: str) -> nn.Module:
    if kind == "label":
        return LabelQueryEncoder(["a", "b"], 8)
    return TextQueryEncoder(StandInTeacher(["a", "b"], dim=6, image_size=8, width=4), 8)


def _training_step(model, adapter, optimizer) -> None:
    model.train()
    optimizer.zero_grad()
    with adapter.querying(["a", "b"]):
        losses = model(_images(), TARGETS)
    sum(losses.values()).backward()
    optimizer.step()


@pytest.mark.parametrize("encoder", ["label", "text"])
@pytest.mark.parametrize("kind", KINDS)
def test_training_reaches_the_encoder_and_makes_the_features_depend_on_the_query(kind, encoder):
    torch.manual_seed(0)
    model, adapter = _modulated_detector(kind, encoder=_encoder(encoder))
    # Adam: steps of about lr whatever the gradient's size, so two steps move the query's effect
    # well above rounding (SGD's first steps on this tiny detector barely do)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    first = adapter.encoder.embedding.weight if encoder == "label" else adapter.encoder.project.weight

    _training_step(model, adapter, optimizer)
    assert not first.grad.any()  # the zero-initialised layer blocks the way on the first step
    _training_step(model, adapter, optimizer)
    assert first.grad.abs().sum() > 0

    model.eval()
    image = _images()[:1]
    canvas = model.transform(list(image))[0].tensors  # (1, 3, S, S)
    with torch.no_grad():
        with adapter.querying(["a"]):
            as_a, logits_a = model.backbone(canvas), model.profile_forward(image)["cls_logits"]
        with adapter.querying(["b"]):
            as_b, logits_b = model.backbone(canvas), model.profile_forward(image)["cls_logits"]
    for level, features in as_a.items():
        assert (features - as_b[level]).abs().max() > 1e-3 * features.abs().max(), level
    assert not torch.equal(logits_a, logits_b)


# ---------------------------------------------------------------------------------------------
# The adapter


def test_querying_restores_the_previous_query():
    adapter = ModulatedFeatures(_add_noise(FiLM(channels=8, query_dim=5, levels=LEVELS)))
    features, outer, inner = _features(), torch.randn(2, 5), torch.randn(2, 5)
    with adapter.querying(outer):
        with adapter.querying(inner) as embedded:
            assert embedded is inner
            torch.testing.assert_close(adapter(features), adapter.modulation(features, inner))
        torch.testing.assert_close(adapter(features), adapter.modulation(features, outer))
    with pytest.raises(RuntimeError), adapter.querying(outer):
        raise RuntimeError
    assert adapter(features) is features


def test_only_the_active_images_are_modulated():
    torch.manual_seed(0)
    adapter = ModulatedFeatures(_add_noise(FiLM(channels=8, query_dim=5, levels=LEVELS)))
    features, query = _features(batch=3), torch.randn(1, 5)
    with adapter.querying(query, active=[False, True, False]):
        out = adapter(features)
    alone = adapter.modulation({k: v[1:2] for k, v in features.items()}, query)
    for level in LEVELS:
        assert torch.equal(out[level][[0, 2]], features[level][[0, 2]])
        assert torch.equal(out[level][1:2], alone[level])
        assert not torch.allclose(out[level][1], features[level][1])
    with adapter.querying(query[:0], active=[False, False, False]):
        assert adapter(features) is features
    with pytest.raises(ValueError, match=r"active: expected \(3,\)"), adapter.querying(query, active=[True]):
        adapter(features)


def test_without_an_encoder_the_adapter_takes_embeddings():
    adapter = ModulatedFeatures(FiLM(channels=8, query_dim=5, levels=LEVELS))
    with pytest.raises(TypeError, match="expected \\(B, Q\\) embeddings"), adapter.querying(["a", "b"]):
        pass


# ---------------------------------------------------------------------------------------------
# The encoders


def test_label_queries_are_names_or_indices():
    encoder = LabelQueryEncoder(["mug", "jug", "cat"], 4)
    by_name = encoder(["cat", "mug"])
    assert by_name.shape == (2, 4)
    assert torch.equal(by_name, encoder([2, 0]))
    assert torch.equal(by_name, encoder(torch.tensor([2, 0])))
    assert encoder([]).shape == (0, 4)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("mugg", "query 'mugg': not a label of this model (close: mug, mugs)"),
        ("ugs", "query 'ugs': not a label of this model (close: mugs, mug, jug)"),
        ("zebra", "query 'zebra': not a label of this model (none of its 4 labels is close)"),
        ("", "query '': empty, expected a label's name"),
        (" ", "query ' ': empty, expected a label's name"),
        (4, "query 4: not a label index of this model (0..3)"),
        (-1, "query -1: not a label index of this model (0..3)"),
    ],
)
def test_a_bad_label_query_is_a_one_line_error(query, message):
    encoder = LabelQueryEncoder(["mug", "jug", "cat", "mugs"], 4)
    with pytest.raises(VvkError) as info:
        encoder(["cat", query])
    assert str(info.value) == message


def test_bad_label_encoders_and_batches_are_one_line_errors():
    with pytest.raises(VvkError, match="^names: 'a' appears twice$"):
        LabelQueryEncoder(["a", "b", "a"], 4)
    with pytest.raises(VvkError, match="^names: expected at least one label$"):
        LabelQueryEncoder([], 4)
    with pytest.raises(
        VvkError, match=r"queries: expected one query per image \(a list\), got the string 'mug'"
    ):
        LabelQueryEncoder(["mug"], 4)("mug")


def test_the_text_encoder_embeds_each_string_once():
    torch.manual_seed(0)
    teacher = StandInTeacher(["cat", "dog", "mug"], dim=6, image_size=8, width=4)
    embed, asked = teacher.embed_vocabulary, []

    def counting(vocabulary):
        asked.extend(synonyms[0] for synonyms in vocabulary)
        return embed(vocabulary)

    teacher.embed_vocabulary = counting
    encoder = TextQueryEncoder(teacher, 4)
    first = encoder(["cat", "dog", "cat"])
    assert asked == ["cat", "dog"]
    second = encoder(["dog", "mug", "cat", "mug"])
    assert asked == ["cat", "dog", "mug"]
    assert first.shape == (3, 4)
    torch.testing.assert_close(second[[2, 0]], first[[0, 1]])
    torch.testing.assert_close(first, encoder.project(embed([["cat"], ["dog"], ["cat"]])))
    assert encoder([]).shape == (0, 4) and len(asked) == 3


def test_a_bad_text_query_is_a_one_line_error():
    encoder = TextQueryEncoder(StandInTeacher(["cat"], dim=6, image_size=8, width=4), 4)
    with pytest.raises(VvkError, match="^query '': empty, expected a text$"):
        encoder(["cat", ""])
    with pytest.raises(VvkError, match="^query 3: expected a text$"):
        encoder([3])
    with pytest.raises(VvkError, match="does not know 'zebra'"):  # the teacher's own error
        encoder(["zebra"])
