#!/usr/bin/env bash
# Inside a Slurm allocation: start Ray across its nodes (head on the first, one worker per other node),
# wait until every node has joined, run the given command on the head node, then stop Ray.
# Usage (the batch script `distill-bench slurm CONFIG` renders execs it, with DISTILL_GPUS_PER_NODE,
# DISTILL_RUN_DIR and DISTILL_JOB_DIR exported):
#   bash slurm/ray-cluster.sh distill-bench run CONFIG --address auto
# The log's last line says how the job ended: the run's own summary line when it printed one, else this
# script's reason. Each node's `ray start` output goes to ray-<node>-<job>.log in the job dir, not the log.
# Signals: TERM (Slurm preempts, requeues or cancels the job) and USR1 (sbatch --signal, before the time
# limit) stop the run with TERM; after USR1 the job requeues itself if this attempt stored any cell.
# The decisions live in bench/slurm_job.py (`python -m bench.slurm_job ...`); this file only sequences them.
set -euo pipefail

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${nodes[0]}
port=${RAY_PORT:-6379}
gpus=${DISTILL_GPUS_PER_NODE:-0}
job_dir=${DISTILL_JOB_DIR:-.}
run_dir=${DISTILL_RUN_DIR:-.}
job=${SLURM_JOB_ID:-local}
summary_file="$job_dir/summary-$job"
mkdir -p "$job_dir"

# Each `ray start` step asks for the job's GPUs itself: with --exclusive the job holds every GPU of the node
# (SLURM_GPUS_ON_NODE) while a step sees only what it requested (CUDA_VISIBLE_DEVICES), and Ray refuses to
# start with more GPUs than it sees. `bench.slurm_job ray-start` passes Ray the count the step sees (0 on CPU).
# --whole: the step gets every CPU the job holds on its node; by default a one-task step gets one CPU, and
# where Slurm binds tasks to their CPUs (task/affinity, task/cgroup) Ray and every vLLM server would share it.
step=(--nodes=1 --ntasks=1 --whole)
if ((gpus > 0)); then
  step+=(--gpus-per-node="$gpus")
fi

step_pids=()
run_pid=""
stopped_by=""  # TERM or USR1 once Slurm asked the job to stop
signals=0
steps_stop_s=5  # how long the teardown waits for the `ray start` steps to end (Slurm's KillWait is 30 s)
last_line="ray-cluster: FAILED before Ray started (the error is above)"

stop() {
  stopped_by=$1
  signals=$((signals + 1))
  if [[ -z $run_pid ]]; then
    last_line="ray-cluster: stopped by SIG$1 before the run started"
    exit 143
  fi
  kill -TERM "$run_pid" 2>/dev/null || true  # the run abandons its cells in flight; stored cells stay
}
trap 'stop TERM' TERM
trap 'stop USR1' USR1

cleanup() {
  trap '' TERM USR1  # the teardown runs to its end (Slurm's KillWait bounds it)
  # End the steps: each one's `bench.slurm_job ray-start` stops its node's Ray on SIGTERM. Bounded: when Slurm
  # is ending the job itself, srun may wait out KillWait for its step, and this teardown must finish (and
  # print the last line) before Slurm's SIGKILL. A step killed before it ended may leave Ray on this node.
  local deadline=$((SECONDS + steps_stop_s)) forced=""
  for pid in "${step_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${step_pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      forced=1
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n $forced ]]; then
    ray stop --force --grace-period 2 >/dev/null 2>&1 || true  # 16 s by default, waiting for unreaped zombies
  fi
  rm -f "${RAY_AUTH_TOKEN_PATH:-}"
  if [[ $stopped_by == USR1 && -n $run_pid ]]; then
    requeue
  fi
  if [[ -s $summary_file ]]; then
    [[ -n $stopped_by ]] && printf '%s\n' "$last_line"
    last_line=$(<"$summary_file")
  fi
  printf '%s\n' "$last_line"  # after the steps' own shutdown noise: the log's last line says how the job ended
}
trap cleanup EXIT

requeue() {
  # Near the time limit: come back and resume, unless this attempt stored nothing (a cell longer than the
  # time limit would requeue forever).
  local stored
  stored=$(python -m bench.slurm_job stored "$run_dir" 2>/dev/null) || stored=$stored_before
  if ((stored <= stored_before)); then
    last_line+="; no cell was stored in this attempt, so the job is not requeued (give it a longer --time)"
  elif scontrol requeue "$job" >/dev/null 2>&1; then
    last_line+="; cells stored in this attempt: $((stored - stored_before)); job $job requeued to resume"
  else
    last_line+="; 'scontrol requeue $job' failed: submit the job again to resume"
  fi
}

# Ray's token auth stays on, for one node as for many: the head's ports listen on the node's network, which
# other users of the cluster share, and an unauthenticated Ray runs any code it is sent. The token is fresh
# for this job, in a file only this user can read, in the job's directory (shared with every node, like the
# repository); srun hands RAY_AUTH_TOKEN_PATH to every step and the driver inherits it.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$job_dir/ray-auth-token-$job"
python -m bench.slurm_job token "$RAY_AUTH_TOKEN_PATH"
# Ray starts workers at niceness 15 and the vLLM servers would inherit it.
export RAY_worker_niceness=${RAY_worker_niceness:-0}

head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | awk '{print $1}')
export RAY_ADDRESS="$head_ip:$port"

srun "${step[@]}" -w "$head_node" \
  python -m bench.slurm_job ray-start --head --node-ip-address="$head_ip" --port="$port" --block \
  >>"$job_dir/ray-$head_node-$job.log" 2>&1 &
step_pids+=("$!")
steps=("$head_node=$!")
for node in "${nodes[@]:1}"; do
  srun "${step[@]}" -w "$node" python -m bench.slurm_job ray-start --address="$RAY_ADDRESS" --block \
    >>"$job_dir/ray-$node-$job.log" 2>&1 &
  step_pids+=("$!")
  steps+=("$node=$!")
done

# Bounded: fails within seconds when a `ray start` step exits, and after 300 s if nodes never join.
if ! reason=$(python -m bench.slurm_job wait "${#nodes[@]}" "${steps[@]}"); then
  last_line="ray-cluster: FAILED: ${reason:-the cluster wait failed} (see $job_dir/ray-*-$job.log); '$*' did not run"
  exit 1
fi

stored_before=$(python -m bench.slurm_job stored "$run_dir")
python -m bench.slurm_job supervise "$summary_file" -- "$@" &
run_pid=$!
while :; do  # a trap cuts `wait` short; wait again until the run itself has exited
  seen=$signals
  status=0
  wait "$run_pid" || status=$?
  ((signals == seen)) && break
done
case $stopped_by in
  TERM) last_line="ray-cluster: stopped by Slurm (SIGTERM: preempted, requeued or cancelled); '$*' exited with status $status; stored cells are kept and a requeued job resumes after them" ;;
  USR1) last_line="ray-cluster: time limit near (SIGUSR1): stopped '$*' (status $status)" ;;
  *) last_line="ray-cluster: '$*' exited with status $status" ;;
esac
exit "$status"
