"""How fast are ViLD's distillation targets made? Regions/s of ``embed_regions`` per teacher.

    python benchmarks/vild_embed_regions.py [--teachers clip-vit-b-32 stand-in] [--images 4]
        [--regions 100] [--device cpu|cuda] [--out FILE]

Each teacher embeds ``--regions`` random boxes in each of the first ``--images`` images of the
built-in example's train split, as ``vvk detect embed-regions`` does (1x and 1.5x crops
resized by RoIAlign, two teacher passes per region, sum, normalise; shards written to a
temporary folder). ``clip-vit-b-32``: open_clip's ViT-B-32-quickgelu at random initialisation,
the paper's teacher's architecture and cost (its weights cannot be downloaded here and do not
change the time); ``stand-in``: vvk's small CNN teacher of the example. Writes
benchmarks/results/vild_embed_regions.json (keyed by device).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import save_records  # noqa: E402

from vvk.data.detection import open_coco  # noqa: E402
from vvk.examples.digits_on_photos import detection_example_dir  # noqa: E402
from vvk.methods.vild.regions import embed_regions  # noqa: E402
from vvk.methods.vild.teacher import ClipTeacher, StandInTeacher  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "vild_embed_regions.json"


def teacher_named(name: str, device: torch.device):
    if name == "clip-vit-b-32":
        import open_clip

        model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None, device=str(device))
        return ClipTeacher(model, name=name).to(device)
    return StandInTeacher([str(d) for d in range(10)]).eval().to(device)


class RandomBoxes:
    """Proposals: ``count`` XYXY boxes of 8 px or more inside each image, from a seeded generator."""

    def __init__(self, count: int):
        self.count, self.generator = count, torch.Generator().manual_seed(0)

    def __call__(self, image_id: int, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        corner = torch.rand(self.count, 2, generator=self.generator) * torch.tensor([width - 8, height - 8])
        room = torch.tensor([width, height]) - 8 - corner
        return torch.cat(
            [corner, corner + 8 + torch.rand(self.count, 2, generator=self.generator) * room], dim=1
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teachers", nargs="+", default=["clip-vit-b-32", "stand-in"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--regions", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    train = open_coco(detection_example_dir() / "train")
    train.images = dict(list(train.images.items())[: args.images])
    figures = {}
    for name in args.teachers:
        teacher = teacher_named(name, device)
        proposals = RandomBoxes(args.regions)
        with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
            embed_regions(
                train, proposals, teacher, Path(tmp) / "warm", proposals_name="random", shard_images=1
            )
            result = embed_regions(train, proposals, teacher, Path(tmp) / "r", proposals_name="random")
        figures[name] = {
            "images": result.images, "regions": result.regions, "seconds": round(result.seconds, 2),
            "regions_per_second": round(result.regions_per_second, 1),
            "images_per_second_at_300_regions": round(result.regions_per_second / 300, 3),
            "teacher_image_size": teacher.image_size, "teacher_dim": teacher.dim,
        }  # fmt: skip
        print(name, figures[name], flush=True)
    record = {"machine": machine_info(), "threads": torch.get_num_threads(), "teachers": figures}
    save_records(args.out, {"runs": {str(device): record}}, "runs")


if __name__ == "__main__":
    main()
