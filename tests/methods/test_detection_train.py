"""vvk.methods.detection: presets, the training step, COCO results and scores, planning checks,
and short real runs on tiny_coco through the Python API."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from vvk.data.coco import decode_segmentation
from vvk.data.detection import collate_detection, open_coco, open_detection_dataset
from vvk.engine.optim import lr_at
from vvk.errors import VvkError
from vvk.methods.detection import (
    PRESETS,
    detection_step,
    plan_detector,
    preset_for,
    resolve_detection_preset,
    train_detector,
)
from vvk.methods.detection.evaluate import evaluate_detector, to_coco_results
from vvk.models import build, load

TINY = {"retinanet": "retinanet-spinenet-mobile-tiny", "maskrcnn": "maskrcnn-spinenet-tiny"}
# A fast real run: small canvas, 2 images a step, 4 val images, no loader worker.
FAST = ["image_size=128", "eval_images=4", "train.num_workers=0", "train.log_every=1", "eval_batch_size=4"]


def test_paper_presets_hold_the_reference_recipes():
    retina = PRESETS["paper"]["retinanet"]  # spinenet49_retinanet.yaml
    assert (retina.model, retina.image_size, retina.scale_range) == ("retinanet-spinenet-49", 640, (0.5, 2.0))
    train = retina.train
    assert (train.steps, train.lr, train.warmup_steps, train.weight_decay, train.grad_clip) == (
        231500, 0.28, 2000, 4e-5, 10.0,
    )  # fmt: skip
    # The step schedule drops where the yaml says: learning_rate_steps [217610, 226870].
    assert [lr_at(s, train) for s in (217609, 217610, 226869, 226870)] == pytest.approx(
        [0.28, 0.028, 0.028, 0.0028]
    )
    mask = PRESETS["paper"]["maskrcnn"]  # copy_paste/configs/maskrcnn_resnet50_1024.yaml
    assert (mask.model, mask.image_size, mask.scale_range, mask.copy_paste) == (
        "maskrcnn-r50-fpn", 1024, (0.1, 2.0), True,
    )  # fmt: skip
    steps = [s for s in range(1000, 270000) if lr_at(s, mask.train) < lr_at(s - 1, mask.train)]
    assert steps == [243000, 256500, 263250] and mask.train.lr == 0.32 and mask.train.steps == 270000


def test_the_family_of_the_model_picks_the_preset():
    assert preset_for("paper").model == "retinanet-spinenet-49"
    assert preset_for("paper", "maskrcnn-spinenet-49").image_size == 1024  # the Copy-Paste recipe
    assert preset_for("tiny", "maskrcnn-spinenet-tiny").model == "maskrcnn-spinenet-tiny"
    config = resolve_detection_preset("paper", overrides=["model=maskrcnn-r50-fpn"])
    assert config.copy_paste and config.train.lr == 0.32
    with pytest.raises(VvkError, match="preset=huge: not a detection preset"):
        preset_for("huge")
    with pytest.raises(VvkError, match="model=r3d-tiny: not a detector"):
        resolve_detection_preset("tiny", model="r3d-tiny")
    with pytest.raises(VvkError, match=r"--set scale_range=2.0,1.0: must be MIN,MAX with MIN <= MAX"):
        resolve_detection_preset("tiny", overrides=["scale_range=2,1"])
    short = resolve_detection_preset("paper", steps=1000)  # the warm-up shrinks with the run
    assert short.train.warmup_steps == round(2000 * 1000 / 231500)


def test_preset_fields_reach_the_model():
    from vvk.methods.detection.train import build_detector

    categories = [{"id": 5, "name": "five"}]
    config = resolve_detection_preset(
        "tiny", overrides=["bn_momentum=0.2", "anchor_size=2", "image_size=128"]
    )
    model = build_detector(config, categories)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.momentum == 0.2 for m in norms)
    assert model.vvk_arch["kwargs"] == {"categories": categories, "image_size": 128, "anchor_size": 2.0}
    assert model.categories == categories and model.image_size == 128
    with pytest.raises(VvkError, match="--set bn_momentum=1.5: must be in"):
        resolve_detection_preset("tiny", overrides=["bn_momentum=1.5"])


@pytest.mark.parametrize("family", ["retinanet", "maskrcnn"])
def test_the_step_trains_on_a_batch_with_an_image_without_objects(family, shared_data):
    data = open_detection_dataset(shared_data / "coco" / "tiny_coco", size=128, masks=family == "maskrcnn")
    image, target = data[(0, 0)]
    empty = {k: v[:0] if k in ("boxes", "labels", "masks") else v for k, v in target.items()}
    batch = collate_detection([(image, target), (torch.zeros_like(image), empty)])
    assert len(batch["targets"][1]["boxes"]) == 0
    torch.manual_seed(0)
    model = build(TINY[family], categories=data.categories, image_size=128).train()
    losses = detection_step(model, batch)
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values()) and total > 0
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


class Oracle(nn.Module):
    """A 'detector' that returns the ground truth of the images it is given (by their size)."""

    def __init__(self, coco, *, masks: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # a device to be on
        self.coco, self.masks = coco, masks
        self.categories = [{"id": c["id"], "name": c["name"]} for c in coco.categories]
        self.labels = {c["id"]: k + 1 for k, c in enumerate(self.categories)}
        self.queue = list(coco.images.values())

    def forward(self, images):
        outputs = []
        for image in images:
            meta = self.queue.pop(0)  # evaluation goes through the images in the file's order
            assert image.shape[-2:] == (meta.height, meta.width)  # original pixels, not the canvas
            anns = [a for a in self.coco.annotations[meta.id] if not a.iscrowd]
            full = [decode_segmentation(a.segmentation, meta.height, meta.width) for a in anns]
            boxes = [_box(m) for m in full]
            out = {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.linspace(1.0, 0.5, len(anns)),
                "labels": torch.tensor([self.labels[a.category_id] for a in anns], dtype=torch.int64),
            }
            if self.masks:
                stack = np.stack(full) if full else np.zeros((0, meta.height, meta.width), bool)
                out["masks"] = torch.from_numpy(stack).float()[:, None]  # (N, 1, H, W) probabilities
            outputs.append(out)
        return outputs


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_perfect_predictions_score_one_through_results_and_pycocotools(shared_data, monkeypatch):
    coco = open_coco(shared_data / "coco" / "tiny_coco")
    oracle = Oracle(coco, masks=True)
    monkeypatch.setattr("vvk.methods.detection.evaluate.has_masks", lambda model: model.masks)
    scores = evaluate_detector(oracle, coco, batch_size=4, max_images=10)
    assert scores["images"] == 10 and scores["skipped_images"] == 0
    # Boxes are the masks' tight boxes; COCO's own boxes come from polygons: IoU just below 1 at
    # .95 for some small objects, so AP50 is exactly 1 and AP@[.5:.95] nearly.
    assert scores["bbox_AP50"] == pytest.approx(1.0) and scores["bbox_AP"] > 0.9
    assert scores["segm_AP50"] == pytest.approx(1.0) and scores["segm_AP"] > 0.95


def test_results_carry_the_dataset_ids_xywh_boxes_and_decodable_masks():
    from pycocotools import mask as mask_utils

    categories = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    masks = torch.zeros(2, 1, 20, 30)
    masks[0, 0, 2:5, 4:10] = 0.9
    masks[1, 0, 10:20, 0:3] = 0.6
    masks[1, 0, 0:2, 0:2] = 0.4  # below the threshold
    out = {"boxes": torch.tensor([[4.0, 2, 10, 5], [0, 10, 3, 20]]), "scores": torch.tensor([0.9, 0.5]),
           "labels": torch.tensor([2, 1]), "masks": masks}  # fmt: skip
    records = to_coco_results([out], [42], categories)
    assert [r["category_id"] for r in records] == [3, 7] and [r["image_id"] for r in records] == [42, 42]
    assert records[0]["bbox"] == [4.0, 2.0, 6.0, 3.0] and records[1]["bbox"] == [0.0, 10.0, 3.0, 10.0]
    decoded = mask_utils.decode(
        {**records[1]["segmentation"], "counts": records[1]["segmentation"]["counts"]}
    )
    assert decoded.shape == (20, 30) and decoded.sum() == 30 and decoded[10:20, 0:3].all()
    json.dumps(records)  # plain JSON


def test_plan_checks_the_val_set_before_writing_anything(shared_data, tmp_path):
    tiny = shared_data / "coco" / "tiny_coco"
    other = tmp_path / "other"
    shutil.copytree(tiny, other)
    path = other / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["categories"][0]["name"] = "human"
    path.write_text(json.dumps(data))
    run = tmp_path / "run"
    with pytest.raises(VvkError, match="its categories are not those of the training data"):
        plan_detector(data=tiny, val=other, out=run)
    data["categories"][0]["name"] = "person"
    data["annotations"][0]["bbox"] = [0, 0, -5, 3]  # the evaluator's own check: a negative size
    path.write_text(json.dumps(data))
    with pytest.raises(VvkError, match=r"instances_train2017\.json.*bbox"):
        plan_detector(data=tiny, val=other, out=run)
    with pytest.raises(VvkError, match=r"^val=.*missing: no such folder or file"):
        plan_detector(data=tiny, val=tmp_path / "missing", out=run)
    assert not run.exists()


def test_the_demo_never_flips_digits_unless_asked(shared_data, tmp_path):
    demo = plan_detector(out=tmp_path / "demo")
    assert demo.demo and demo.config.flip_prob == 0 and demo.overrides[0] == "flip_prob=0"
    assert plan_detector(out=tmp_path / "asked", overrides=["flip_prob=0.3"]).config.flip_prob == 0.3
    coco = plan_detector(data=shared_data / "coco" / "tiny_coco", out=tmp_path / "coco")
    assert coco.config.flip_prob == 0.5 and "flip_prob=0" not in coco.overrides


@pytest.mark.parametrize("family", ["retinanet", "maskrcnn"])
def test_a_short_run_evaluates_exports_and_resumes(family, shared_data, tmp_path):
    tiny = shared_data / "coco" / "tiny_coco"
    run = tmp_path / "run"
    first = train_detector(model=TINY[family], data=tiny, val=tiny, steps=2, batch_size=2, out=run,
                           overrides=[*FAST, "eval_every=1"], progress=False)  # fmt: skip
    assert first.status == "finished" and first.step == 2
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evaluations = [x for x in lines if x.get("hook") == "val"]
    assert [x["step"] for x in evaluations] == [1, 2] and evaluations[-1]["images"] == 4
    keys = {"bbox_AP", "bbox_AP50"} | ({"segm_AP", "segm_AP50"} if family == "maskrcnn" else set())
    assert keys <= set(first.evaluation) and all(0 <= first.evaluation[k] <= 1 for k in keys)
    model = load(first.detector_path)
    assert model.categories == json.loads((run / "preset.json").read_text())["categories"]
    assert len(model.categories) == 80 and model.categories[0] == {"id": 1, "name": "person"}
    assert model.image_size == 128
    resumed = train_detector(out=run, resume=True, steps=3, progress=False)
    assert resumed.status == "finished" and resumed.step == 3
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x.get("hook") == "val"] == [1, 2, 3]
    assert all(math.isfinite(v) for v in resumed.losses.values())
    with pytest.raises(VvkError, match="keeps its model and data fields"):
        plan_detector(out=run, resume=True, overrides=["image_size=256"])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["retinanet-spinenet-49", "maskrcnn-r50-fpn"])
def test_paper_presets_train_on_the_cpu_in_bf16(model, shared_data, tmp_path, full_scale):
    tiny = shared_data / "coco" / "tiny_coco"
    small = [] if full_scale else ["image_size=128", "eval_images=2"]
    result = train_detector(model=model, preset="paper", data=tiny, val=tiny, steps=1, batch_size=2,
                            out=tmp_path / "run", progress=False,
                            overrides=[*small, "train.num_workers=0", "eval_batch_size=2"])  # fmt: skip
    assert result.status == "finished" and all(math.isfinite(v) for v in result.losses.values())
    assert result.preset["train"]["precision"] == "bf16" and result.preset["train"]["schedule"] == "step"
    assert "bbox_AP" in result.evaluation
    options = load(result.detector_path).vvk_arch["kwargs"].get("backbone_options")
    assert options == ({"stochastic_depth_rate": 0.2} if model.startswith("retinanet") else None)
