#!/usr/bin/env bash
# Every GPU test of vvk's kernels, the GPU kernel benchmarks, the pretraining throughput, the
# training loop's overhead, detection inference and training steps, ViLD's embedding throughput, in about 7 minutes, with the
# results as JSON in $OUT (default benchmarks/results/gpu). For a lent GPU machine, after benchmarks/gpu_wheels.sh here (PyAV and
# kornia, which its image lacks) and, for the loop's before/after figure, an export of the loop
# to compare with (the machine has no git history; the folder travels as an untracked one):
#
#     mkdir .loop_baseline && git archive REV vvk | tar -x -C .loop_baseline   # REV: the old loop
#     OUT=/tmp/out benchmarks/gpu_check.sh            # PYTHON=python3 by default; carry .whl
#     rm -r .loop_baseline
#
# A failing or timed-out step is recorded and the next steps still run. Steps and time limits
# (their sum, 585 s, bounds the run):
#   deps     10 s  install the wheels in .whl/ (when present) into /tmp/site
#   env      10 s  card, driver, torch / triton / nvcc versions
#   build   120 s  the two CUDA extensions, compiled in parallel
#   tests    70 s  tests/kernels on the GPU (gpu-marked ones included) -> tests.xml
#   others   15 s  every other gpu-marked test in tests/
#   bench    75 s  benchmarks/kernels.py --gpu (saves after each part) -> kernels_gpu.json
#   pretrain 60 s  benchmarks/pretrain_throughput.py: ConST-CL paper preset, r3d-50-y, bf16
#                  -> pretrain_throughput.json
#   loop     60 s  benchmarks/loop_overhead.py: device reads, syncs and step time of the training
#                  loop on a small MLP, this tree vs .loop_baseline (when present) -> loop_overhead_gpu.json
#   detect   60 s  benchmarks/detection_inference.py --device cuda --dtype bf16: vvk RetinaNets
#                  vs torchvision's, batch 8 -> detection_inference_cuda_bf16.json
#   dtrain   60 s  benchmarks/detection_train_step.py --device cuda --dtype bf16: the paper
#                  presets' training step (RetinaNet SpineNet-49 640² x16, Mask R-CNN R50-FPN
#                  1024² x8) -> detection_train_step_paper_cuda_bf16.json
#   vild     45 s  benchmarks/vild_embed_regions.py --device cuda: regions/s of ViLD's distillation
#                  targets, CLIP ViT-B/32 and the stand-in teacher -> in gpu_check.json
# PART=2 runs instead (deps and env, then; 160 s, a second call of its own):
#   track    90 s  benchmarks/tracking_speed.py: SiamFC update frames/s, tiny and r3d-50, CPU and
#                  GPU -> tracking_speed.json
#   texture  60 s  benchmarks/texture_translation.py --cost-only --device cuda: seconds per SITT
#                  iteration at 288² and 128², translation images/s -> texture_translation_cuda.json
# Logs go to $OUT/logs/STEP.log, packed into $OUT/logs.tar.gz at the end (the device tool
# brings back at most 8 files). Summary: $OUT/gpu_check.json (steps with exit codes and
# seconds, the benchmark figures, the tail of every log). A failed build turns the cuda backend
# off (VVK_DISABLE_CUDA_EXTENSIONS=1) for the later steps instead of rebuilding in each of them.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-benchmarks/results/gpu}
PY=${PYTHON:-python3}
LOGS="$OUT/logs"
mkdir -p "$LOGS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-${TMPDIR:-/tmp}/vvk_torch_extensions}
STEPS="$OUT/steps.jsonl"
: >"$STEPS"

PART=${PART:-1}
PART2="track texture"
step() { # step NAME LIMIT_S COMMAND...: log to $OUT/NAME.log, record exit code and seconds
    local name=$1 limit=$2 t0 rc
    shift 2
    case " deps env $PART2 " in  # the steps of part 2; every other step belongs to part 1
    *" $name "*) [ "$PART" = 2 ] || [ "$name" = deps ] || [ "$name" = env ] || return 0 ;;
    *) [ "$PART" = 1 ] || return 0 ;;
    esac
    t0=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    printf '{"step": "%s", "rc": %d, "seconds": %d, "limit_s": %d}\n' "$name" "$rc" "$(($(date +%s) - t0))" "$limit" >>"$STEPS"
    echo "[$name] exit $rc after $(($(date +%s) - t0)) s (limit $limit s)"
    return "$rc"
}

if [ -d .whl ]; then
    step deps 10 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

step env 10 bash -c "nvidia-smi; command -v nvcc && nvcc --version; $PY -c '
import torch, triton
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__)
print(\"device\", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
'"

build_one='from vvk.kernels.OP.cuda import extension; extension(); print("built OP")'
if ! step build 120 bash -c "$PY -c '${build_one//OP/roi_align_3d}' & a=\$!
    $PY -c '${build_one//OP/contrastive}' & b=\$!
    wait \$a; ra=\$?; wait \$b; rb=\$?; exit \$((ra | rb))"; then
    export VVK_DISABLE_CUDA_EXTENSIONS=1
fi

step tests 70 "$PY" -m pytest tests/kernels -q -n 4 -p no:cacheprovider --junitxml="$OUT/tests.xml"
step others 15 "$PY" -m pytest tests -m gpu --ignore=tests/kernels -q -p no:cacheprovider \
    --continue-on-collection-errors
step bench 75 "$PY" benchmarks/kernels.py --gpu --out "$OUT" --budget-s 60
step pretrain 60 "$PY" benchmarks/pretrain_throughput.py --method constcl --preset paper --batch-size 16 \
    --out "$OUT"

LOOP_BASELINE=none
[ -d .loop_baseline/vvk ] && LOOP_BASELINE=.loop_baseline
step loop 60 "$PY" benchmarks/loop_overhead.py --device cuda --baseline "$LOOP_BASELINE" --rounds 2 --out "$OUT"
step detect 60 "$PY" benchmarks/detection_inference.py --device cuda --dtype bf16 --batch-size 8 --out "$OUT"
step dtrain 60 "$PY" benchmarks/detection_train_step.py --device cuda --dtype bf16 --out "$OUT"
step vild 45 "$PY" benchmarks/vild_embed_regions.py --device cuda --images 8 --regions 300 \
    --out "$OUT/vild_embed_regions_cuda.json"
step track 90 "$PY" benchmarks/tracking_speed.py --threads 16 --frames 20 --rounds 2 \
    --out "$OUT/tracking_speed.json"
step texture 60 "$PY" benchmarks/texture_translation.py --cost-only --device cuda --cost-iterations 10 \
    --out "$OUT/texture_translation_cuda.json"

"$PY" - "$OUT" <<'EOF' || echo '{"error": "could not write the summary"}' >"$OUT/gpu_check.json"
import json, os, sys
out = sys.argv[1]
def tail(name, lines=40):
    path = os.path.join(out, "logs", name + ".log")
    return open(path, errors="replace").read().splitlines()[-lines:] if os.path.exists(path) else None
steps = [json.loads(line) for line in open(os.path.join(out, "steps.jsonl"))]
summary = {
    "ok": all(s["rc"] == 0 for s in steps),
    "steps": steps,
    "cuda_extensions_disabled": os.environ.get("VVK_DISABLE_CUDA_EXTENSIONS") == "1",
    "logs": {s["step"]: tail(s["step"]) for s in steps},
}
for key, name in (("benchmarks", "kernels_gpu.json"), ("pretrain_throughput", "pretrain_throughput.json"),
                  ("loop_overhead", "loop_overhead_gpu.json"),
                  ("detection_inference", "detection_inference_cuda_bf16.json"),
                  ("detection_train_step", "detection_train_step_paper_cuda_bf16.json"),
                  ("vild_embed_regions", "vild_embed_regions_cuda.json"),
                  ("tracking_speed", "tracking_speed.json"), ("texture_translation", "texture_translation_cuda.json")):
    if os.path.exists(os.path.join(out, name)):
        summary[key] = json.load(open(os.path.join(out, name)))
if os.path.exists(os.path.join(out, "vild_embed_regions_cuda.json")):  # in the summary: 8 files at most
    os.remove(os.path.join(out, "vild_embed_regions_cuda.json"))
json.dump(summary, open(os.path.join(out, "gpu_check.json"), "w"), indent=2)
os.remove(os.path.join(out, "steps.jsonl"))  # in the summary now; at most 8 files come back from $OUT
print(json.dumps({"ok": summary["ok"], "steps": steps}, indent=2))
EOF
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -r "$LOGS"
