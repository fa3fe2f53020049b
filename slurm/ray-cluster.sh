#!/usr/bin/env bash
# Inside a Slurm allocation: start Ray across its nodes (head on the first, one worker per other node),
# wait until every node has joined, run the given command on the head node, then stop Ray.
# Usage (from the batch script `distill-bench slurm CONFIG` renders):
#   bash slurm/ray-cluster.sh distill-bench run CONFIG --address auto
set -euo pipefail

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${nodes[0]}
port=${RAY_PORT:-6379}
gpus=${SLURM_GPUS_ON_NODE:-0}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | awk '{print $1}')
export RAY_ADDRESS="$head_ip:$port"
# The cluster lives inside this allocation's private network and only for this job.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
# Ray starts workers at niceness 15 and the vLLM servers would inherit it.
export RAY_worker_niceness=${RAY_worker_niceness:-0}

srun --nodes=1 --ntasks=1 -w "$head_node" \
  ray start --head --node-ip-address="$head_ip" --port="$port" --num-gpus="$gpus" --block &
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "$node" ray start --address="$RAY_ADDRESS" --num-gpus="$gpus" --block &
done

python - "${#nodes[@]}" <<'PY'
import sys, time
import ray
want, deadline = int(sys.argv[1]), time.monotonic() + 300
while time.monotonic() < deadline:  # nodes join over seconds; bounded wait with a clear failure
    try:
        ray.init(address="auto")
        if len([n for n in ray.nodes() if n["Alive"]]) >= want:
            sys.exit(0)
        ray.shutdown()
    except ConnectionError:
        pass
    time.sleep(5)
sys.exit(f"Ray cluster did not reach {want} nodes in 300 s")
PY

status=0
"$@" || status=$?
ray stop --force >/dev/null 2>&1 || true
exit "$status"
