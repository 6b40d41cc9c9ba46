"""The distillation targets of the built-in example set, made once into the user cache.

ViLD distils the teacher's embeddings of proposals from an RPN trained on the *base* categories
(paper §4). For the built-in example: a ``vild-text`` detector trained on its train split with
the novel digits' boxes left out (:data:`PROPOSAL_STEPS` steps of the tiny preset: its RPN is
what is used), then its 300 best proposals per image embedded by the teacher
(:func:`~vvk.methods.vild.regions.embed_regions`). Both are kept under
``<cache>/vild/<example>-<teacher>-<novel>/``; an interrupted build continues where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from vvk.errors import VvkError
from vvk.methods.vild.regions import MAX_REGIONS, RegionStore, detector_proposals, embed_regions
from vvk.methods.vild.teacher import Teacher

logger = logging.getLogger("vvk.vild")

PROPOSAL_STEPS = 400  # the RPN's objectness and boxes are learned long before the classes are
REGIONS_PER_IMAGE = MAX_REGIONS


def demo_dir(teacher: Teacher, novel_spec: str) -> Path:
    from vvk.examples.digits_on_photos import DetectionExampleSpec
    from vvk.paths import cache_dir

    record = f"{teacher.name}|{novel_spec}|{PROPOSAL_STEPS}|{REGIONS_PER_IMAGE}"
    key = hashlib.sha256(record.encode()).hexdigest()[:10]
    return cache_dir() / "vild" / f"demo-{DetectionExampleSpec().key()}-{key}"


def demo_regions(
    teacher: Teacher, *, teacher_spec: str, novel_spec: str, max_regions: int | None = None
) -> RegionStore:
    """The built-in example's regions for ``teacher`` (named ``teacher_spec`` on the command
    line) and the split ``novel_spec``, the first ``max_regions`` of each image's."""
    from vvk.data.detection import open_coco
    from vvk.examples.digits_on_photos import detection_example_dir

    root = demo_dir(teacher, novel_spec)
    regions = root / "regions"
    if (regions / "regions.json").is_file():
        try:
            return RegionStore(regions, max_regions=max_regions)
        except VvkError:  # incomplete: continued below
            pass
    proposer = _proposal_detector(root, teacher_spec, novel_spec)
    logger.info("vild: embedding the built-in example's proposals with the %s teacher (once)", teacher.name)
    train = open_coco(detection_example_dir() / "train")
    embed_regions(train, detector_proposals(proposer), teacher, regions,
                  proposals_name="built-in vild-text RPN", max_regions=REGIONS_PER_IMAGE)  # fmt: skip
    return RegionStore(regions, max_regions=max_regions)


def _proposal_detector(root: Path, teacher_spec: str, novel_spec: str):
    """The ``vild-text`` detector whose RPN proposes the regions: trained once (into a hidden
    folder, renamed when done), then loaded."""
    from vvk.methods.detection.train import DETECTOR_FILE, train_detector
    from vvk.models import load

    done = root / "proposals"
    if not (done / DETECTOR_FILE).is_file():
        logger.info("vild: training the built-in example's proposal network on its base digits (once)")
        staging = root / ".proposals.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        overrides = [f"vild.teacher={teacher_spec}", f"vild.novel={novel_spec}", "eval_every=0"]
        train_detector(
            method="vild-text", steps=PROPOSAL_STEPS, overrides=overrides, out=staging, progress=False
        )
        shutil.rmtree(done, ignore_errors=True)
        staging.rename(done)
    return load(done / DETECTOR_FILE)
