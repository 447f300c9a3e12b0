#!/usr/bin/env bash
# End-to-end frames/s of the training script: qsm.py (QSM), the same loop with TorchRL's SAC
# (benchmarks/learning/baselines.py sac), and TorchRL's own SAC sota script, on the same DMC task and budget.
#
#   SAC_DIR=/path/to/rl/sota-implementations/sac bash benchmarks/end_to_end.sh > benchmarks/results/end_to_end_cpu.txt
#
# SAC_DIR holds TorchRL's sac.py, utils.py and config.yaml (pytorch/rl, sota-implementations/sac).
# Without it, that row is skipped. Run on a quiet machine: one run at a time, all threads.
set -u
FRAMES=${FRAMES:-20000}
INIT=${INIT:-5000}
TASK_DOMAIN=${TASK_DOMAIN:-cheetah}
TASK_NAME=${TASK_NAME:-run}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mktemp -d)
echo "# $TASK_DOMAIN-$TASK_NAME, $FRAMES frames ($INIT random), batch 256, widths 256, UTD 1, $(nproc) cores, $(date -u +%F)"
printf "%-28s %10s %10s\n" run seconds frames/s

timed() {  # timed NAME COMMAND...
  local name=$1
  shift
  local start=$SECONDS
  if "$@" > "$OUT/$name.log" 2>&1; then
    local seconds=$((SECONDS - start))
    printf "%-28s %10d %10.1f\n" "$name" "$seconds" "$(echo "$FRAMES / $seconds" | bc -l)"
  else
    echo "$name failed: $(tail -n 3 "$OUT/$name.log")"
  fi
}

common=(env.domain=$TASK_DOMAIN env.task=$TASK_NAME collector.total_frames=$FRAMES collector.init_random_frames=$INIT
        eval.interval=$FRAMES eval.episodes=1 logger.backend= replay_buffer.size=$FRAMES)
timed "qsm.py (QSM)" python "$ROOT/sota-implementations/qsm/qsm.py" "${common[@]}" hydra.run.dir="$OUT/qsm"
timed "SAC through our loop" python "$ROOT/benchmarks/learning/baselines.py" sac "${common[@]}" hydra.run.dir="$OUT/sac"
if [ -n "${SAC_DIR:-}" ]; then
  (cd "$SAC_DIR" && timed "TorchRL sac.py (sota)" python sac.py env.library=dm_control env.name=$TASK_DOMAIN \
    env.task=$TASK_NAME collector.total_frames=$FRAMES collector.init_random_frames=$INIT logger.backend= \
    logger.eval_iter=$FRAMES replay_buffer.size=$FRAMES hydra.run.dir="$OUT/sota")
fi
