"""Detector training presets: ``tiny`` (2 CPU cores, minutes) and ``paper`` (the reference recipes).

A preset is one frozen dataclass per detector family (RetinaNet, Mask R-CNN): the model, the
input pipeline, the in-training evaluation and the ``TrainConfig``. ``preset_for(name, model)``
picks the family's preset from the model's name, so ``--preset paper --model maskrcnn-r50-fpn``
is the Copy-Paste Mask R-CNN recipe and ``--preset paper`` alone the SpineNet-49 RetinaNet one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from vvk.engine import TrainConfig
from vvk.engine.config import check, check_ranges
from vvk.errors import VvkError

Family = Literal["retinanet", "maskrcnn", "vild", "qmd"]
FAMILIES: tuple[Family, ...] = ("retinanet", "maskrcnn", "vild", "qmd")
# The families whose detectors train with settings of their own: the preset field of that name.
METHOD_FAMILIES: tuple[Family, ...] = ("vild", "qmd")
VILD_METHODS = ("vild-text", "vild-image", "vild", "vild-ensemble")  # vvk.models.detectors.vild.METHODS
QMD_METHOD = "qmd"
MODULATIONS = ("film", "product")  # vvk.models.detectors.query_modulation.MODULATIONS
MODULATION_SITES = ("features", "class_tower", "both")  # vvk.models.detectors.qmd.MODULATION_SITES
LABEL_QUERIES = "label"  # qmd.query_encoder for learned label embeddings; anything else names a teacher


@dataclass(frozen=True)
class ViLDSettings:
    """What a ViLD detector (``vild-*``) trains with (``vvk.methods.vild``).

    Attributes:
        method: ``vild-text``, ``vild-image``, ``vild`` or ``vild-ensemble``.
        teacher: the image/text embedding space (``vvk.methods.vild.teacher.load_teacher``).
        novel: the categories never boxed in training (``vvk.methods.vild.split``): ``rare``,
            ``coco17``, a file of names, or names separated by commas; empty: none.
        distill_weight: weight of the distillation loss (``feat_distill_weight``: 0.5 for R50).
        max_regions: the regions distilled per image, the first of the regions folder's (its
            proposals are best first; the reference's ``max_num_rois``: 300).
    """

    method: str = "vild"
    teacher: str = "clip-vit-b-32.openai"
    novel: str = "rare"
    distill_weight: float = 0.5
    max_regions: int = 300

    def __post_init__(self) -> None:
        check(self, "method", self.method in VILD_METHODS, " | ".join(VILD_METHODS))
        check_ranges(self, {">= 0": ("distill_weight",), ">= 1": ("max_regions",)})


MULTITASK_NONE_RATIO = 0.3  # about a third of the images left unqueried: vvk's choice, not the paper's


@dataclass(frozen=True)
class QMDSettings:
    """What a query-modulated detector (``qmd-*``) trains with (``vvk.methods.qmd``).

    Attributes:
        modulation: ``film`` or ``product`` (FindIt's), the fusion of query and features.
        modulate: where: ``features`` (every pyramid level), ``class_tower`` (the class
            subnet's output) or ``both`` (``vvk.models.detectors.qmd.qmd``).
        query_encoder: ``label`` (a learned embedding per category: the queries are their
            names) or a text teacher whose embedding of the query text is projected (``stand-in``,
            a stand-in file, or a CLIP of ``vvk weights list``: free-text queries).
        queries_per_image: how many queries each training image asks: its planned one and
            more categories drawn at random (``vvk.data.queries.QuerySchedule.queries``), all on
            one backbone pass; 1 is the paper's one query per image.
        multitask: also a standard detector for images without a query (trained on the
            ``none_ratio`` share of the images, and scored for box AP without queries).
        positive_ratio, negative_ratio, none_ratio: the proportions of training images asked
            for a category they hold, one they lack, and nothing (``vvk.data.queries.QueryMix``:
            vvk's starting point, the paper's ratios are not verified). ``none_ratio`` is > 0
            exactly for a multitask model, whose standard head learns from those images only
            (``--multitask`` sets ``MULTITASK_NONE_RATIO`` unless ``--set`` gives one).
    """

    modulation: str = "film"
    modulate: str = "features"
    query_encoder: str = LABEL_QUERIES
    queries_per_image: int = 1
    multitask: bool = False
    positive_ratio: float = 0.7
    negative_ratio: float = 0.3
    none_ratio: float = 0.0

    def __post_init__(self) -> None:
        check(self, "modulation", self.modulation in MODULATIONS, " | ".join(MODULATIONS))
        check(self, "modulate", self.modulate in MODULATION_SITES, " | ".join(MODULATION_SITES))
        check(self, "query_encoder", bool(self.query_encoder.strip()), "label, or a teacher's name or file")
        check_ranges(
            self, {">= 0": ("positive_ratio", "negative_ratio", "none_ratio"), ">= 1": ("queries_per_image",)}
        )
        total = self.positive_ratio + self.negative_ratio + self.none_ratio
        check(self, "positive_ratio", total > 0, "> 0 when the other ratios are 0")
        check(self, "none_ratio", (self.none_ratio > 0) == self.multitask,
              "> 0 with multitask (its standard head learns from those images only), else 0")  # fmt: skip

    def mix(self):
        from vvk.data.queries import QueryMix

        return QueryMix(positive=self.positive_ratio, negative=self.negative_ratio, none=self.none_ratio)


@dataclass(frozen=True)
class DetectionPreset:
    """How to train a detector. The defaults are the ``paper`` RetinaNet preset: SpineNet-49
    RetinaNet at 640², ``tensorflow/tpu: models/official/detection/configs/spinenet/
    spinenet49_retinanet.yaml`` over ``configs/retinanet_config.py`` and ``base_config.py``,
    unless a comment says otherwise.

    Attributes:
        model: a registry name with task "detection" (``vvk models list --task detection``).
        image_size: the square training canvas, and the model's ``image_size``.
        scale_range: scale jitter, as fractions of ``image_size`` (``vvk.data.detection``).
        flip_prob: horizontal flip probability.
        copy_paste: Simple Copy-Paste of a second image's objects onto each sample.
        max_paste: at most this many objects pasted per image.
        eval_every: steps between evaluations on the validation set (0: at the end only).
        eval_batch_size: images per forward pass in evaluation.
        eval_images: evaluate on the first this many validation images (0: all).
        stochastic_depth: the backbone's stochastic depth rate (its builder's
            ``stochastic_depth_rate``; None: the backbone's default).
        anchor_size: the model's anchor side, in units of each level's stride (its builder's
            ``anchor_size``; None: the model's own, the reference's).
        bn_momentum: momentum of every batch norm of the detector, PyTorch's convention (TF's
            0.99 is 0.01 here; None: the model's own). A short run needs a fast one: the running
            statistics that evaluation uses must keep up with weights that change quickly.
        vild: a ViLD detector's method, teacher and split (None for the other families).
        qmd: a query-modulated detector's fusion, encoder and query mix (None for the others).
    """

    model: str = "retinanet-spinenet-49"
    image_size: int = 640  # retinanet_parser.output_size [640, 640]
    # aug_scale_min 0.5, aug_scale_max 2.0: the yaml's own range (protocol C), not LSJ's 0.1
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip_prob: float = 0.5  # retinanet_parser.aug_rand_hflip: True
    copy_paste: bool = False
    max_paste: int = 100  # mmdet's cap (reference/detection.md §3.4); the TF parser pastes all drawn
    eval_every: int = 5000  # vvk's choice: about 46 evaluations in the 231.5k steps
    eval_batch_size: int = 8  # base_config eval.eval_batch_size
    eval_images: int = 0
    # spinenet.init_drop_connect_rate 0.2 (protocol C; the yaml's activation, swish, is the
    # spinenet backbones' default)
    stochastic_depth: float | None = 0.2
    anchor_size: float | None = None  # the model's own: anchor.anchor_size 3.0 of the yaml
    bn_momentum: float | None = None  # the models' own: the reference's (0.997 in TF terms)
    vild: ViLDSettings | None = None  # the ViLD presets' only
    qmd: QMDSettings | None = None  # the QMD presets' only
    # train.total_steps 231500 at train_batch_size 256 (the global batch: here 16 processes x
    # 16 per process; change batch_size and grad_accum for your hardware); SGD momentum 0.9
    # (base_config optimizer); learning_rate init 0.28 after 2000 linear warm-up steps (from 0
    # here; TF starts at warmup_learning_rate 0.0067), then x0.1 at 217610 and 226870
    # (levels 0.028, 0.0028); l2_weight_decay 4e-5 on kernels only (tf.nn.l2_loss: gradient
    # 4e-5 * w, SGD's weight decay; REGULARIZATION_VAR_REGEX leaves biases and norms out, as
    # vvk does); gradient_clip_norm 10; architecture.use_bfloat16 (retinanet_config.py). The
    # TPU cross-shard optimizer averages the replicas' gradients: replica_grads "mean".
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            steps=231500,
            batch_size=16,
            lr=0.28,
            optimizer="sgd",
            momentum=0.9,
            weight_decay=4e-5,
            warmup_steps=2000,
            schedule="step",
            decay_at=(217610 / 231500, 226870 / 231500),
            decay_rate=0.1,
            grad_clip=10.0,
            precision="bf16",
            checkpoint_every=5000,
            log_every=100,
        )  # fmt: skip
    )

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                ">= 1": ("image_size", "eval_batch_size"),
                ">= 0": ("max_paste", "eval_every", "eval_images"),
                "> 0": ("scale_range", "anchor_size"),
                "in [0, 1]": ("flip_prob",),
                "in [0, 1)": ("stochastic_depth",),
                "in (0, 1]": ("bn_momentum",),
            },
        )
        low, high = self.scale_range
        check(self, "scale_range", low <= high, "MIN,MAX with MIN <= MAX")
        for family in METHOD_FAMILIES:
            ours = self.model.startswith(f"{family}-")
            given = getattr(self, family) is not None
            check(self, family, given == ours, f"set for {family}-* models only, and for them")

    @property
    def family(self) -> Family:
        return family_of(self.model)


# The Copy-Paste paper's Mask R-CNN recipe: tensorflow/tpu: models/official/detection/projects/
# copy_paste/configs/maskrcnn_resnet50_1024.yaml (its `type` says cascade, its name and the
# README's 48.3 box / 42.4 mask AP row say Mask R-CNN R50-FPN; reference/detection.md §3.3).
PAPER_MASKRCNN = DetectionPreset(
    model="maskrcnn-r50-fpn",
    image_size=1024,  # maskrcnn_parser.output_size [1024, 1024]
    scale_range=(0.1, 2.0),  # aug_scale_min 0.1, aug_scale_max 2.0: large scale jitter
    copy_paste=True,  # maskrcnn_parser.copy_paste: True, pre_parser extract_objects_parser
    stochastic_depth=None,  # the ResNet-50 of the yaml has none
    eval_every=5000,  # vvk's choice, as above
    # train_batch_size 256 (here 32 processes x 8), total_steps 270000, SGD momentum 0.9, lr 0.32
    # after 1000 warm-up steps (TF from 0.0032), x0.1 at 243000, 256500 and 263250 (levels
    # 0.032, 0.0032, 0.00032), l2_weight_decay 4e-5, gradient_clip_norm 0, use_bfloat16.
    train=TrainConfig(
        steps=270000,
        batch_size=8,
        lr=0.32,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=4e-5,
        warmup_steps=1000,
        schedule="step",
        decay_at=(243000 / 270000, 256500 / 270000, 263250 / 270000),
        decay_rate=0.1,
        grad_clip=0.0,
        precision="bf16",
        checkpoint_every=5000,
        log_every=100,
    ),  # fmt: skip
)


# ViLD's recipe: tensorflow/tpu: models/official/detection/projects/vild/configs/vild_resnet.yaml
# (reference/detection.md §2.5): Mask R-CNN R50-FPN at 1024², LSJ, CLIP ViT-B/32 teacher, LVIS
# rare categories novel.
PAPER_VILD = dataclasses.replace(
    PAPER_MASKRCNN,
    model="vild-r50-fpn",
    copy_paste=False,  # the ViLD parser has no Copy-Paste
    vild=ViLDSettings(),
    # train_batch_size 256, total_steps 180000, lr 0.32 after 1000 warm-up steps, x0.1 at 162000,
    # 171000 and 175500; SGD momentum 0.9, l2_weight_decay 4e-5, use_bfloat16.
    train=dataclasses.replace(
        PAPER_MASKRCNN.train, steps=180000, decay_at=(162000 / 180000, 171000 / 180000, 175500 / 180000)
    ),
)


def tiny_train(**changes: Any) -> TrainConfig:
    """The laptop recipe both tiny presets share: AdamW (SGD from random initialisation needs
    far more steps at this size) at a high rate (with the demo's no-flip rule, 8e-3 doubled
    the box AP50 of 2e-3 at 1,500 steps: docs/results.md), a short warm-up then cosine, small
    batches at 256², one loader worker beside the training process on 2 cores. Each family
    sets the steps that take about ten minutes on a 2-core machine (benchmarks/detection_learning.py)."""
    recipe: dict[str, Any] = dict(
        steps=1000, batch_size=8, lr=8e-3, optimizer="adamw", momentum=0.9, weight_decay=1e-4,
        warmup_steps=100, schedule="cosine", min_lr_ratio=0.05, grad_clip=10.0, checkpoint_every=500,
        log_every=10, num_workers=1,
    )  # fmt: skip
    return TrainConfig(**{**recipe, **changes})


# The built-in example's images are 256² with digits of 13-77 px: the canvas is the image, a
# narrower jitter than LSJ keeps digits at sizes the short run learns, and val is scored every
# 250 steps for the learning curve.
TINY: dict[str, Any] = dict(
    image_size=256,
    scale_range=(0.75, 1.25),
    eval_every=250,
    eval_batch_size=16,
    stochastic_depth=None,
    bn_momentum=0.1,  # PyTorch's default: at the reference's 0.01, evaluation lags the weights by far
)

PRESETS: dict[str, dict[Family, DetectionPreset]] = {
    "tiny": {
        # Batch 4: twice the updates of batch 8 in the same time (on seed 2, box AP50 0.53 at step
        # 2,000 against 0.44 for batch 8 at 1,350; docs/results.md). About 0.18 s/step on the
        # 2-core AMD EPYC of docs/benchmarks.md: 3,000 steps, about ten minutes
        "retinanet": DetectionPreset(
            model="retinanet-spinenet-mobile-tiny",
            **TINY,
            train=tiny_train(steps=3000, batch_size=4, warmup_steps=200),
        ),
        # batch 8, 0.46–0.50 s/step on the same machine: 1,000 steps in 465–507 s (1,100 ran up to 604)
        "maskrcnn": DetectionPreset(model="maskrcnn-spinenet-tiny", **TINY, train=tiny_train(steps=1000)),
        # the built-in example's stand-in teacher; the demo holds out its last three digits. 50
        # regions an image, not the reference's 300 (LVIS at 1024²): of a 256² image's 300 best
        # proposals 5% are on one of its ~4 digits, of its 50 best 22% (84% of the digits
        # covered); 300 starve the ensemble's image head (docs/results.md)
        "vild": DetectionPreset(
            model="vild-spinenet-tiny",
            **TINY,
            vild=ViLDSettings(teacher="stand-in", novel="", max_regions=50),
            train=tiny_train(steps=820),
        ),
    },
    "paper": {"retinanet": DetectionPreset(), "maskrcnn": PAPER_MASKRCNN, "vild": PAPER_VILD},
}
# Query-modulated detection is a RetinaNet's: each preset's RetinaNet recipe on its qmd-* variant.
# The paper's asks one query per image; tiny asks ten (all the built-in example's digits): one
# query per image left the class subnet a tenth of a standard detector's supervision: query AP50
# 0.04 at 1,000 steps against 0.30 with ten (three seeds), at twice the seconds a step
# (docs/results.md).
_QUERIES = {"tiny": QMDSettings(queries_per_image=10), "paper": QMDSettings()}
for _name, _model in (("tiny", "qmd-spinenet-mobile-tiny"), ("paper", "qmd-spinenet-mobile-49")):
    PRESETS[_name]["qmd"] = dataclasses.replace(
        PRESETS[_name]["retinanet"], model=_model, qmd=_QUERIES[_name]
    )
DEFAULT_PRESET = "tiny"


def method_family(method: str) -> Family:
    """The family a training ``method`` belongs to: ``qmd``, else ViLD's (whose settings check
    the method's name)."""
    return "qmd" if method == QMD_METHOD else "vild"


def family_of(model: str) -> Family:
    """The detector family of a registry name; a name of no detector is a ``VvkError``."""
    from vvk.models import get_entry

    entry = get_entry(model)  # an unknown name: its own error, with close names
    family = next((f for f in FAMILIES if model.startswith(f"{f}-")), None)
    if entry.task != "detection" or family is None:
        raise VvkError(
            f"model={model}: not a detector (its task is {entry.task})",
            hint="see vvk models list --task detection", params=("model",),
        )  # fmt: skip
    return family


def preset_for(name: str, model: str | None = None) -> DetectionPreset:
    """Preset ``name`` of ``model``'s family (RetinaNet when no model is given), its model set."""
    if name not in PRESETS:
        raise VvkError(
            f"preset={name}: not a detection preset", hint=f"one of {', '.join(PRESETS)}", params=("preset",)
        )
    family = family_of(model) if model is not None else "retinanet"
    preset = PRESETS[name][family]
    return preset if model is None else dataclasses.replace(preset, model=model)
