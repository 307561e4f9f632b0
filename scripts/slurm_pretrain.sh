#!/usr/bin/env bash
# Multi-node MST pretraining under SLURM: one torchrun per node, rendezvous on the first node.
# usage: sbatch --nodes=N scripts/slurm_pretrain.sh CONFIG DATA_DIR OUT_DIR [--set key=value ...]
#SBATCH --job-name=mst
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=80
#SBATCH --time=72:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail
config="$1"; data="$2"; out="$3"; shift 3
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# SIGTERM (preemption / time limit, --signal=TERM@120) reaches every rank: each finishes its step, rank 0 writes
# the checkpoint, all exit 0. SLURM does not requeue a job that ran out of time, so this script requeues itself
# while the run is unfinished; the requeued job runs this same script and resumes from $out/checkpoint.pt.
srun torchrun \
  --nnodes="$SLURM_JOB_NUM_NODES" --nproc_per_node="${GPUS_PER_NODE:-8}" \
  --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$head_node:29500" \
  -m mst pretrain --config "$config" --data "$data" --out "$out" "$@"

unfinished=$(python - "$out" <<'PY'
import sys, torch
ck = torch.load(f"{sys.argv[1]}/checkpoint.pt", map_location="cpu", weights_only=True)
print(int(ck["epoch"] < ck["config"]["optim"]["epochs"]))
PY
)
if [ "$unfinished" = 1 ]; then
  echo "run not finished: requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
fi
