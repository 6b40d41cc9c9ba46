"""ViLD detectors (vvk.models.detectors.vild): which losses each method trains, that the
distillation runs the teacher's regions through the head it should, the test-time scores of each
method against hand-computed ones, and a vocabulary swapped in and saved with the checkpoint."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads

from vvk.errors import VvkError
from vvk.models import build, load, save
from vvk.models.detectors.vild import METHODS, set_vocabulary
from vvk.models.detectors.vild_scoring import distillation_loss, ensemble_scores

CATS = [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]
DIM = 8


def _model(method: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build("vild-spinenet-tiny", method=method, categories=CATS, embedding_dim=DIM)
    set_vocabulary(model, torch.randn(3, DIM), categories=CATS)
    return model


def _batch(regions: int = 2):
    images = [torch.rand(3, 256, 256) for _ in range(2)]
    targets = []
    for i in range(2):
        masks = torch.zeros(1, 256, 256, dtype=torch.uint8)
        masks[0, 20:90, 30:80] = 1
        targets.append(
            {
                "boxes": torch.tensor([[30.0, 20.0, 80.0, 90.0]]),
                "labels": torch.tensor([i + 1]),
                "masks": masks,
                "region_boxes": torch.tensor([[5.0, 5.0, 60.0, 50.0], [100.0, 90.0, 200.0, 230.0]])[:regions],
                "region_embeddings": F.normalize(torch.randn(2, DIM), dim=-1)[:regions],
            }
        )
    return images, targets


@pytest.mark.parametrize(
    "method, classifier, distill",
    [
        ("vild-text", True, False),
        ("vild-image", False, True),
        ("vild", True, True),
        ("vild-ensemble", True, True),
    ],
)
def test_each_method_trains_its_losses(method, classifier, distill):
    losses = _model(method).train()(*_batch())
    assert ("loss_classifier" in losses) == classifier and ("loss_distill" in losses) == distill
    assert {"loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= losses.keys()
    assert all(torch.isfinite(v) for v in losses.values())


def test_absent_novel_categories_stay_in_the_class_softmax_as_zero_logits():
    # the reference's mask_rare: rare logits x 0, softmax over all 1 + K + A columns
    model = _model("vild-text")
    set_vocabulary(model, torch.randn(3, DIM), categories=CATS, absent=2)
    heads = model.roi_heads
    heads.classifier.temperature = 1.0  # logits in [-1, 1]: the zeros' share is not negligible
    features = torch.randn(4, heads.box_predictor.cls_score.project.in_features)
    labels, targets = [torch.tensor([0, 1, 3, 2])], [torch.zeros(4, 4)]
    logits = heads.box_predictor(features)[0]  # (4, 1 + 3)
    by_hand = (
        sum(
            -logits[r, y] + torch.log(logits[r].exp().sum() + 2 * torch.exp(torch.tensor(0.0)))
            for r, y in enumerate(labels[0])
        )
        / 4
    )
    loss = heads.box_losses(features, labels, targets)["loss_classifier"]
    assert torch.allclose(loss, by_hand, atol=1e-5)
    assert loss > F.cross_entropy(logits, labels[0]) + 0.1  # the zeros take probability from the rest
    # the classifier's offset is frozen at 0, as the reference's whole class-predict layer
    assert not heads.classifier.bias.requires_grad and heads.classifier.bias == 0
    set_vocabulary(model, torch.randn(5, DIM), categories=[*CATS, *CATS_NOVEL])  # evaluation: none absent
    assert heads.absent_categories == 0


CATS_NOVEL = [{"id": i, "name": f"c{i}"} for i in (4, 5)]


def _embeddings_of(model, images, targets, head, project):
    """The region embeddings the distillation compares, recomputed from the model's parts."""
    image_list, targets = model.transform(images, model.prepare_targets(targets, masks=True))
    features = model.backbone(image_list.tensors)
    pooled = model.roi_heads.box_roi_pool(
        features, [t["region_boxes"] for t in targets], image_list.image_sizes
    )
    return F.normalize(project(head(pooled)), dim=-1), torch.cat([t["region_embeddings"] for t in targets])


def test_the_ensembles_image_head_alone_learns_the_distillation():
    model = _model("vild-ensemble").train()
    heads = model.roi_heads
    images, targets = _batch()
    loss = model(images, targets)["loss_distill"]
    loss.backward()
    assert heads.image_head is not heads.box_head
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.image_project.parameters())
    assert (
        heads.classifier.project.weight.grad is None or not heads.classifier.project.weight.grad.abs().sum()
    )
    # the loss is the weighted L1 of the image head's embeddings (batch norm in training mode,
    # on these regions alone, as in the forward pass)
    torch.manual_seed(0)
    student, teacher = _embeddings_of(model, images, targets, heads.image_head, heads.image_project)
    valid = torch.ones(1, len(teacher), dtype=torch.bool)
    expected = heads.distill_weight * distillation_loss(student[None], teacher[None], valid)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_vild_distils_through_the_text_heads_projection():
    model = _model("vild").train()
    losses = model(*_batch())
    losses["loss_distill"].backward()
    assert model.roi_heads.image_head is None
    assert model.roi_heads.classifier.project.weight.grad.abs().sum() > 0


def test_no_regions_in_a_batch_gives_no_distillation_loss():
    losses = _model("vild").train()(*_batch(regions=0))
    assert losses["loss_distill"].item() == 0.0 and torch.isfinite(losses["loss_classifier"])


def _scores(method):
    model = _model(method).eval()
    heads = model.roi_heads
    pooled = torch.rand(5, model.backbone.out_channels, 7, 7)
    with torch.no_grad():
        features = heads.box_head(pooled)
        logits = heads.box_predictor(features)[0]
        scores = heads.category_scores(logits, pooled=pooled, box_features=features)
    return model, heads, pooled, features, logits, scores


def test_text_scores_are_the_softmax_without_background():
    _, _, _, _, logits, scores = _scores("vild")
    assert torch.allclose(scores, logits.softmax(-1)[:, 1:])


def test_image_scores_are_a_softmax_over_the_categories_of_scaled_cosines():
    _, heads, _, features, _, scores = _scores("vild-image")
    image = F.normalize(heads.classifier.project(features), dim=-1)
    assert torch.allclose(scores, (100 * image @ heads.classifier.embeddings.t()).softmax(-1), atol=1e-6)
    assert torch.allclose(scores.sum(-1), torch.ones(5), atol=1e-5)


def test_ensemble_scores_weigh_text_on_base_and_image_on_novel_categories():
    model, heads, pooled, _, logits, _ = _scores("vild-ensemble")
    set_vocabulary(model, torch.randn(3, DIM), categories=CATS, base=torch.tensor([True, True, False]))
    with torch.no_grad():
        features = heads.box_head(pooled)
        logits = heads.box_predictor(features)[0]
        scores = heads.category_scores(logits, pooled=pooled, box_features=features)
        image = F.normalize(heads.image_project(heads.image_head(pooled)), dim=-1)
    p_text = logits.softmax(-1)[:, 1:]
    p_image = (100 * image @ heads.classifier.embeddings.t()).softmax(-1)
    assert torch.allclose(scores[:, :2], (p_text[:, :2] ** 2 * p_image[:, :2]) ** (1 / 3), atol=1e-6)
    assert torch.allclose(scores[:, 2], (p_text[:, 2] * p_image[:, 2] ** 2) ** (1 / 3), atol=1e-6)
    assert torch.allclose(
        scores, ensemble_scores(logits, 100 * image @ heads.classifier.embeddings.t(), heads.base)
    )


def test_detect_matches_torchvisions_post_processing():
    model = build("maskrcnn-spinenet-tiny", categories=CATS).eval()
    heads = model.roi_heads
    torch.manual_seed(0)
    proposals = [torch.rand(30, 2) * 100, torch.rand(20, 2) * 100]
    proposals = [torch.cat([p, p + 10 + 40 * torch.rand_like(p)], dim=1) for p in proposals]
    logits, regression = torch.randn(50, 4) * 3, torch.randn(50, 16) * 0.3
    ours = heads.postprocess_detections(logits, regression, proposals, [(120, 130), (90, 100)])
    theirs = RoIHeads.postprocess_detections(heads, logits, regression, proposals, [(120, 130), (90, 100)])
    for a, b in zip(ours, theirs, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("method", METHODS)
def test_a_new_vocabulary_detects_its_categories_and_survives_save_and_load(tmp_path, method):
    model = _model(method).eval()
    wider = [*CATS, {"id": 9, "name": "novel"}]
    set_vocabulary(model, torch.randn(4, DIM), categories=wider, base=torch.tensor([True, True, True, False]))
    images = [torch.rand(3, 256, 256)]
    with torch.no_grad():
        out = model(images)[0]
    assert out["labels"].max() <= 4 and out["masks"].shape[1:] == (1, 256, 256)
    loaded = load(save(model, tmp_path / "v.safetensors")).eval()
    assert loaded.categories == wider and loaded.roi_heads.base.tolist() == [True, True, True, False]
    with torch.no_grad():
        again = loaded(images)[0]
    assert torch.equal(again["scores"], out["scores"]) and torch.equal(again["labels"], out["labels"])


def test_distilling_without_regions_in_the_targets_is_an_error():
    images, targets = _batch()
    for t in targets:
        del t["region_boxes"], t["region_embeddings"]
    with pytest.raises(VvkError, match="vild distils region embeddings: targets need region_boxes"):
        _model("vild").train()(images, targets)


def test_bad_vocabularies_and_methods_are_errors():
    model = _model("vild")
    with pytest.raises(VvkError, match=r"embeddings \(2, 8\) for 3 categories"):
        set_vocabulary(model, torch.randn(2, DIM), categories=CATS)
    with pytest.raises(VvkError, match="not a ViLD model"):
        set_vocabulary(build("maskrcnn-spinenet-tiny", categories=CATS), torch.randn(3, DIM), categories=CATS)
    with pytest.raises(VvkError, match="method=vild-magic: one of vild-text"):
        build("vild-spinenet-tiny", method="vild-magic")
