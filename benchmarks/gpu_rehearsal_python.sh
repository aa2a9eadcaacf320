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
# prior's evaluation to 2 truths x 2 starts. CUDA graphs are not exercised (the capture probe fails here).
if [ "${1:-}" = "-m" ] && [ "${2:-}" = "pip" ]; then echo "rehearsal: install skipped"; exit 0; fi
args=(); prev=
for a in "$@"; do
  case "$prev|$a" in
    *"|cuda") a=cpu ;;
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
exec python3 "${args[@]}"
