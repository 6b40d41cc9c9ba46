"""Query-modulated RetinaNets (vvk.models.detectors.qmd): a fresh model's query path is its
one-class head on unmodulated features; training makes the outputs depend on the query and a
negative query's empty target lowers the scores; the multitask model's standard path and mixed
batches; the one-line errors; save / load; the added parameters counted by hand."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from vvk.errors import VvkError
from vvk.methods.vild.teacher import StandInTeacher, save_stand_in
from vvk.models import build, count_params, load, save
from vvk.models.detectors.qmd import QueryModulatedRetinaNet
from vvk.models.detectors.retinanet import RetinaNetDetector

NAME = "qmd-spinenet-mobile-tiny"
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "mug"}]
QUERY_DIM = 8
BOX = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
QUERIED = {"boxes": BOX, "labels": torch.tensor([1])}  # a positive query's target
EMPTY = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}  # a negative's


def _model(seed: int = 0, **kwargs) -> QueryModulatedRetinaNet:
    """A model whose detector (not its modulation) carries noise: a fresh detector's outputs round
    to the same values whatever its features are, and comparing them would prove nothing."""
    torch.manual_seed(seed)
    options = {"categories": CATEGORIES, "query_dim": QUERY_DIM, "score_threshold": 0.0, **kwargs}
    model = build(NAME, **options)
    _add_noise(model.backbone.body, 0.05)
    _add_noise(model.head.net, 0.05)
    _add_noise(model.head.query_classifier, 0.05)
    return model


def _add_noise(module: nn.Module, std: float) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module


def _images(batch: int = 2) -> Tensor:
    return torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _same_detections(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> bool:
    assert all(len(x["boxes"]) > 0 for x in a + b)
    return all(
        torch.equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in ("boxes", "scores", "labels")
    )


def _close_detections(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> None:
    """Equal up to float rounding (a convolution's sums depend on the batch size)."""
    for x, y in zip(a, b, strict=True):
        assert len(x["boxes"]) > 0 and torch.equal(x["labels"], y["labels"])
        torch.testing.assert_close(x["boxes"], y["boxes"], rtol=0, atol=1e-4)
        torch.testing.assert_close(x["scores"], y["scores"], rtol=0, atol=1e-6)


def _sgd_steps(model, images, targets, queries, steps: int, lr: float = 0.05) -> list[dict[str, float]]:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        losses = model(images, targets, queries=queries)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    return history


@torch.no_grad()
def _detect(model, images, queries=None) -> list[dict[str, Tensor]]:
    return model.eval()(images, queries=queries)


# ---------------------------------------------------------------------------------------------
# The query path


@pytest.mark.parametrize(
    ("modulation", "modulate"),
    [("film", "features"), ("product", "features"), ("film", "class_tower"), ("product", "both")],
)
def test_a_fresh_model_answers_a_query_with_its_one_class_head_on_unmodulated_features(modulation, modulate):
    model = _model(modulation=modulation, modulate=modulate)
    images = _images()
    queried = _detect(model, images, ["cat", "dog"])
    with torch.no_grad(), model.head.answering_queries():
        unmodulated = RetinaNetDetector.forward(model, images)  # no query reaches a modulation
    assert _same_detections(queried, unmodulated)
    assert all(bool((d["labels"] == 1).all()) for d in queried)
    modulations = [model.adapter.modulation, model.head.tower_modulation]
    for module in modulations:
        if module is not None:
            _add_noise(module, 0.5)
    assert not _same_detections(_detect(model, images, ["cat", "dog"]), unmodulated)  # it can tell
    assert [m is not None for m in modulations] == [modulate != "class_tower", modulate != "features"]


@pytest.mark.parametrize("modulate", ["features", "class_tower"])
def test_training_makes_the_outputs_depend_on_the_query(modulate):
    model = _model(modulate=modulate)
    image = _images(1)[0]
    # the same image twice: a cat to find, and no dog
    images, targets, queries = [image, image], [QUERIED, EMPTY], ["cat", "dog"]
    before = _training_scores(model, images, targets, queries)
    torch.testing.assert_close(
        before[0], before[1], rtol=0, atol=1e-4
    )  # a fresh modulation ignores the query
    table = model.adapter.encoder.embedding.weight.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # scale-free, as the presets' AdamW
    for _ in range(15):
        losses = model.train()(images, targets, queries=queries)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    cat, dog = _training_scores(model, images, targets, queries)
    assert cat.max() > 0.5 and dog.max() < 0.5 * cat.max()
    # the gradient reached the encoder's two rows asked, not the third
    moved = (model.adapter.encoder.embedding.weight.detach() != table).any(dim=1)
    assert moved.tolist() == [True, True, False]


def test_several_queries_of_an_image_share_its_backbone_pass_and_lose_as_copies_of_it():
    """[[cat, dog], [dog]] on two images is the loss of [img0, img0, img1] asked cat, dog, dog:
    one backbone pass per image, its features repeated (running batch-norm statistics, so that
    the batch's make no difference)."""
    model = _model().train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    _add_noise(model.adapter, 0.5)
    images = _images(2)
    grouped = model(images, [[QUERIED, EMPTY], EMPTY], queries=[["cat", "dog"], "dog"])
    copies = model([images[0], images[0], images[1]], [QUERIED, EMPTY, EMPTY], queries=["cat", "dog", "dog"])
    for key in grouped:
        torch.testing.assert_close(grouped[key], copies[key], rtol=1e-5, atol=1e-6)
    calls = []
    hook = model.backbone.body.register_forward_hook(
        lambda module, inputs, outputs: calls.append(inputs[0].shape[0])
    )
    model(images, [[QUERIED, EMPTY], EMPTY], queries=[["cat", "dog"], "dog"])
    hook.remove()
    assert calls == [2]  # two images, three queries


def _training_scores(model, images, targets, queries) -> Tensor:
    """(B, N) the queried thing's score of every anchor, as a training step sees them (batch
    statistics: a few steps hardly move the running ones that eval reads)."""
    captured = {}
    hook = model.head.register_forward_hook(lambda module, inputs, outputs: captured.update(outputs))
    with torch.no_grad():
        model.train()(images, targets, queries=queries)
    hook.remove()
    return captured["cls_logits"][..., 1].sigmoid()  # (B, N, 2): background, the queried thing


def test_a_negative_query_trains_its_scores_down():
    model = _model()
    images, targets, queries = _images(2), [EMPTY, EMPTY], ["mug", "mug"]
    before = _training_scores(model, images, targets, queries)
    history = _sgd_steps(model, images, targets, queries, steps=3)
    assert all(torch.isfinite(torch.tensor(h["classification"])) for h in history)
    assert all(h["bbox_regression"] == 0 for h in history)  # no box to regress
    assert history[-1]["classification"] < 0.5 * history[0]["classification"]
    after = _training_scores(model, images, targets, queries)
    assert after.mean() < 0.9 * before.mean() and after.max() < 0.5 * before.max()


# ---------------------------------------------------------------------------------------------
# Multitask, mixed batches


def test_a_multitask_model_without_a_query_is_a_k_class_detector():
    model = _model(multitask=True)
    _add_noise(model.head.net.classifier, 0.5)  # classes of distinct scores: labels other than 1 win
    images = _images()
    standard = _detect(model, images)
    labels = torch.cat([d["labels"] for d in standard])
    assert set(labels.tolist()) <= {1, 2, 3} and int(labels.max()) > 1
    with torch.no_grad():
        plain = RetinaNetDetector.forward(model, images)  # the K-class head, no modulation
    assert _same_detections(standard, plain)
    losses = model.train()(images, [QUERIED, {"boxes": BOX, "labels": torch.tensor([3])}])
    assert set(losses) == {"classification", "bbox_regression"}


def test_a_mixed_batch_is_its_queried_and_unqueried_images_each_on_their_path():
    model = _model(multitask=True)
    _add_noise(model.adapter, 0.5)
    images = _images(3)
    mixed = _detect(model, images, ["cat", None, "dog"])
    alone = [
        *_detect(model, images[:1], ["cat"]),
        *_detect(model, images[1:2]),
        *_detect(model, images[2:], ["dog"]),
    ]
    _close_detections(mixed, alone)
    model.train()
    targets = [QUERIED, {"boxes": BOX, "labels": torch.tensor([2])}, EMPTY]
    torch.manual_seed(0)
    losses = model(images, targets, queries=["cat", None, "dog"])
    queried = model(images[[0, 2]], [targets[0], targets[2]], queries=["cat", "dog"])
    unqueried = model(images[1:2], targets[1:2])
    for key in losses:  # the images' average: 2 of 3 queried
        torch.testing.assert_close(losses[key], (2 * queried[key] + unqueried[key]) / 3)


@pytest.mark.parametrize("queries", [["cat", "dog"], [None, None], ["cat", None]])
def test_every_parameter_gets_a_gradient_whatever_the_batch_holds(queries):
    # DistributedDataParallel without find_unused_parameters (vvk/engine/loop.py) needs them all
    model = _model(multitask=True).train()
    targets = [QUERIED if q else {"boxes": BOX, "labels": torch.tensor([2])} for q in queries]
    losses = model(_images(), targets, queries=queries)
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


# ---------------------------------------------------------------------------------------------
# Errors


def test_a_model_that_is_not_multitask_needs_a_query_for_every_image():
    model = _model().eval()
    message = r"^queries: every image needs one, as this model detects only what a query asks for"
    for queries in (None, ["cat", None]):
        with pytest.raises(VvkError, match=message) as error:
            model(_images(), queries=queries)
        assert "\n" not in str(error.value)


def test_bad_queries_and_targets_are_named():
    model = _model().eval()
    with pytest.raises(VvkError, match=r"^query 'cta': not a label of this model \(close: cat\)$"):
        model(_images(), queries=["cta", "dog"])
    with pytest.raises(VvkError, match=r"^queries: 1 for 2 images, expected one \(or None\) per image$"):
        model(_images(), queries=["cat"])
    with pytest.raises(VvkError, match=r"^queries: expected a list, one query \(or None\) per image"):
        model(_images(1), queries="cat")
    with pytest.raises(VvkError, match=r"^targets\[1\]\['labels'\]: a query's objects are labelled 1"):
        model.train()(
            _images(), [QUERIED, {"boxes": BOX, "labels": torch.tensor([2])}], queries=["cat", "dog"]
        )
    with pytest.raises(VvkError, match=r"^targets\[0\]\[1\]\['labels'\]: a query's objects are labelled 1"):
        model(_images(), [[QUERIED, {"boxes": BOX, "labels": torch.tensor([2])}], EMPTY],
              queries=[["cat", "dog"], "dog"])  # fmt: skip
    with pytest.raises(VvkError, match=r"^targets\[0\]: image 0 asks 2 queries, expected a list of as many"):
        model(_images(), [QUERIED, EMPTY], queries=[["cat", "dog"], "dog"])
    with pytest.raises(VvkError, match=r"^targets: none for 2 images"):
        model(_images(), queries=["cat", "dog"])
    with pytest.raises(
        VvkError, match=r"^queries\[0\]: a list of queries \(none of them None\) is for training"
    ):
        model.eval()(_images(), queries=[["cat", "dog"], "dog"])


def test_the_builder_names_its_options():
    with pytest.raises(VvkError, match=r"^modulation=concat: expected one of film, product$"):
        build(NAME, modulation="concat")
    with pytest.raises(VvkError, match=r"^query_encoder=words: expected one of label, text$"):
        build(NAME, query_encoder="words")
    with pytest.raises(VvkError, match=r"^query_encoder=text: needs teacher="):
        build(NAME, query_encoder="text")
    with pytest.raises(VvkError, match=r"^teacher: only query_encoder='text' reads a teacher$"):
        build(NAME, teacher="stand-in")


# ---------------------------------------------------------------------------------------------
# Checkpoints, sizes


def test_save_and_load_give_the_same_detections_for_the_same_query(tmp_path):
    model = _model(multitask=True, modulation="product")
    _add_noise(model.adapter, 0.5)
    images = _images()
    path = save(model, tmp_path / "qmd.safetensors")
    loaded = load(path)
    assert isinstance(loaded, QueryModulatedRetinaNet) and loaded.multitask
    for queries in (["dog", "mug"], None):
        assert _same_detections(_detect(loaded, images, queries), _detect(model, images, queries))
    assert not _same_detections(
        _detect(loaded, images, ["cat", "cat"]), _detect(model, images, ["dog", "mug"])
    )


def test_a_text_encoder_reads_its_teacher_on_the_first_query_and_round_trips(tmp_path):
    teacher_path = tmp_path / "teacher.safetensors"  # not written yet: building must not read it
    model = _model(query_encoder="text", teacher=str(teacher_path), teacher_dim=6)
    assert model.adapter.encoder.project.in_features == 6
    torch.manual_seed(0)
    save_stand_in(StandInTeacher(["cat", "dog", "mug"], dim=6, image_size=8, width=4), teacher_path)
    _add_noise(model.adapter, 0.5)
    images = _images()
    detections = _detect(model, images, ["cat", "mug"])
    loaded = load(save(model, tmp_path / "qmd.safetensors"))
    assert _same_detections(_detect(loaded, images, ["cat", "mug"]), detections)
    with pytest.raises(VvkError, match=r"vocabulary: the stand-in teacher does not know 'zebra'"):
        _detect(model, images, ["cat", "zebra"])


def test_a_teacher_of_another_width_is_named(tmp_path):
    teacher_path = tmp_path / "teacher.safetensors"
    save_stand_in(StandInTeacher(["cat"], dim=6, image_size=8, width=4), teacher_path)
    model = _model(query_encoder="text", teacher=str(teacher_path), teacher_dim=512)
    with pytest.raises(VvkError, match=r"embeds to width 6, the model was built with teacher_dim=512$"):
        _detect(model, _images(1), ["cat"])


# The tiny variant: 5 levels (P3-P7) of C = 16 channels, a dense 4 x 32 head, A = 9 anchors.
LEVELS, CHANNELS, FILTERS, ANCHORS = 5, 16, 32, 9


def _conv3x3(outputs: int) -> int:
    return 9 * FILTERS * outputs + outputs  # weights and biases


@pytest.mark.parametrize("multitask", [True, False])
def test_the_added_parameters_are_the_modulation_the_label_table_and_the_one_class_layer(multitask):
    k, q = len(CATEGORIES), QUERY_DIM
    film = LEVELS * (q * 2 * CHANNELS + 2 * CHANNELS)  # one Linear(Q, 2C) per level
    table = k * q
    one_class = _conv3x3(ANCHORS * 2)  # background and the queried thing
    k_class = _conv3x3(ANCHORS * (k + 1))  # the standard classifier, dropped without multitask
    expected = film + table + one_class - (0 if multitask else k_class)
    assert (film, table, one_class, k_class) == (1440, 24, 5202, 10404)
    plain = count_params(build("retinanet-spinenet-mobile-tiny", categories=CATEGORIES))
    assert count_params(_model(multitask=multitask)) - plain == expected


def test_the_mobile_49_variant_counts_its_separable_layers():
    # SpineNet-Mobile-49: 5 levels of 48, a separable 4 x 48 head; defaults: COCO's 80, Q = 64
    film = 5 * (64 * 96 + 96)  # 31.2K, as the query_modulation docstring says
    table = 80 * 64
    one_class = 48 * 9 + 48 * 18 + 18  # depthwise 3x3 (no bias) and a biased pointwise conv
    k_class = 48 * 9 + 48 * 9 * 81 + 9 * 81
    with torch.device("meta"):
        plain = count_params(build("retinanet-spinenet-mobile-49"))
        qmd = count_params(build("qmd-spinenet-mobile-49"))
    assert qmd - plain == film + table + one_class - k_class == 1481
