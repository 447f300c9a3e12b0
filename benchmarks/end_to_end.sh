#!/usr/bin/env bash
# End-to-end frames/s of the training script: qsm.py (QSM) at each of WIDTHS, with its default (the update
# compiled where torch.compile can build it) and eager (compile.compile=false); the same loop with TorchRL's SAC
# (benchmarks/learning/baselines.py sac); TorchRL's own SAC sota script; and, with OFFICIAL and JAX_PYTHON, the
# authors' loop cost without the environment (their update + acting per frame, from vs_authors_jax.py).
#
#   SAC_DIR=/path/to/rl/sota-implementations/sac OFFICIAL=/path/to/score_matching_rl JAX_PYTHON=.venv-jax/bin/python \
#     bash benchmarks/end_to_end.sh > benchmarks/results/end_to_end_cpu.txt
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
echo "# $TASK_DOMAIN-$TASK_NAME, $FRAMES frames ($INIT random), batch 256, UTD 1, $(nproc) cores, $(date -u +%F)"
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
for W in ${WIDTHS:-256 512}; do
  wide=(network.hidden_sizes=[$W,$W])
  timed "qsm.py W$W (default)" python "$ROOT/sota-implementations/qsm/qsm.py" "${common[@]}" "${wide[@]}" \
    hydra.run.dir="$OUT/qsm$W"
  timed "qsm.py W$W eager" python "$ROOT/sota-implementations/qsm/qsm.py" "${common[@]}" "${wide[@]}" \
    compile.compile=false hydra.run.dir="$OUT/qsm$W-eager"
  timed "SAC, our loop W$W" python "$ROOT/benchmarks/learning/baselines.py" sac "${common[@]}" "${wide[@]}" \
    hydra.run.dir="$OUT/sac$W"
  grep -h "torch.compile of the update" "$OUT/qsm$W.log" | sed "s/^/#   W$W: /"
done
if [ -n "${SAC_DIR:-}" ]; then
  (cd "$SAC_DIR" && timed "TorchRL sac.py (sota)" python sac.py env.library=dm_control env.name=$TASK_DOMAIN \
    env.task=$TASK_NAME collector.total_frames=$FRAMES collector.init_random_frames=$INIT logger.backend= \
    logger.eval_iter=$FRAMES replay_buffer.size=$FRAMES hydra.run.dir="$OUT/sota")
fi
if [ -n "${OFFICIAL:-}" ] && [ -n "${JAX_PYTHON:-}" ]; then
  echo "# the authors' loop without the environment (2 threads, widths ${WIDTHS:-256 512}):"
  "$JAX_PYTHON" "$ROOT/benchmarks/vs_authors_jax.py" --official "$OFFICIAL" --threads 2 --widths ${WIDTHS:-256 512} \
    --rounds 3 --no-compile 2>/dev/null | grep -E "=== widths|authors' loop" | sed "s/^/#   /"
fi
