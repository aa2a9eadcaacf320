#!/usr/bin/env bash
# A CPU stand-in for the GPU machine's python3, to rehearse gpu_checks.sh's GPU branches (the ones DRY=1
# skips: the install, the unattended sizing of the prior, the reserve rule, a follow-up call) on a machine
# without one:
#   PY=benchmarks/gpu_rehearsal_python.sh STEPS="bench train prior reproduce" PRIOR_TARGET=40 DEADLINE=330 \
#     OUT=/tmp/rehearsal bash benchmarks/gpu_checks.sh
#   PY=benchmarks/gpu_rehearsal_python.sh STEPS="prior reproduce" PRIOR_TARGET=80 DEADLINE=300 \
#     OUT=/tmp/rehearsal2 bash benchmarks/gpu_checks.sh      # the follow-up call, from the checkpoint
# It runs python3 with "cuda" replaced by "cpu", skips the install (this machine's is used), and shortens
# the long runs: the training benchmark to 6 iterations, the inversions to 2 starts and 2 epochs, the
# prior's evaluation to 2 truths x 2 starts. Scripts and the capture probe run with cuda_graphs=True
# emulated (emulated_cuda_graphs.py: the static step without the graph itself), so the probe succeeds
# and the linear cases take their --cuda-graphs path.
if [ "${1:-}" = "-m" ] && [ "${2:-}" = "pip" ]; then echo "rehearsal: install skipped"; exit 0; fi
args=(); prev=
for a in "$@"; do
  case "$prev|$a" in
    *"|cuda") a=cpu ;;
    "-c|"*) a=${a//"device='cuda'"/"device='cpu'"} ;;
    "--iterations|500") a=6 ;;
    "--window|100") a=3 ;;
    "--n-starts|100") a=2 ;;
  esac
  args+=("$a"); prev=$a
done
case " ${args[*]} " in
  *" --evaluate-only "*) args+=(--n-truths 2 --n-starts 2) ;;
  *"reproduce_paper.py"*) args+=(--epochs 2) ;;
esac
# scripts and -c code (the capture probe) with cuda_graphs=True emulated (benchmarks/emulated_cuda_graphs.py)
case "${args[0]}" in
  -c|*.py) exec python3 "$(dirname "$0")/emulated_cuda_graphs.py" "${args[@]}" ;;
esac
exec python3 "${args[@]}"
