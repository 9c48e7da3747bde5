#!/usr/bin/env bash
# One-command GPU check (issue 11), under 8 minutes on one H200 (step 3 adds about a minute with 2+ GPUs):
#   1. the tiny SD3 and Wan2.1 pipelines, 2 OP-GRPO iterations each (replay, KL, EMA) and a held-out
#      evaluation, through Snakemake with runtime.device cuda (tests/test_real_pipeline.py), plus the
#      optimizer-state placement test: catches device bugs such as the EMA left on the CPU;
#   2. the SD3.5-M-sized benchmark at the preset's settings (benchmarks/sd35_gpu.py): wall vs
#      GPU-busy time, peak memory per phase, achieved TFLOP/s and MFU, and the ratio the first
#      optimizer step sees in bf16 (issue 12: exactly 1 expected; also shown against the rollout's
#      logp_old, the batch-shape noise the update no longer sees). With more than one GPU visible
#      (M > 1) it runs on N = 1 and N = M ranks instead (--gpus 1,M, torchrun + NCCL, issue 12 item 6):
#      per rank wall, GPU-busy, host stall, collective time and peak memory; per phase aggregate
#      TFLOP/s and MFU over N x 989; speed-up and efficiency of N = M against N = 1; the paper-scale
#      iteration (48 x 24 samples) against 199 PFLOP / (N x peak), extrapolated to 32 GPUs. The work
#      is fixed at one sampling batch and one microbatch per rank at N = M, so N = 1 does M of each
#      (about 16 PFLOP counted with the first-step check at M = 8: ~1 min at 300 TFLOP/s);
#   3. with 2 or more GPUs visible: one Slurm-free OP-GRPO iteration of a tiny SD3 on 2 ranks, the
#      stages' own local ranks (benchmarks/two_ranks.py: rollout, score and policy_update through
#      the Snakefile with distributed.processes 2, NCCL), and each rank's CPU affinity and peak host
#      memory after each stage (issue 22; about a minute).
#     bash benchmarks/gpu_check.sh          # on a machine with a CUDA GPU
#     bash benchmarks/gpu_check.sh --cpu    # the same steps on the CPU (tiny benchmark): checks this script
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda
bench=()
if [[ ${1:-} == --cpu ]]; then
  device=cpu
  bench=(--tiny)
elif ! python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  echo "gpu_check: no CUDA device visible (run with --cpu to check the script on a CPU)" >&2
  exit 1
fi
start=$SECONDS
echo "== 1/3 tiny SD3 and Wan pipelines on $device through Snakemake"
OPGRPO_TEST_DEVICE=$device timeout 360 python -m pytest -q -x -p no:cacheprovider \
  tests/test_real_pipeline.py tests/test_device_placement.py
gpus=$(python -c 'import torch; print(torch.cuda.device_count())')
if [[ $device == cuda && $gpus -gt 1 ]]; then
  bench=(--gpus "1,$gpus" --rollout-batches 1 --update-microbatches 1)
fi
echo "== 2/3 SD3.5-M-sized benchmark (${bench[*]:-full size})"
timeout 360 python benchmarks/sd35_gpu.py "${bench[@]}"
if [[ $device == cpu || $gpus -ge 2 ]]; then
  echo "== 3/3 one iteration on 2 ranks without Slurm ($device): CPU affinity and peak host memory per rank"
  timeout 300 python benchmarks/two_ranks.py --device "$device"
else
  echo "== 3/3 skipped: one GPU visible (the 2-rank iteration needs 2)"
fi
echo "gpu_check: passed in $((SECONDS - start)) s"
