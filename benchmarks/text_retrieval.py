"""Does VATT align video and text? Zero-shot text retrieval on the action example set's held-out videos.

    python benchmarks/text_retrieval.py [--seeds 0 1 2] [--steps 1200] [--label NAME] [--out PATH]
    python benchmarks/text_retrieval.py --seeds 0 --steps 4 --label smoke --out /tmp/tr.json  # smoke

Data (issue 21): the built-in example set with sprite actions, captions and sound
(``vvk.examples.synthetic.action_example_dir``; ``--videos-per-class``, ``--frames``, ``--size``):
every video's caption says how the camera moves, over which photograph, and which photographs'
sprites move how; each sprite sounds a tone whose pitch follows its height. Per seed, VATT's
``tiny`` preset is pretrained (``train.seed``) on the set's training split with its captions
for ``--steps`` steps; then ``vvk.eval.text_retrieval`` scores the held-out split (a quarter of
each class) both ways, for the run and for the same model at random initialisation with the
run's initial seed. Writes benchmarks/results/text_retrieval.json (``--out``), one record per
``--label``: every seed's metrics and the mean ± std over seeds of each, pretrained and random.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import save_records, spread  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "text_retrieval.json"


def run_seed(seed: int, root: Path, work: Path, steps: int) -> dict:
    from vvk.methods.pretrain import pretrain
    from vvk.methods.vatt.retrieval import clip_spec, load_vatt, random_vatt
    from vvk.methods.vatt.retrieval import vatt_text_retrieval as text_retrieval

    started = time.perf_counter()
    run = pretrain("vatt", data=root / "train.csv", captions=root / "captions.tsv", preset="tiny",
                   steps=steps, overrides=[f"train.seed={seed}"], out=work / f"vatt-{seed}",
                   progress=False)  # fmt: skip
    seconds = time.perf_counter() - started
    model, preset, _ = load_vatt(run.run_dir)
    common = {"clips": clip_spec(preset), "fps": preset.fps}
    pretrained = text_retrieval(model, root / "val.csv", root / "captions.tsv", **common)
    random = text_retrieval(random_vatt(preset, seed=seed), root / "val.csv", root / "captions.tsv", **common)
    metrics = [k for k in pretrained if k.startswith(("t2v_", "v2t_"))]
    return {"seed": seed, "steps": steps, "pretrain_seconds": round(seconds, 1),
            "videos": pretrained.get("videos"), "pretrained": {k: pretrained[k] for k in metrics},
            "random": {k: random[k] for k in metrics}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--videos-per-class", type=int, default=16)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--label", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    label = args.label or f"vatt-tiny-{args.steps}steps-{args.videos_per_class}x{args.frames}f{args.size}px"

    from vvk.examples.synthetic import SyntheticSpec, action_example_dir

    spec = SyntheticSpec(videos_per_class=args.videos_per_class, frames=args.frames, size=args.size)
    root = action_example_dir(replace(spec, actions=True))
    results: dict = {"machine": machine_info(), "records": {}}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vvk-text-retrieval-bench-") as work:
        for seed in args.seeds:
            runs.append(run_seed(seed, root, Path(work), args.steps))
            print(json.dumps(runs[-1]), flush=True)
            metrics = list(runs[0]["pretrained"])
            results["records"][label] = {
                "summary": {side: {k: spread([r[side][k] for r in runs]) for k in metrics}
                            for side in ("pretrained", "random")},
                "runs": runs,
                "protocol": {"data": str(root), "videos_per_class": args.videos_per_class,
                             "frames": args.frames, "size": args.size, "preset": "tiny", "steps": args.steps,
                             "split": "val.csv"},
                "machine": machine_info(),
            }  # fmt: skip
            save_records(args.out, results, "records")
    print(json.dumps({"label": label, **results["records"][label]["summary"]}), flush=True)


if __name__ == "__main__":
    main()
