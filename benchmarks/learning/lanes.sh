#!/usr/bin/env bash
# The learning grid of the noise-consistent target (issue 27) and the stronger SAC (issue 26), in two one-thread
# lanes from a worktree at a fixed commit, each finished CSV committed to this checkout's branch.
#
#     bash benchmarks/learning/lanes.sh COMMIT [WORKTREE] [RUNS]     # e.g. a053fd0 ../grid ../grid-runs
#
# Lane A: qsm-consistent on Gymnasium (100k frames), then on DMC, then qsm-auto on Gymnasium; lane B: the SAC
# baselines (sac-alpha0.1 on DMC first, then TorchRL's SAC on Gymnasium). Run again after a stop: finished runs
# (committed CSVs) are skipped and interrupted ones resume from their checkpoints under RUNS. Stop both with
# `pkill -INT -f benchmarks/learning/grid.py; pkill -INT -f sota-implementations/qsm/qsm.py;
# pkill -INT -f benchmarks/learning/baselines.py` (each run writes a checkpoint).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
commit=${1:?usage: lanes.sh COMMIT [WORKTREE] [RUNS]}
worktree=$(realpath -m "${2:-$here/../grid}")
runs=$(realpath -m "${3:-$here/../grid-runs}")
[ -d "$worktree" ] || git -C "$here" worktree add --detach "$worktree" "$commit"
[ "$(git -C "$worktree" rev-parse HEAD)" = "$(git -C "$here" rev-parse "$commit")" ] || {
  echo "$worktree is not at $commit: remove it (git worktree remove) or name another folder" >&2; exit 2; }
export OMP_NUM_THREADS=1  # one thread per lane: two torch processes on two cores otherwise fight
grid() { (cd "$worktree" && python benchmarks/learning/grid.py --jobs 1 --commit --runs "$runs" "$@"); }
gym=(--frames 100000 --out "$here/benchmarks/results/gymnasium")
dmc=(--out "$here/benchmarks/results/learning")
gym_tasks=(HalfCheetah-v5 Hopper-v5 Walker2d-v5 Ant-v5)
dmc_tasks=(cheetah_run walker_walk cartpole_swingup finger_spin walker_run)
lane_a() {
  grid "${gym[@]}" --tasks "${gym_tasks[@]}" --algorithms qsm-consistent
  grid "${dmc[@]}" --frames 50000 --tasks "${dmc_tasks[@]}" --algorithms qsm-consistent
  grid "${dmc[@]}" --frames 20000 --tasks cartpole_balance --algorithms qsm-consistent
  grid "${gym[@]}" --tasks HalfCheetah-v5 Ant-v5 --algorithms qsm-auto
}
lane_b() {
  grid "${gym[@]}" --tasks HalfCheetah-v5 --algorithms sac --seeds 0
  grid "${dmc[@]}" --frames 50000 --tasks "${dmc_tasks[@]}" --algorithms sac-alpha0.1
  grid "${dmc[@]}" --frames 20000 --tasks cartpole_balance --algorithms sac-alpha0.1
  grid "${gym[@]}" --tasks "${gym_tasks[@]}" --algorithms sac
}
lane_a > "$runs.lane-a.log" 2>&1 &
lane_b > "$runs.lane-b.log" 2>&1 &
echo "lanes started from $worktree at $commit; logs $runs.lane-a.log and $runs.lane-b.log"
