"""ViLD's distillation loss and ensemble scores against hand-computed values."""

import math

import torch

from vvk.models.detectors.vild_scoring import distillation_loss, ensemble_scores, valid_rois


def test_padding_rows_of_zeros_are_not_valid_rois():
    boxes = torch.tensor([[[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 5.0]]])
    assert valid_rois(boxes).tolist() == [[True, False, True]]


def test_distillation_is_the_l1_sum_per_roi_averaged_over_valid_rois():
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    # the teacher is normalised first: (3, 4) -> (0.6, 0.8); (0, 2) -> (0, 1)
    teacher = torch.tensor([[[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]]])
    valid = torch.tensor([[True, True, False]])
    # roi 0: |1 - 0.6| + |0 - 0.8| = 1.2; roi 1: 0; roi 2 is padding: (1.2 + 0) / 2 = 0.6
    assert math.isclose(distillation_loss(regions, teacher, valid).item(), 0.6, rel_tol=1e-6)


def test_distillation_without_a_valid_roi_is_zero_and_a_zero_teacher_stays_zero():
    regions = torch.ones(1, 2, 3)
    assert distillation_loss(regions, torch.ones(1, 2, 3), torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0
    loss = distillation_loss(regions, torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool))
    assert math.isclose(loss.item(), 3.0)  # |1 - 0| x 3 dims per roi


def test_ensemble_weights_text_on_base_and_image_on_novel_categories():
    # text softmax over (background, a, b) of logits log(0.2, 0.3, 0.5) -> p_text (0.3, 0.5);
    # image softmax over (a, b) of log(0.6, 0.4) -> p_image (0.6, 0.4); a base, b novel.
    text = torch.tensor([[0.2, 0.3, 0.5]]).log()
    image = torch.tensor([[0.6, 0.4]]).log()
    scores = ensemble_scores(text, image, torch.tensor([True, False]))
    expected = [0.3 ** (2 / 3) * 0.6 ** (1 / 3), 0.5 ** (1 / 3) * 0.4 ** (2 / 3)]
    assert torch.allclose(scores, torch.tensor([expected]), atol=1e-6)
