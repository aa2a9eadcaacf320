#!/usr/bin/env bash
# Everything issue 16 measures on a GPU, in one call of a lent machine that ends by DEADLINE seconds.
#
# Budget (the device tool's limits): 15 minutes of device time per task, the machine's start included,
# and 10 minutes per call. So: one call (`run` with timeout_s=600, DEADLINE=540: the issue's 9 minutes);
# if the prior's training stopped short of the paper's 1e5 iterations, a follow-up call on the machine while
# it is still warm (it stays 30 s after a call, its disk with it) with STEPS="prior reproduce": the training
# resumes from its checkpoint on that disk. docs/benchmarks/gpu.md has the calls, word for word.
#
# Steps (STEPS, default "bench train tests prior reproduce nonlinear"), in three phases:
#   1. the GPU alone (its timings):
#      bench      bench_inversion.py's CUDA rows: the paper's experiment (100 starts x 3000 iterations) eager
#                 (the ablation), from a CUDA graph in float32 and bfloat16 (BENCH_ARGS, default
#                 "--skip-cpu --skip-nonlinear"); with --compile in BENCH_ARGS, compile_check.py first and
#                 torch.compile's rows after
#      train      bench_training.py: the reference network's training at batch 100, float32 and bfloat16,
#                 eager and from a CUDA graph, and the ablation that reads the device every iteration
#   2. side by side:
#      tests      the test suite, CUDA tests included (pytest -n 6)
#      prior      the paper-grade default prior: the reference network on the bundled training image
#                 (mc1-mc3 and the held-out band excluded), in the arithmetic that benchmarks/gpu_plan.py
#                 picks from `train`'s record (the fastest that keeps the loss curve), as many of the paper's
#                 1e5 iterations as fit before the reproduction's reserve (RP_RESERVE), or all of them if they
#                 fit only with it (the prior is what ships; the reproduction can follow in another call);
#                 checkpointed on the machine's disk (PRIOR_CKPT); a training its timeout stops is saved from
#                 its last checkpoint; stored "mixed", the encoder's largest tensors int8 if needed to stay
#                 under 10 MB; its record (held-out RMSE, VSbrd
#                 acceptance) made beside the reproduction
#      nonlinear  once the tests have ended: the nonlinear case (Fig. 10, VSbrd through the shortest-path
#                 raytracer, one start per truth, without and with noise) on the CPUs but two, with the
#                 shipped prior: the check of the diagnosis of issue 16 item 4 (the CPUs, the load, the rate)
#   3. reproduce  Tables 3-4's linear cases, 100 starts, from CUDA graphs (after a capture probe) with the
#                 prior just trained (RP_PRIOR: another saved prior; without one, the shipped prior, said so)
#
# What comes back: the device tool returns at most 8 files from $OUT (16 MiB each, 64 MiB together), so $OUT
# holds exactly these: log.txt (the steps' summaries), tests.txt, prior.txt, reproduce.txt, nonlinear.txt
# (live logs), results.tar (each step's records, rebuilt as each step ends), prior.tgz (the trained prior
# and its record) and, with the sgan step, sgan.tgz.part-00, -01 (the trained SGAN, 16.5 MiB of float32 weights,
# in parts; a call with both the prior and sgan steps would return 9 files: run them in separate calls).
# The checkpoint never goes to $OUT: over 16 MiB, and $OUT is emptied before each call.
#
# Usage, from the repository root:
#   OUT=dir DEADLINE=540 bash benchmarks/gpu_checks.sh
# TM: the published test models (default .gpu_data/paper_test_models, carried to the machine, else
#   ../shared/data/paper_test_models): the reproduction then starts from the published initial latents, adds
#   the published noise and checks mc1-mc3 against the published files. TI: the training image of the
#   reproduction (default: the bundled one).
# PRIOR_PRECISION, PRIOR_GRAPHS ("--cuda-graphs" or empty): force the prior's arithmetic (else an earlier
#   call's choice on this machine, which its checkpoint needs, else gpu_plan.py's); PRIOR_ITERS: train to this
#   total instead of sizing it; PRIOR_TARGET (100000): the schedule's total.
# CPU_FIRST=1: phase 2's CPU steps (tests, nonlinear) start first, on all CPUs but the first two, and phase 1 runs
#   beside them pinned to those two (a follow-up call with no prior to train); TEST_ARGS: the tests step's pytest
#   arguments (default "-n 6 --continue-on-collection-errors"); BENCH_CAP: bench_inversion's timeout (150 s);
#   COMPILE_CHECK=0: no compile_check.py before torch.compile's rows (each row still says how far its answer is
#   from the eager row's).
# The variables are checked first, before the install and every step (exit 2 naming the variable): STEPS' words,
#   the whole numbers, the 0/1 switches, TM, and with the sgan step SGAN_CASES, SGAN_DIR, FASTEST=1 (it needs this
#   call's bench step with --layouts or --sgan-rates) and SGAN_ARITH (reproduce_paper.py's own parser, once Python
#   is installed).
# DRY=1 runs every step tiny on the CPU (to check the script itself). Opt-in steps: "sgan" (trains the published
#   SGAN on the GPU within the time left but SGAN_RESERVE (170 s), in parts on the checkpoint SGAN_CKPT on this
#   machine's disk (a later call on the still warm machine carries it on), runs SAnnn/SSbnd with it and brings it
#   back in parts, sgan.tgz.part-NN; SGAN_DIR: a saved SGAN carried to the machine instead, not trained, its
#   cases only; SGAN_STARTS: their starts, 100; SGAN_CASES: the cases of that run, "SAnnn,SSbnd" or "all" (every
#   case of Tables 3-4 in one run, the noisy VSbrd with it); FASTEST=1: in the arithmetic the bench step found
#   fastest, benchmarks/gpu_plan.py tables; SGAN_ARITH: those reproduce_paper.py options given instead),
#   "sampling" (bench_sampling.py on mc2).
set -u
OUT=${OUT:-gpu_checks_out}
DEADLINE=${DEADLINE:-540}
DRY=${DRY:-0}
STEPS=${STEPS:-bench train tests prior reproduce nonlinear}
if [ "${DRY:-0}" = 1 ]; then BENCH_ARGS=${BENCH_ARGS---skip-nonlinear --skip-ablations}
else BENCH_ARGS=${BENCH_ARGS---skip-cpu --skip-nonlinear}; fi
TI=${TI:-bundled}
TM=${TM:-}
if [ -z "$TM" ]; then
  for d in .gpu_data/paper_test_models ../shared/data/paper_test_models; do [ -d "$d" ] && { TM=$d; break; }; done
fi
MV=; [ -n "$TM" ] && [ -f "$TM/mv1.npy" ] && MV="--mv published"     # the paper's own mv1-mv3 where carried
PRIOR_CKPT=${PRIOR_CKPT:-/tmp/li_prior_ckpt}   # the training's checkpoint, on this machine's disk
SGAN_CKPT=${SGAN_CKPT:-/tmp/li_sgan_ckpt}      # the SGAN's (a warm machine's next call carries it on)
PRIOR_PLAN=/tmp/li_prior_plan                  # "PRECISION GRAPHS MS_PER_ITERATION" of that training (its
                                               # fingerprint needs the first two; the rate sizes a follow-up)
PRIOR_ITERS=${PRIOR_ITERS:-}
PRIOR_TARGET=${PRIOR_TARGET:-100000}
PRIOR_DIR=/tmp/li_prior                        # the trained prior and its record
# the prior's network: the paper's reference network at its batch
PRIOR_NET=${PRIOR_NET:---channels 32 64 128 256 --hidden-size 512 --batch-size 100}
RP_PRIOR=${RP_PRIOR:-}
RP_RESERVE=${RP_RESERVE:-150}                  # seconds kept after the prior for the reproduction (target: 120)
PY=${PY:-python3}
want() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }

# The variables, checked before anything runs (an unknown step was skipped without a word and the call exited
# 0; a misspelt SGAN case, a missing SGAN_DIR or FASTEST=1 without the bench's rows met the sgan step only after
# the bench, on the GPU's time): a usage error naming the variable, exit 2
usage() { echo "gpu_checks.sh: $*" >&2; exit 2; }
ALL_STEPS="bench train tests prior reproduce nonlinear sgan sampling none"
for s in $STEPS; do
  case " $ALL_STEPS " in *" $s "*) ;; *) usage "STEPS: unknown step '$s'; expected words among: $ALL_STEPS" ;; esac
done
[ -n "${STEPS// /}" ] || usage "STEPS: empty; expected words among: $ALL_STEPS"
for v in DEADLINE BENCH_CAP RP_RESERVE SGAN_RESERVE SGAN_STARTS PRIOR_ITERS PRIOR_TARGET; do
  val=${!v:-}
  [ -z "$val" ] || [[ "$val" =~ ^[0-9]+$ ]] || usage "$v: expected a whole number, got '$val'"
done
[ "$DEADLINE" -ge 1 ] || usage "DEADLINE: expected at least 1 second, got $DEADLINE"
[ -z "${SGAN_STARTS:-}" ] || [ "$SGAN_STARTS" -ge 1 ] || usage "SGAN_STARTS: expected at least 1, got $SGAN_STARTS"
for v in DRY CPU_FIRST FASTEST COMPILE_CHECK; do
  val=${!v:-}
  [ -z "$val" ] || [ "$val" = 0 ] || [ "$val" = 1 ] || usage "$v: expected 0 or 1, got '$val'"
done
[ -z "$TM" ] || [ -d "$TM" ] || usage "TM: no folder '$TM' (the published test models)"
if want sgan; then
  PAPER_CASES="VSnnn VSbnn VSbod VSbrd SAnnn SSbnd"
  if [ "${SGAN_CASES:-SAnnn,SSbnd}" != all ]; then
    CS=${SGAN_CASES:-SAnnn,SSbnd}
    for c in ${CS//,/ }; do
      case " $PAPER_CASES " in *" $c "*) ;;
        *) usage "SGAN_CASES: unknown case '$c'; expected 'all' or a comma-separated list of: $PAPER_CASES" ;; esac
    done
  fi
  if [ -n "${SGAN_DIR:-}" ] && [ ! -f "$SGAN_DIR/config.json" ]; then
    usage "SGAN_DIR: '$SGAN_DIR' is not a saved SGAN (no $SGAN_DIR/config.json; carry it with carry=[\".gpu_data\"])"
  fi
  if [ "${FASTEST:-0}" = 1 ] && [ -z "${SGAN_ARITH:-}" ]; then
    want bench || usage "FASTEST=1: the arithmetic comes from this call's bench step, which STEPS='$STEPS' leaves" \
      "out (the results folder is emptied at each call's start): add bench, or give SGAN_ARITH"
    case " $BENCH_ARGS " in *" --layouts"*|*" --sgan-rates "*) ;;
      *) usage "FASTEST=1: BENCH_ARGS='$BENCH_ARGS' has neither --layouts nor --sgan-rates, the rows it reads" ;; esac
  fi
fi
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
RESULTS=/tmp/li_results; rm -rf "$RESULTS"; mkdir -p "$RESULTS"
T0=$(date +%s)
now() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( DEADLINE - $(now) )); }
cap() { local l; l=$(left); echo $(( l < $1 ? (l > 1 ? l : 1) : $1 )); }   # a step's timeout: at most $1 s
upto() { local t; t=$(( $(left) - $1 )); echo $(( t > ${2:-1} ? t : ${2:-1} )); }  # until $1 s before the end, >= $2
log() { echo "[$(now) s] $*" | tee -a "$OUT/log.txt"; }
# results.tar rebuilt from $RESULTS (each step's records) when a step ends; renamed into place whole
LOCK=flock; command -v flock >/dev/null || LOCK=true        # util-linux; without it, no lock
TASKSET=taskset; command -v taskset >/dev/null || TASKSET=  # likewise
pack() { ( $LOCK 9; tar -C "$RESULTS" -cf "$OUT/results.tar.part" . && mv "$OUT/results.tar.part" "$OUT/results.tar"
         ) 9>/tmp/li_results.lock; }
export PYTHONUNBUFFERED=1
DEV=cuda; [ "$DRY" = 1 ] && DEV=cpu

if want prior && want sgan; then      # 9 files: the device tool returns 8, so a part of one would be lost
  echo "gpu_checks.sh: the prior and sgan steps return 9 files together (at most 8 come back): run them in separate calls" >&2
  exit 2
fi
log "machine: $(nproc) CPUs; $(nvidia-smi -L 2>/dev/null | head -1); steps: $STEPS; deadline $DEADLINE s"
$PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  2>&1 | tee -a "$OUT/log.txt"

# install (builds the C++ core with this machine's Python; a warm machine that installed these sources skips it)
if [ "$DRY" = 1 ]; then      # this checkout, as installed here (an editable install), else its sources
  $PY -c "import latentinv, sys; sys.exit(not latentinv.__file__.startswith('$PWD/'))" 2>/dev/null || export PYTHONPATH=$PWD/src
  # an editable install of another checkout wins over PYTHONPATH (its import hook comes first): say so and stop,
  # rather than check that other tree's code
  if ! $PY -c "import latentinv, sys; sys.exit(not latentinv.__file__.startswith('$PWD/'))" 2>/dev/null; then
    echo "gpu_checks.sh: DRY=1 would check $($PY -c 'import latentinv; print(latentinv.__file__)' 2>&1 | tail -1)," \
         "not this checkout's $PWD/src (an editable install of another checkout comes before PYTHONPATH): install" \
         "this checkout (pip install -e .) or run the DRY check from the installed one" >&2
    exit 2
  fi
else
  KEY=$(find src cpp CMakeLists.txt pyproject.toml -type f -not -path '*/__pycache__/*' | sort | xargs md5sum | md5sum)
  if [ "$(cat /tmp/li_installed 2>/dev/null)" = "$KEY" ]; then log "installed already (a warm machine)"
  elif timeout $(cap 240) $PY -m pip install -q --no-build-isolation --no-deps --no-index . >>"$OUT/log.txt" 2>&1; then
    echo "$KEY" >/tmp/li_installed
  else
    log "pip install failed: CMake build into src/"
    cmake -S . -B /tmp/li_build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v $PY)" \
      -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" >>"$OUT/log.txt" 2>&1 \
      && cmake --build /tmp/li_build >>"$OUT/log.txt" 2>&1 && cp /tmp/li_build/_core*.so src/latentinv/
    export PYTHONPATH=$PWD/src
  fi
fi
$PY -c "import latentinv; print('latentinv', latentinv.__file__, 'compiled core', latentinv.HAS_CORE)" 2>&1 | tee -a "$OUT/log.txt"
log "installed; TM=${TM:-none}"
if want sgan && [ -n "${SGAN_ARITH:-}" ]; then     # reproduce_paper.py's own parser, before any step
  # shellcheck disable=SC2086
  $PY - $SGAN_ARITH <<'PYEOF' 2>&1 | tail -1 | sed 's/^/gpu_checks.sh: SGAN_ARITH: /' >&2
import sys
sys.path.insert(0, "benchmarks")
import reproduce_paper
reproduce_paper.parse_args(["--cases", "SAnnn", "--device", "cpu", "--no-nonlinear"] + sys.argv[1:])
PYEOF
  [ "${PIPESTATUS[0]}" = 0 ] || { log "SGAN_ARITH='$SGAN_ARITH': not reproduce_paper.py options (above)"; exit 2; }
fi

# 1. the GPU alone: the inversion benchmark, then the training benchmark (CPU_FIRST=1: beside phase 2, pinned
#    to the first two CPUs, which phase 2 leaves free)
PIN=; [ "${CPU_FIRST:-0}" = 1 ] && [ -n "$TASKSET" ] && PIN="$TASKSET -c 0,1"
phase1() {
if want bench; then
  QUICK=; [ "$DRY" = 1 ] && QUICK=--quick
  mkdir -p "$RESULTS/bench"
  case "${COMPILE_CHECK:-1} $BENCH_ARGS " in "1 "*" --compile "*)      # does torch.compile keep the step's answers here? (a small case)
    timeout $(cap 120) $PIN $PY benchmarks/compile_check.py --device $DEV 2>&1 | grep '^{' \
      | tee "$RESULTS/bench/compile_check.txt" | tee -a "$OUT/log.txt"; pack ;;
  esac
  timeout $(cap ${BENCH_CAP:-150}) $PIN $PY benchmarks/bench_inversion.py $QUICK $BENCH_ARGS --output "$RESULTS/bench/bench_inversion.json" \
    2>&1 | grep -v "it/s\]" | tee "$RESULTS/bench/bench_inversion.txt" | grep -E "paper experiment|reference loop|FAILED" \
    | tee -a "$OUT/log.txt"
  pack; log "bench_inversion done"
fi
if want train; then
  IT=500; WIN=100; [ "$DRY" = 1 ] && { IT=8; WIN=4; }
  mkdir -p "$RESULTS/train"
  timeout $(cap 120) $PIN $PY benchmarks/bench_training.py --device $DEV --iterations $IT --window $WIN \
    --output "$RESULTS/train/bench_training.json" 2>&1 | tail -7 | tee -a "$OUT/log.txt"
  pack; log "bench_training done"
fi
}
[ "${CPU_FIRST:-0}" = 1 ] || phase1

# 2a. the test suite (CPU and CUDA tests)
PID_TEST=; PID_PRIOR=; PID_NL=
if want tests; then
  ( if [ "$DRY" = 1 ]; then ARGS=(tests/test_prior.py tests/test_gpu_plan.py -k "cuda or to_moves or plan"); else ARGS=(${TEST_ARGS:--n 6 --continue-on-collection-errors}); fi   # a module missing there costs its tests, not the run
    CPUS=$($PY -c "import os; c = sorted(os.sched_getaffinity(0)); print(','.join(map(str, c[2:] if len(c) > 3 else c)))")
    [ "${CPU_FIRST:-0}" = 1 ] && [ -n "$TASKSET" ] || CPUS=
    OMP_NUM_THREADS=2 timeout $(cap 600) ${CPUS:+$TASKSET -c $CPUS} $PY -m pytest -q -p no:cacheprovider -rs --durations=10 "${ARGS[@]}" 2>&1
    echo "pytest exit $?" ) >"$OUT/tests.txt" 2>&1 &
  PID_TEST=$!
fi

# 2b. the paper-grade prior
tar_prior() { [ -f $PRIOR_DIR/channels_ti_prior/config.json ] && tar -C $PRIOR_DIR -czf "$OUT/prior.tgz.part" \
                channels_ti_prior docs && mv "$OUT/prior.tgz.part" "$OUT/prior.tgz"; }
if want prior; then
  ( set -u
    # its arithmetic: forced, or that of the checkpoint an earlier call left on this machine, or gpu_plan's choice
    read -r PLAN_PRECISION PLAN_GRAPHS PLAN_MS < <(cat "$PRIOR_PLAN" 2>/dev/null || true)
    DONE=$(sed 's/^step-0*//' "$PRIOR_CKPT/LATEST" 2>/dev/null); DONE=${DONE:-0}
    MS=
    if [ "$DONE" -gt 0 ] && [ -n "${PLAN_PRECISION:-}" ]; then
      PRIOR_PRECISION=${PRIOR_PRECISION:-$PLAN_PRECISION}; PRIOR_GRAPHS=${PRIOR_GRAPHS-$PLAN_GRAPHS}; MS=$PLAN_MS
      echo "the checkpoint's training: $PLAN_PRECISION $PLAN_GRAPHS at $PLAN_MS ms per iteration"
    elif [ -f "$RESULTS/train/bench_training.json" ]; then
      read -r P G MS < <($PY benchmarks/gpu_plan.py training "$RESULTS/train/bench_training.json")
      echo "gpu_plan: $P $G at $MS ms per iteration"
      PRIOR_PRECISION=${PRIOR_PRECISION:-$P}; PRIOR_GRAPHS=${PRIOR_GRAPHS-$G}
    fi
    PRIOR_PRECISION=${PRIOR_PRECISION:-float32}; PRIOR_GRAPHS=${PRIOR_GRAPHS:--}
    [ "$DRY" = 1 ] && PRIOR_GRAPHS=-        # CUDA graphs need CUDA
    GRAPHS_ARG=; [ "$PRIOR_GRAPHS" = "--cuda-graphs" ] && GRAPHS_ARG=--cuda-graphs
    # the training's seconds: up to the deadline, less the training's start and save (about 60 s) and a
    # margin, at the rate of bench_training (capture and warm-up included); less the reproduction's reserve
    # too, unless the whole schedule fits without it: the prior is what the package ships, the reproduction
    # can follow in another call with it
    RESERVE=0; want reproduce && RESERVE=$RP_RESERVE
    SECONDS_FOR=$(( $(left) - 70 ))
    if [ -n "$PRIOR_ITERS" ]; then N=$PRIOR_ITERS
    elif [ "$DRY" = 1 ]; then N=$(( DONE + 40 ))
    else
      [ -n "$MS" ] || { MS=10; echo "no rate measured: 10 ms per iteration assumed"; }
      plan() { $PY benchmarks/gpu_plan.py iterations --ms "$MS" --seconds "$1" --done "$DONE" --target "$PRIOR_TARGET"; }
      N=$(plan "$SECONDS_FOR")
      if [ "$N" = "$PRIOR_TARGET" ] && [ "$RESERVE" -gt 0 ] && [ "$(plan $(( SECONDS_FOR - RESERVE )))" != "$PRIOR_TARGET" ]; then
        echo "the whole schedule fits only with the reproduction's reserve: the reproduction gets what is left"
        RESERVE=0
      else
        SECONDS_FOR=$(( SECONDS_FOR - RESERVE )); N=$(plan "$SECONDS_FOR")
      fi
    fi
    if [ "$N" -le "$DONE" ]; then      # the target reached, or too little time for more: nothing to train
      [ "$DONE" -gt 0 ] || { echo "prior: no time to train (${SECONDS_FOR} s); no prior"; exit 0; }
      echo "prior: the checkpoint's $DONE iterations are all this call trains (target $PRIOR_TARGET," \
        "$SECONDS_FOR s): the prior is saved from it"
      N=$DONE
    else
      echo "prior: $PRIOR_PRECISION ${GRAPHS_ARG:-eager}; checkpoint at $DONE iterations; training to $N ($SECONDS_FOR s for it)"
    fi
    echo "$PRIOR_PRECISION $PRIOR_GRAPHS ${MS:-10}" >"$PRIOR_PLAN"
    EVAL=; [ "$DRY" = 1 ] && EVAL="--n-truths 2 --n-starts 2"
    THREADS=$(( $(nproc) >= 16 ? 8 : 2 ))      # torch's CPU threads: the mixed save's probes run on the CPU
    train() {
      timeout "$1" $PY scripts/train_default_prior.py --device $DEV --threads $THREADS --iterations "$2" $PRIOR_NET \
        --precision "$PRIOR_PRECISION" $GRAPHS_ARG --checkpoint "$PRIOR_CKPT" --checkpoint-every 5000 \
        --weights-dtype mixed --max-bytes 10000000 --no-history-in-prior --no-evaluate --out $PRIOR_DIR/channels_ti_prior --report $PRIOR_DIR/docs 2>&1 \
        | grep -v "it/s\]" | tail -8
      return "${PIPESTATUS[0]}"
    }
    T_TRAIN=$(date +%s)
    train $(upto $(( RESERVE + 25 )) 30) "$N"; RC=$?   # 25 s kept for a rescue
    REACHED=$(sed 's/^step-0*//' "$PRIOR_CKPT/LATEST" 2>/dev/null); REACHED=${REACHED:-0}
    if [ "$RC" != 0 ] && [ "$REACHED" -gt 0 ]; then      # stopped by its timeout: the prior of the last checkpoint
      echo "training stopped (exit $RC) at $REACHED iterations: saving the prior of that checkpoint"
      train 50 "$REACHED"; RC=$?
    fi
    # the rate of this call's training (start and save included) sizes a follow-up call's
    [ "$REACHED" -gt "$DONE" ] && echo "$PRIOR_PRECISION $PRIOR_GRAPHS $(awk "BEGIN { print ($(date +%s) - $T_TRAIN) * 1000 / ($REACHED - $DONE) }")" >"$PRIOR_PLAN"
    echo "training exit $RC: $REACHED iterations in all, $(( $(date +%s) - T_TRAIN )) s in this call;" \
      "the prior's files: $(du -cb $PRIOR_DIR/channels_ti_prior/* 2>/dev/null | tail -1 | cut -f1) bytes (at most 1e7)"
    [ -f $PRIOR_DIR/channels_ti_prior/config.json ] || { echo "no prior saved"; exit 1; }
    tar_prior
    # the record (held-out RMSE, VSbrd acceptance and pattern statistics on held-out crops) beside the reproduction
    timeout $(upto 8 10) $PY scripts/train_default_prior.py --device $DEV \
      --threads $THREADS --evaluate-only $EVAL --out $PRIOR_DIR/channels_ti_prior --report $PRIOR_DIR/docs 2>&1 \
      | grep -E "^ *\"(heldout|train_seconds|sample_channel)|VSbrd mean|Error" | head -12
    echo "evaluation exit ${PIPESTATUS[0]}"
    tar_prior ) >"$OUT/prior.txt" 2>&1 &
  PID_PRIOR=$!
fi

# 2c. the nonlinear case once the tests have ended (they take every core), on the CPUs but two (the GPU's
#     drivers keep those), with the shipped prior (or RP_PRIOR): its CPUs, quota, load and rate are logged
if want nonlinear; then
  ( [ -n "$PID_TEST" ] && while kill -0 "$PID_TEST" 2>/dev/null; do sleep 2; done
    KEEP='c[:-2]'; [ "${CPU_FIRST:-0}" = 1 ] && KEEP='c[2:]'
    CPUS=$($PY -c "import os; c = sorted(os.sched_getaffinity(0)); print(','.join(map(str, $KEEP if len(c) > 3 else c)))")
    NL_PRIOR=${RP_PRIOR:-src/latentinv/data/channels_ti_prior}
    echo "[$(now) s] nonlinear case with $NL_PRIOR on CPUs $CPUS"
    [ -n "$TASKSET" ] || echo "no taskset: the nonlinear case shares every CPU"
    ${TASKSET:+$TASKSET -c $CPUS} $PY -c "
import os; from latentinv._cpus import available_cpus, cgroup_cpu_quota
print('cpus: os.cpu_count', os.cpu_count(), 'affinity', len(os.sched_getaffinity(0)), 'cgroup quota',
      cgroup_cpu_quota(), '-> raytracer threads', available_cpus(), '; load average', os.getloadavg())"
    EXTRA=; [ -n "$TM" ] && [ -f "$TM/zinitVAE500.npy" ] && EXTRA="--test-models $TM --published-starts --published-noise $MV"
    [ "$DRY" = 1 ] && EXTRA="$EXTRA --epochs-nonlinear 1"
    mkdir -p "$RESULTS/nonlinear"
    timeout $(upto 5) ${TASKSET:+$TASKSET -c $CPUS} $PY benchmarks/reproduce_paper.py --ti "$TI" \
      --device $DEV --prior "$NL_PRIOR" --cases "" --nonlinear-starts 1 $EXTRA --out "$RESULTS/nonlinear" 2>&1 \
      | stdbuf -oL tr '\r' '\n' | awk '!/(it\/s|s\/it)\]/ || ++n % 25 == 0 { print; fflush() }'
    echo "nonlinear exit ${PIPESTATUS[0]}"
    rm -rf "$RESULTS/nonlinear/prior"; pack ) >"$OUT/nonlinear.txt" 2>&1 &
  PID_NL=$!
fi

[ "${CPU_FIRST:-0}" = 1 ] && phase1

# 3. Tables 3-4 with the prior just trained, once it is saved (its record is made meanwhile)
if want reproduce; then
  if [ -n "$PID_PRIOR" ]; then   # the prior's step has saved the prior when its evaluation starts
    while kill -0 "$PID_PRIOR" 2>/dev/null && ! grep -q "training exit" "$OUT/prior.txt"; do sleep 2; done
  fi
  PRIOR=${RP_PRIOR:-}
  if [ -z "$PRIOR" ] && [ -f $PRIOR_DIR/channels_ti_prior/config.json ]; then PRIOR=$PRIOR_DIR/channels_ti_prior; fi
  ( if [ -z "$PRIOR" ]; then PRIOR=src/latentinv/data/channels_ti_prior
      echo "NO TRAINED PRIOR: the shipped one (the reduced network, not the paper's) is used"; fi
    STARTS=100; EXTRA=
    [ -n "$TM" ] && [ -f "$TM/zinitVAE500.npy" ] && EXTRA="--test-models $TM --published-starts --published-noise $MV"
    [ "$DRY" = 1 ] && { STARTS=2; EXTRA="$EXTRA --epochs 2"; }
    GRAPHS=     # from CUDA graphs if a small capture works here (else eagerly, and said so)
    if [ "$DRY" != 1 ] && $PY -c "import sys; sys.path.insert(0, 'tests/golden'); import cases
cases._invert(cases._straight(), batch_size=9, device='cuda', cuda_graphs=True)"; then
      GRAPHS=--cuda-graphs; echo "CUDA graph probe: captured"
    else echo "CUDA graph probe failed or skipped (DRY): the linear cases run eagerly"; fi
    echo "[$(now) s] reproduce_paper with $PRIOR, $STARTS starts $GRAPHS"
    mkdir -p "$RESULTS/reproduce"
    timeout $(upto 5) $PY benchmarks/reproduce_paper.py --ti "$TI" --device $DEV \
      --prior "$PRIOR" --n-starts $STARTS --no-nonlinear $GRAPHS $EXTRA --out "$RESULTS/reproduce" 2>&1 \
      | stdbuf -oL tr '\r' '\n' | awk '!/(it\/s|s\/it)\]/ || ++n % 25 == 0 { print; fflush() }'
    echo "reproduce exit ${PIPESTATUS[0]}"
    rm -rf "$RESULTS/reproduce/prior"; pack ) >"$OUT/reproduce.txt" 2>&1
  log "reproduce: $(grep -E 'NO TRAINED|probe|in all|exit' "$OUT/reproduce.txt" | tr '\n' ' ')"
fi

# 4. (opt-in) the published SGAN trained on the GPU, then the paper's SGAN cases with it. Its training gets the
#    time left but SGAN_RESERVE s (the patterns, the weights' packing, SAnnn and SSbnd): bench_prior.py
#    --sgan-deadline trains in parts of about 30 s on a checkpoint, each started only when it ends in time at the
#    rate of the one before, and saves the generator after each (a timeout leaves the last part's)
if want sgan; then
  ( IT=; [ "$DRY" = 1 ] && IT="--pattern-iterations 2 --pattern-samples 4"
    mkdir -p "$RESULTS/sgan"
    BUDGET=$(( $(left) - ${SGAN_RESERVE:-170} ))
    if [ -n "${SGAN_DIR:-}" ]; then   # a saved SGAN carried to the machine: no training, its cases only
      echo "[$(now) s] sgan: the saved SGAN $SGAN_DIR (not trained here)"; rm -rf /tmp/li_sgan; cp -r "$SGAN_DIR" /tmp/li_sgan
    elif [ "$BUDGET" -lt 30 ]; then echo "[$(now) s] sgan: ${BUDGET} s left for the training: not started"
    else
      echo "[$(now) s] sgan: training for at most $BUDGET s"
      timeout $(upto 60) $PY benchmarks/bench_prior.py --no-vae --sgan --skip-cpu --patterns --sgan-gpu-train $IT \
        --sgan-deadline "$(( $(date +%s) + BUDGET ))" --sgan-checkpoint "$SGAN_CKPT" --ti "$TI" --save-sgan /tmp/li_sgan --output "$RESULTS/sgan/bench_prior_sgan.json" 2>&1 \
        | grep -v "it/s\]" | tail -30
      pack
      # a timeout between the two renames of a part's save leaves the last generator in li_sgan.old
      [ -f /tmp/li_sgan/config.json ] || { [ -f /tmp/li_sgan.old/config.json ] && mv /tmp/li_sgan.old /tmp/li_sgan; }
      # the trained SGAN comes back (its float32 weights are over one file's 16 MiB: in parts of 15 MiB)
      [ -f /tmp/li_sgan/config.json ] && tar -C /tmp -czf - li_sgan | split -b 15m -d - "$OUT/sgan.tgz.part-" \
        && echo "[$(now) s] sgan: the trained SGAN in $(ls "$OUT" | grep -c '^sgan.tgz.part-') parts"
    fi
    if [ -d /tmp/li_sgan ]; then
      SG=; [ -n "$TM" ] && [ -f "$TM/zinitSGAN500.npy" ] && SG="--test-models $TM --published-starts $MV"
      [ -n "$SG" ] && [ -f "$TM/noiserealz.npy" ] && SG="$SG --published-noise"
      N=${SGAN_STARTS:-100}; GR=--cuda-graphs; [ "$DRY" = 1 ] && { N=2; SG="$SG --epochs 2"; GR=; }
      CASES=${SGAN_CASES:-SAnnn,SSbnd}; [ "$CASES" = all ] && CASES=VSnnn,VSbnn,VSbod,VSbrd,SAnnn,SSbnd
      # FASTEST=1: the arithmetic the bench step found fastest (its --layouts and --sgan-rates rows)
      # (SGAN_ARITH: those options given, e.g. from an earlier call's bench record)
      ARITH=${SGAN_ARITH:-}; [ -z "$ARITH" ] && [ "${FASTEST:-0}" = 1 ] && [ -f "$RESULTS/bench/bench_inversion.json" ] \
        && ARITH=$($PY benchmarks/gpu_plan.py tables "$RESULTS/bench/bench_inversion.json")
      [ "${FASTEST:-0}" = 1 ] && [ -z "$ARITH" ] && echo "[$(now) s] sgan: FASTEST=1, but the bench record names no" \
        "faster arithmetic (no 'vae fastest' or 'sgan fastest' row, or no readable bench_inversion.json)"
      echo "[$(now) s] sgan: reproduce_paper --cases $CASES, $N starts, arithmetic: ${ARITH:-float32, default kernels}"
      # the VAE prior gives Table 2's thresholds (and draws mv1-mv3 where the published ones are absent)
      timeout $(upto 8) $PY benchmarks/reproduce_paper.py --ti "$TI" --device $DEV \
        --prior "${RP_PRIOR:-src/latentinv/data/channels_ti_prior}" --sgan /tmp/li_sgan --cases $CASES \
        --no-nonlinear --n-starts $N $GR $SG $ARITH --out "$RESULTS/sgan/reproduce" 2>&1 | tail -40
      rm -rf "$RESULTS/sgan/reproduce/prior"; pack
    fi ) >>"$OUT/log.txt" 2>&1
  log "sgan done"
fi

# 5. (opt-in) the sampler's benchmark on mc2 (TM needed)
if want sampling && [ -n "$TM" ]; then
  mkdir -p "$RESULTS/sampling"
  # the settings that meet the R-hat target on the CPU with the default prior (docs/benchmarks/sampling.md)
  timeout $(upto 8) $PY benchmarks/bench_sampling.py --test-models "$TM" --out "$RESULTS/sampling" \
    --method hmc --n-leapfrog 5 --chains 8 --burnin 300 --samples 598 2>&1 | tail -5 >>"$OUT/log.txt"
  pack; log "sampling done"
fi

[ -n "$PID_TEST" ] && { wait $PID_TEST; log "tests: $(tail -2 "$OUT/tests.txt" | tr '\n' ' ')"; }
[ -n "$PID_PRIOR" ] && { wait $PID_PRIOR; log "prior: $(grep -E 'gpu_plan|training to|exit|heldout|fraction' "$OUT/prior.txt" | tr '\n' ' ')"; }
[ -n "$PID_NL" ] && { wait $PID_NL; log "nonlinear: $(grep -E 'cpus:|best data RMSE|exit' "$OUT/nonlinear.txt" | tr '\n' ' ')"; }
pack
$PY benchmarks/gpu_plan.py check-out "$OUT" | tee -a "$OUT/log.txt"
log "end"
