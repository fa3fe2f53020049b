#!/usr/bin/env bash
# Inside a Slurm allocation: start Ray across its nodes (head on the first, one worker per other node),
# wait until every node has joined, run the given command on the head node, then stop Ray.
# Usage (from the batch script `distill-bench slurm CONFIG` renders, which exports DISTILL_GPUS_PER_NODE
# and DISTILL_JOB_DIR):
#   bash slurm/ray-cluster.sh distill-bench run CONFIG --address auto
# The decisions live in bench/slurm.py (`python -m bench.slurm ...`); this file only sequences them.
set -euo pipefail

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${nodes[0]}
port=${RAY_PORT:-6379}
gpus=${DISTILL_GPUS_PER_NODE:-0}
job_dir=${DISTILL_JOB_DIR:-.}

# Each `ray start` step asks for the job's GPUs itself: with --exclusive the job holds every GPU of the node
# (SLURM_GPUS_ON_NODE) while a step sees only what it requested (CUDA_VISIBLE_DEVICES), and Ray refuses to
# start with more GPUs than it sees. `bench.slurm ray-start` passes Ray the count the step sees (0 on CPU).
step=(--nodes=1 --ntasks=1)
if ((gpus > 0)); then
  step+=(--gpus-per-node="$gpus")
fi

step_pids=()
last_line="ray-cluster: FAILED before Ray started (the error is above)"
cleanup() {
  # `ray start --block` under srun does not stop on `ray stop`: end the steps, then clean up what is left.
  for pid in "${step_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${step_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  ray stop --force >/dev/null 2>&1 || true
  rm -f "${RAY_AUTH_TOKEN_PATH:-}"
  echo "$last_line"  # after the steps' own shutdown noise: the log's last line says how the job ended
}
trap cleanup EXIT

# Ray's token auth stays on, for one node as for many: the head's ports listen on the node's network, which
# other users of the cluster share, and an unauthenticated Ray runs any code it is sent. The token is fresh
# for this job, in a file only this user can read, in the job's directory (shared with every node, like the
# repository); srun hands RAY_AUTH_TOKEN_PATH to every step and the driver inherits it.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$job_dir/ray-auth-token-${SLURM_JOB_ID:-local}"
python -m bench.slurm token "$RAY_AUTH_TOKEN_PATH"
# Ray starts workers at niceness 15 and the vLLM servers would inherit it.
export RAY_worker_niceness=${RAY_worker_niceness:-0}

head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | awk '{print $1}')
export RAY_ADDRESS="$head_ip:$port"

srun "${step[@]}" -w "$head_node" \
  python -m bench.slurm ray-start --head --node-ip-address="$head_ip" --port="$port" --block &
step_pids+=("$!")
steps=("$head_node=$!")
for node in "${nodes[@]:1}"; do
  srun "${step[@]}" -w "$node" python -m bench.slurm ray-start --address="$RAY_ADDRESS" --block &
  step_pids+=("$!")
  steps+=("$node=$!")
done

# Bounded: fails within seconds when a `ray start` step exits, and after 300 s if nodes never join.
if ! reason=$(python -m bench.slurm wait "${#nodes[@]}" "${steps[@]}"); then
  last_line="ray-cluster: FAILED: ${reason:-the cluster wait failed}; '$*' did not run"
  exit 1
fi

status=0
"$@" || status=$?
last_line="ray-cluster: '$*' exited with status $status"
exit "$status"
