#!/usr/bin/env bash
# The checks that need a CUDA GPU, for a machine lent for a few minutes. Each part has its own time limit, so
# that one slow part leaves the others' results; every log and result lands under OUT.
#
#   bash benchmarks/cuda_checks.sh OUT launch     # NCCL: a torchrun launch of the image experiment (~1 min)
#   bash benchmarks/cuda_checks.sh OUT adaptive   # adaptive statistics, VGG19, 4 solver settings (item 2; ~3 min)
#   bash benchmarks/cuda_checks.sh OUT mobilenet  # adaptive statistics, MobileNetV1, 2 tolerances (~3 min)
#   bash benchmarks/cuda_checks.sh OUT phases     # mobilenet, then images_stage and splitting_phase
#   bash benchmarks/cuda_checks.sh OUT depthwise  # grouped convolutions against tap loops (~1 min)
#   bash benchmarks/cuda_checks.sh OUT profile    # a cProfile of VGG19's splitting phase (~1 min)
#
# Needs Fashion-MNIST's IDX files in /usr/share/datasets/fashion-mnist (the launch part takes FASHION_MNIST=DIR
# instead), Python with torch (CUDA), numpy, scipy, pyyaml, typer, tqdm, and torch-pruning for the launch part.
set -u
out=$(realpath -m "${1:?usage: cuda_checks.sh OUT PART...}")
shift
mkdir -p "$out"
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
data=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, say how it ended
    local name=$1 seconds=$2
    shift 2
    local started=$SECONDS
    timeout "$seconds" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - started)) s"
    tail -n 25 "$out/$name.log"
}

launch() {
    # One process per GPU under torchrun (NCCL), then the same run in one plain process: the two must agree.
    cat >"$out/tiny.yaml" <<EOF
train_samples: 2048
test_samples: 1024
start_width: 4
full_width: 8
batch_size: 64
epochs: 1
finetune_epochs: 1
stages: 1
retrain: false
split_batches: 4
pruning_methods: [l1]
EOF
    local common=(run images --dataset fashion-mnist --data-root "$data" --device cuda --config "$out/tiny.yaml" -q)
    step torchrun 100 "$python" -m torch.distributed.run --standalone --nproc_per_node="$(nvidia-smi -L | wc -l)" \
        -m splitgrow "${common[@]}" --out "$out/torchrun"
    step single 100 "$python" -m splitgrow "${common[@]}" --out "$out/single"
    "$python" - "$out" <<'EOF'
import json, sys
rows = {}
for run in ("torchrun", "single"):
    try:
        results = json.load(open(f"{sys.argv[1]}/{run}/seed-0/results.json"))
    except OSError as error:
        print(run, "no results:", error)
        continue
    rows[run] = [(r["method"], r["stage"], r["accuracy"], r["parameters"]) for r in results["rows"]]
    print(run, "processes:", results.get("processes"), "device:", results.get("config", {}).get("device"))
    for row in rows[run]:
        print("  ", row)
EOF
}

adaptive() {
    # tolerances 1e-3 and 1e-2, every position or 256 per image: as the CPU table in README, without 128 samples
    step adaptive-vgg19 240 "$python" benchmarks/adaptive_statistics.py --device cuda --models vgg19 \
        --sample-sizes 512 1024 2048 --out "$out/adaptive_statistics-vgg19"
}

mobilenet() {
    # the position grid does not apply to MobileNetV1's depthwise-separable sites
    step adaptive-mobilenetv1 200 "$python" benchmarks/adaptive_statistics.py --device cuda --models mobilenetv1 \
        --draws 2 --adaptive-draws 2 --sample-sizes 512 2048 --max-positions 0 \
        --out "$out/adaptive_statistics-mobilenetv1"
}

phases() {
    mobilenet
    step images_stage 60 "$python" benchmarks/images_stage.py --device cuda --samples 2048 --repeats 2 \
        --out "$out/images_stage"
    step splitting_phase 90 "$python" benchmarks/splitting_phase.py --device cuda --out "$out/splitting_phase"
}

depthwise() {
    step depthwise_products 60 "$python" benchmarks/depthwise_products.py --device cuda --samples 256 \
        --out "$out/depthwise_products"
}

profile() {
    # where a VGG19 phase on 1,024 samples spends its time on this GPU (cProfile: the Python side and the waits)
    step profile 40 "$python" - <<'EOF'
import cProfile, pstats, torch, torch.nn.functional as F
from _common import briefly_trained, fashion_mnist_batches
from splitgrow.network import SplittableNetwork
device = torch.device("cuda")
batches = fashion_mnist_batches(1024, 64, device=device)
model = briefly_trained("vgg19", 32, batches, 1, device=device)
net = SplittableNetwork(model, batches[0][0][:2])
net.splitting(batches[:2], F.cross_entropy, solver="lobpcg", tolerance=1e-3, seed=0)  # warm-up
torch.cuda.synchronize()
profiler = cProfile.Profile()
profiler.enable()
net.splitting(batches, F.cross_entropy, solver="lobpcg", tolerance=1e-3, seed=0)
torch.cuda.synchronize()
profiler.disable()
pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
EOF
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$python" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
for part in "$@"; do
    "$part"
done
