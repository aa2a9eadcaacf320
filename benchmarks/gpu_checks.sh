#!/usr/bin/env bash
# Everything that needs a GPU, in one call that ends by a deadline (a lent GPU machine is short of time):
#   1. install the package (C++ core built there);
#   2. bench_inversion.py on the CPU and CUDA (incl. the paper's 100 starts x 3000 iterations, eager and
#      from a CUDA graph); bench_training.py (the reference network's training, float32 and bfloat16);
#   3. in parallel: the test suite (CUDA tests included), the default prior trained on the GPU
#      (after a determinism check: two short trainings must give identical weights), and a larger
#      reproduce_paper.py run (training length sized to the time left), its linear cases;
#   4. once those have ended, the reproduction's nonlinear case (Fig. 10) alone on the CPUs, in the last
#      NL_RESERVE seconds (default 120) kept for it: the raytracer takes every core, so it must not share
#      them with the test suite's workers (docs/benchmarks/reproduction.md, "The nonlinear case on the GPU machines").
# Usage, from the repository root:
#   OUT=dir TI=path/to/channels_ti.png TM=path/to/paper_test_models DEADLINE=540 bash benchmarks/gpu_checks.sh
# RP_PRIOR=dir: step 3c and 4 invert with that saved prior (e.g. the paper-grade prior that earlier calls of
# step 3b trained, PRIOR_CKPT) instead of training one: the full-scale reproduction in one call.
# (TM: the published test models; with it the reproduction starts from the published initial latents
# and adds the published noise realization, and checks mc1-mc3 against the published files)
# STEPS (default "bench train tests prior reproduce") picks the steps; "sgan" (not in the default: it needs a
# call of its own) trains the published SGAN on the GPU (bench_prior.py --sgan-gpu-train), records its
# pattern statistics and seconds per step, and runs the SAnnn/SSbnd cases with it (reproduce_paper.py
# --sgan, the published SGAN starts when TM is given); "sampling" runs bench_sampling.py on mc2; BENCH_ARGS adds options to
# bench_inversion.py (e.g. --skip-cpu); DRY=1 runs them tiny on the CPU (to check the script itself).
set -u
OUT=${OUT:-gpu_checks_out}
TI=${TI:-}
TM=${TM:-}
DEADLINE=${DEADLINE:-540}
DRY=${DRY:-0}
STEPS=${STEPS:-bench train tests prior reproduce}
BENCH_ARGS=${BENCH_ARGS:-}
PRIOR_CKPT=${PRIOR_CKPT:-}     # a training checkpoint of an earlier call (step 3b resumes from it)
PRIOR_ITERS=${PRIOR_ITERS:-}   # step 3b's iterations (default: sized to the time left)
PRIOR_PRECISION=${PRIOR_PRECISION:-float32}   # step 3b's training arithmetic (bfloat16: autocast)
PRIOR_GRAPHS=${PRIOR_GRAPHS:-}  # "--cuda-graphs": step 3b's steps replayed from a CUDA graph (if bench_training says so)
NL_RESERVE=${NL_RESERVE:-120}  # seconds kept at the end for the nonlinear case (step 4)
# step 3b's network: the paper's reference network at its batch (the paper-grade default prior, issue 16)
PRIOR_NET=${PRIOR_NET:---channels 32 64 128 256 --hidden-size 512 --batch-size 100}
RP_PRIOR=${RP_PRIOR:-}         # a saved prior (e.g. the paper-grade one of step 3b) for step 3c instead of training one
want() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }
PY=${PY:-python3}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
T0=$(date +%s)
now() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( DEADLINE - $(now) )); }
# time left to the steps that run beside others: the nonlinear case's reserve is kept out of it
RESERVE=0; want reproduce && [ -n "$TI" ] && [ -f "$TI" ] && RESERVE=$NL_RESERVE
shared_left() { echo $(( $(left) - RESERVE )); }
log() { echo "[$(now) s] $*" | tee -a "$OUT/log.txt"; }
export PYTHONUNBUFFERED=1
DEV=cuda; [ "$DRY" = 1 ] && DEV=cpu

log "machine: $(nproc) CPUs; $(nvidia-smi -L 2>/dev/null | head -1)"
$PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  2>&1 | tee -a "$OUT/log.txt"

# 1. install (builds the C++ core with this machine's Python); fall back to a bare CMake build
if [ "$DRY" = 1 ]; then
  export PYTHONPATH=$PWD/src
elif ! timeout 180 $PY -m pip install -q --no-build-isolation --no-deps --no-index . >>"$OUT/log.txt" 2>&1; then
  log "pip install failed: CMake build into src/"
  cmake -S . -B /tmp/li_build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v $PY)" \
    -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" >>"$OUT/log.txt" 2>&1 \
    && cmake --build /tmp/li_build >>"$OUT/log.txt" 2>&1 && cp /tmp/li_build/_core*.so src/latentinv/
  export PYTHONPATH=$PWD/src
fi
$PY -c "import latentinv, latentinv.operators as o; print('latentinv', latentinv.__file__, 'raytracer', o.ShortestPathOperator.__module__)" \
  2>&1 | tee -a "$OUT/log.txt"
log "installed"

# 2. inversion benchmark, alone on the machine (timings)
if [ "$DRY" = 1 ]; then QUICK=--quick; else QUICK=; fi
want bench && timeout $(( $(left) > 200 ? 200 : $(left) )) $PY benchmarks/bench_inversion.py $QUICK $BENCH_ARGS \
  --output "$OUT/bench_inversion.json" 2>&1 | grep -v "it/s\]" | tee -a "$OUT/log.txt"
log "bench_inversion done"

# 2b. training benchmark, alone too: the reference network at batch 100, float32 and bfloat16 (loss curves
#     compared), and the ablation where the host reads the device every iteration
if want train; then
  IT=1500; WIN=150; [ "$DRY" = 1 ] && { IT=8; WIN=4; }
  timeout $(( $(left) > 150 ? 150 : $(left) )) $PY benchmarks/bench_training.py --device $DEV --iterations $IT \
    --window $WIN --output "$OUT/bench_training.json" 2>&1 | tail -5 | tee -a "$OUT/log.txt"
  log "bench_training done"
fi

# 3a. test suite (CPU and CUDA tests)
PID_TEST=; PID_PRIOR=; PID_RP=
want tests && ( if [ "$DRY" = 1 ]; then ARGS=(tests/test_prior.py -k "cuda or to_moves"); else ARGS=(-n 6); fi
  OMP_NUM_THREADS=2 timeout $(( $(shared_left) - 10 )) $PY -m pytest -q -p no:cacheprovider -rs --durations=10 \
    "${ARGS[@]}" >"$OUT/pytest.txt" 2>&1; echo "pytest exit $?" >>"$OUT/pytest.txt" ) &
want tests && PID_TEST=$!

# 3b. default prior on the GPU, the reference network (PRIOR_NET; train_default_prior.py: the paper's image, the held-out band and
#     mc1-mc3 excluded): determinism check, then a training sized to the time left
want prior && ( set -u; P=/tmp/li_prior; rm -rf $P; mkdir -p $P
  IT_PROBE=300; [ "$DRY" = 1 ] && IT_PROBE=20
  for r in a b; do
    timeout $(( $(shared_left) - 10 )) $PY scripts/train_default_prior.py --device $DEV --threads 2 --iterations $IT_PROBE $PRIOR_NET \
      --precision "$PRIOR_PRECISION" $PRIOR_GRAPHS --n-truths 2 --n-starts 4 --out $P/$r --report $P/r$r 2>&1 \
      | grep -v "it/s\]" | tail -3
  done
  if cmp -s $P/a/weights.safetensors $P/b/weights.safetensors; then echo "determinism: identical weights"
  else echo "determinism: WEIGHTS DIFFER"; fi
  MS=$($PY -c "import json; print(json.load(open('$P/ra/channels_ti_prior.json'))['train_seconds'] / $IT_PROBE * 1e3)")
  echo "probe: $MS ms per training iteration"
  N=$($PY -c "
budget = ($(shared_left) - 90) * 0.6   # shares the GPU with 3c: keep a margin
for n in (60000, 50000, 40000, 30000, 20000, 15000, 10000, 5000):
    if n * $MS / 1e3 <= budget: print(n); break
else: print(0)")
  EVAL=; [ "$DRY" = 1 ] && { N=40; EVAL="--n-truths 2 --n-starts 2"; }
  N=${PRIOR_ITERS:-$N}    # a resumed training needs the same target in every call
  echo "training $N iterations"
  if [ "$N" -gt 0 ]; then
    # resumable: the checkpoint comes back under $OUT; carried to the next call as PRIOR_CKPT (e.g. the
    # returned folder copied into the working tree), that call carries on where this one stopped
    if [ -n "$PRIOR_CKPT" ] && [ -d "$PRIOR_CKPT" ]; then cp -r "$PRIOR_CKPT" "$OUT/prior_ckpt"; fi
    timeout $(( $(shared_left) - 10 )) $PY scripts/train_default_prior.py --device $DEV --threads 2 --iterations $N $EVAL $PRIOR_NET \
      --checkpoint "$OUT/prior_ckpt" --checkpoint-every 2000 --precision "$PRIOR_PRECISION" $PRIOR_GRAPHS \
      --weights-dtype mixed \
      --out $P/channels_ti_prior --report $P/docs 2>&1 | grep -v "it/s\]" | tail -12
    tar -C $P -cf "$OUT/prior.tar" channels_ti_prior docs ra/channels_ti_prior.json
  fi ) >"$OUT/prior.txt" 2>&1 &
want prior && PID_PRIOR=$!

# 3c. the paper's experiment, larger than a CPU allows (needs the training image)
if want reproduce && [ -n "$TI" ] && [ -f "$TI" ]; then
  ( if [ -n "$RP_PRIOR" ]; then MS=0; else MS=$($PY - <<EOF
import time, numpy as np
from latentinv import VAEPrior
X = (np.random.default_rng(0).random((300, 129, 65)) > 0.7).astype(np.float32)
kw = dict(channels=(32, 64, 128, 256), hidden_size=512, batch_size=100, device="$DEV", random_state=0, verbose=0)
VAEPrior(n_iterations=5, **kw).fit(X)
n = 10 if "$DRY" == "1" else 100
t = time.perf_counter(); VAEPrior(n_iterations=n, **kw).fit(X)
print((time.perf_counter() - t) / n * 1e3)
EOF
); fi
    echo "probe: $MS ms per training iteration (reference network, batch 100)"
    N=$($PY -c "
budget = ($(shared_left) - 200) * 0.6   # keep ~3 min for the linear inversions (step 4 has its own time)
for n in (100000, 80000, 60000, 50000, 40000, 30000, 20000, 15000, 10000, 5000, 3000):
    if n * $MS / 1e3 <= budget: print(n); break
else: print(1000)")
    STARTS=100; NLS=1; EXTRA=   # one start per truth in the nonlinear case, as the paper's Fig. 10
    [ -n "$TM" ] && [ -f "$TM/zinitVAE500.npy" ] && EXTRA="--test-models $TM --published-starts --published-noise"
    [ "$DRY" = 1 ] && { N=20; STARTS=2; NLS=1; EXTRA="$EXTRA --epochs 2 --epochs-nonlinear 1"; }
    # the linear cases replayed from CUDA graphs if a small capture works here (else eager, and said so)
    GRAPHS=
    if [ "$DRY" != 1 ] && $PY -c "import sys; sys.path.insert(0, 'tests/golden'); import cases
cases._invert(cases._straight(), batch_size=9, device='cuda', cuda_graphs=True)"; then
      GRAPHS=--cuda-graphs; echo "CUDA graph probe: captured"
    else echo "CUDA graph probe failed or skipped (DRY): the linear cases run eagerly"; fi
    PRIOR_ARG=; [ -n "$RP_PRIOR" ] && { PRIOR_ARG="--prior $RP_PRIOR"; N=0; }
    echo "reproduce_paper: $N training iterations ${PRIOR_ARG}, $STARTS starts $GRAPHS"
    timeout $(( $(shared_left) - 8 )) $PY benchmarks/reproduce_paper.py --ti "$TI" --device $DEV $PRIOR_ARG \
      --iterations $(( N > 0 ? N : 1 )) \
      --n-starts $STARTS --no-nonlinear $GRAPHS $EXTRA --out /tmp/li_rp 2>&1 \
      | stdbuf -oL tr '\r' '\n' | awk '!/(it\/s|s\/it)\]/ || ++n % 25 == 0 { print; fflush() }'   # 1 progress line in 25
    echo "reproduce exit ${PIPESTATUS[0]}"
    (cd /tmp/li_rp && tar -cf "$OUT/reproduce.tar" --exclude=prior .) ) >"$OUT/reproduce.txt" 2>&1 &
  PID_RP=$!
elif want reproduce; then
  log "no training image (TI): reproduce_paper skipped"
fi

# 4. (opt-in) the published SGAN trained on the GPU, then the paper's SGAN cases with it
if want sgan && [ -n "$TI" ] && [ -f "$TI" ]; then
  ( IT=; [ "$DRY" = 1 ] && IT="--pattern-iterations 2 --pattern-samples 4"
    timeout $(( $(left) - 120 )) $PY benchmarks/bench_prior.py --no-vae --sgan --patterns --sgan-gpu-train $IT \
      --ti "$TI" --save-sgan /tmp/li_sgan --output "$OUT/bench_prior_sgan.json" 2>&1 | grep -v "it/s\]" | tail -30
    SG=; [ -n "$TM" ] && [ -f "$TM/zinitSGAN500.npy" ] && SG="--test-models $TM --published-starts"
    N=100; [ "$DRY" = 1 ] && { N=2; SG="$SG --epochs 2 --iterations 5"; }
    [ -d /tmp/li_sgan ] && timeout $(( $(left) - 8 )) $PY benchmarks/reproduce_paper.py --ti "$TI" --device $DEV \
      --sgan /tmp/li_sgan --cases SAnnn,SSbnd --no-nonlinear --n-starts $N $SG --out /tmp/li_rp_sgan 2>&1 | tail -40
    (cd /tmp && tar -cf "$OUT/sgan.tar" li_sgan li_rp_sgan 2>/dev/null) ) >"$OUT/sgan.txt" 2>&1
  log "sgan: $(tail -3 "$OUT/sgan.txt" | tr '\n' ' ')"
fi

# 5. (opt-in) the sampler's benchmark on mc2 (TM needed)
if want sampling && [ -n "$TM" ]; then
  # the settings that meet the R-hat target on the CPU with the default prior (docs/benchmarks/sampling.md)
  timeout $(( $(left) - 8 )) $PY benchmarks/bench_sampling.py --test-models "$TM" --out "$OUT/sampling" \
    --method hmc --n-leapfrog 5 --chains 8 --burnin 300 --samples 598 >"$OUT/sampling.txt" 2>&1
  log "sampling: $(tail -3 "$OUT/sampling.txt" | tr '\n' ' ')"
fi

[ -n "$PID_TEST" ] && { wait $PID_TEST; log "tests: $(tail -2 "$OUT/pytest.txt" | tr '\n' ' ')"; }
[ -n "$PID_PRIOR" ] && { wait $PID_PRIOR; log "prior: $(grep -E 'determinism|probe|training|heldout_reconstruction|accepted' "$OUT/prior.txt" | tr '\n' ' ')"; }
[ -n "$PID_RP" ] && { wait $PID_RP; log "reproduce: $(tail -3 "$OUT/reproduce.txt" | tr '\n' ' ')"; }

# 4. the nonlinear case (Fig. 10: VSbrd through the shortest-path raytracer, one start per truth, without
#    and with noise), alone on the CPUs now, with the prior that step 3c trained; its progress lines
#    carry the rate (tqdm), and the CPUs it had and the load are logged first
NL_PRIOR=${RP_PRIOR:-/tmp/li_rp/prior}
if [ -n "$PID_RP" ] && [ -d "$NL_PRIOR" ]; then
  ( $PY -c "
import os; from latentinv._cpus import available_cpus, cgroup_cpu_quota
print('cpus: os.cpu_count', os.cpu_count(), 'affinity', len(os.sched_getaffinity(0)), 'cgroup quota',
      cgroup_cpu_quota(), '-> raytracer threads', available_cpus(), '; load average', os.getloadavg())"
    EXTRA=; [ -n "$TM" ] && [ -f "$TM/zinitVAE500.npy" ] && EXTRA="--test-models $TM --published-starts --published-noise"
    [ "$DRY" = 1 ] && EXTRA="$EXTRA --epochs-nonlinear 1"
    timeout $(( $(left) - 5 )) $PY benchmarks/reproduce_paper.py --ti "$TI" --device $DEV --prior "$NL_PRIOR" \
      --cases "" --nonlinear-starts 1 $EXTRA --out /tmp/li_rp_nl 2>&1 \
      | stdbuf -oL tr '\r' '\n' | awk '!/(it\/s|s\/it)\]/ || ++n % 25 == 0 { print; fflush() }'
    echo "nonlinear exit ${PIPESTATUS[0]}"
    (cd /tmp/li_rp_nl && tar -cf "$OUT/reproduce_nonlinear.tar" --exclude=prior .) ) >"$OUT/nonlinear.txt" 2>&1
  log "nonlinear: $(grep -E 'cpus:|best data RMSE|exit' "$OUT/nonlinear.txt" | tr '\n' ' ')"
fi
log "end"
