#!/usr/bin/env bash
# The GPU checks, as one prepared script for a lent GPU machine (benchmarks/README.md, "GPU").
#
#   bash benchmarks/gpu_checks.sh            # DEVICE=cuda; results under $OUT (default gpu_out/)
#   DEVICE=cpu FRAMES=600 bash benchmarks/gpu_checks.sh   # a dry run of the same steps on a CPU
#   SKIP="train_sac" bash benchmarks/gpu_checks.sh         # leave steps out (grid, offline_to_online, ...)
#
# Where the machine lacks our dependencies, wheels carried in .whl/ are installed to /tmp/site first.
# Each step has its own time limit and log; a failing step does not stop the others.
set -u
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
FRAMES=${FRAMES:-4000}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
# physics only unless asked: without EGL's library, MUJOCO_GL=egl fails at import
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-disable}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  python3 -c "import sys, torch, torchrl, tensordict; print(sys.version.split()[0], 'torch', torch.__version__, 'torchrl', torchrl.__version__, 'tensordict', tensordict.__version__)"
} > "$OUT/steps.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: runs COMMAND with a time limit, logs to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  [[ " ${SKIP:-} " == *" $name "* ]] && return  # SKIP="name ...": steps to leave out
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/steps.txt"
}

step update_speed 170 bash -c "python3 benchmarks/update_speed.py --device $DEVICE --widths 256 512 --compile \
  && python3 benchmarks/update_speed.py --device $DEVICE --widths 256 --compile qsm sac"
# ours eager and compiled against TorchRL's SAC, as vs_authors_jax.py runs on a GPU (no JAX there)
step vs_sac 170 python3 benchmarks/vs_authors_jax.py --device "$DEVICE" --widths 256 512
train() {  # train NAME SECONDS SCRIPT... OVERRIDES...: a short training run; keeps its returns.csv
  local name=$1
  shift
  local limit=$1
  shift
  step "$name" "$limit" python3 "$@" device="$DEVICE" env.domain=cheetah env.task=run \
    collector.total_frames="$FRAMES" collector.init_random_frames=1000 eval.interval="$FRAMES" eval.episodes=2 \
    logger.backend= hydra.run.dir="/tmp/gpu_checks/$name"
  cp "/tmp/gpu_checks/$name/returns.csv" "$OUT/$name.csv" 2>/dev/null
}
train train_qsm 110 sota-implementations/qsm/qsm.py
train train_qsm_compiled 170 sota-implementations/qsm/qsm.py compile.compile=true
# the one-graph update steps Adam's state in place: is it replayed as a CUDA graph? (0 lines: yes)
echo "train_qsm_compiled: $(grep -c 'skipping cudagraphs' "$OUT/train_qsm_compiled.log") 'skipping cudagraphs' lines" \
  | tee -a "$OUT/steps.txt"
train train_sac 90 benchmarks/learning/baselines.py sac
# the learning harness on the GPU, unchanged but for --device and the budget (issue: learning results)
step grid 420 python3 benchmarks/learning/grid.py --device "$DEVICE" --frames "$FRAMES" \
  --init-random-frames $((FRAMES / 2)) --eval-interval $((FRAMES / 2)) --eval-episodes 2 --checkpoint-interval "$FRAMES" \
  --algorithms qsm sac td3 --tasks cheetah_run --seeds 0 --jobs 3 --out "$OUT/grid" --runs /tmp/gpu_checks/grid &
# the offline-to-online example borrows the machine's CPU cores (it runs on the CPU): seeds 0-2, two threads each
step offline_to_online 480 bash -c 'for s in 0 1 2; do for v in naive guarded; do
  OMP_NUM_THREADS=2 python3 examples/offline_to_online.py --variants $v --seed $s > "$0/o2o_${v}_seed$s.log" 2>&1 &
  done; done; wait' "$OUT" &
wait
# what comes back from a lent machine is at most 8 files: PACK=1 packs everything into one archive
if [[ "${PACK:-0}" == 1 ]]; then
  tar czf /tmp/gpu_checks.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/gpu_checks.tgz "$OUT/"
fi
