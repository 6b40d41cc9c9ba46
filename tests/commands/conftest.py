"""What the detector command tests share: a small built-in example and a short run's arguments."""

from __future__ import annotations

import pytest

from vvk.examples.digits_on_photos import DetectionExampleSpec, generate_detection_example

SMALL_EXAMPLE = DetectionExampleSpec(train_images=8, val_images=4, size=96, min_scale=16, max_scale=48)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """A small built-in detection example of the module's own: 8 train and 4 val images of 96²."""
    return generate_detection_example(tmp_path_factory.mktemp("example") / "example", SMALL_EXAMPLE)
