"""Every benchmark and script imports and parses its command line (``--help``): the scripts that the
docs tell users to run do not rot unseen between the runs that measure with them."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for d in ("benchmarks", "scripts") for p in (ROOT / d).glob("*.py")
                 if p.name != "machine_info.py")           # a helper module, no command line


def test_the_scripts_are_found():
    if not (ROOT / "benchmarks").is_dir():
        pytest.skip("benchmarks/ is not beside the tests (installed package)")
    names = {p.name for p in SCRIPTS}
    assert {"reproduce_paper.py", "bench_inversion.py", "train_default_prior.py", "gpu_plan.py"} <= names


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_help(path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(path.parent))
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)                 # the script's imports
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    if path.parent.name == "benchmarks":
        # --help showed the docstring's first line only: 'Reproduction of ... (2021), "Deep generative models
        # in' and 'the VAE (...) and' ended mid-sentence. It shows the first paragraph.
        text = out.split("\n\n")[1]                     # usage, then the description
        assert text.rstrip().endswith((".", "?", ")")), text


def test_gpu_checks_dry_stops_when_it_would_check_another_checkout(tmp_path):
    """DRY=1 checks "this checkout, as installed here, else its sources" (PYTHONPATH=src). Where an editable
    install of another checkout is what Python imports (scikit-build-core's redirecting finder wins over
    PYTHONPATH), the DRY run went on and checked that other tree's code, saying so in one log line only."""
    import shutil
    import subprocess

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "src").mkdir()                          # a checkout whose sources Python will not import
    shutil.copy(ROOT / "benchmarks" / "gpu_checks.sh", tmp_path / "benchmarks")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env.update(DRY="1", STEPS="none", DEADLINE="60", OUT=str(tmp_path / "out"), PY=sys.executable)
    done = subprocess.run(["bash", "benchmarks/gpu_checks.sh"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not this checkout's" in done.stderr and str(tmp_path / "src") in done.stderr


def _gpu_checks(tmp_path, **variables):
    import os
    import subprocess

    env = dict(os.environ, DRY="1", DEADLINE="60", OUT=str(tmp_path / "out"), PY=sys.executable,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    env.update(variables)
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_checks.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("variables, message", [
    (dict(STEPS="nonsense"), "STEPS: unknown step 'nonsense'"),
    (dict(STEPS="bench,sgan"), "STEPS: unknown step 'bench,sgan'"),
    (dict(STEPS="sgan", SGAN_CASES="SAnnn,SSbdn"), "SGAN_CASES: unknown case 'SSbdn'"),
    (dict(STEPS="sgan", SGAN_DIR="no_such_sgan"), "SGAN_DIR: 'no_such_sgan' is not a saved SGAN"),
    (dict(STEPS="sgan", FASTEST="1"), "FASTEST=1: the arithmetic comes from this call's bench"),
    (dict(STEPS="bench sgan", FASTEST="1", BENCH_ARGS="--skip-nonlinear"),
     "FASTEST=1: BENCH_ARGS='--skip-nonlinear' has neither --layouts nor --sgan-rates"),
    (dict(STEPS="none", BENCH_CAP="nonsense"), "BENCH_CAP: expected a whole number, got 'nonsense'"),
    (dict(STEPS="none", DEADLINE="9m"), "DEADLINE: expected a whole number, got '9m'"),
    (dict(STEPS="sgan", SGAN_STARTS="0"), "SGAN_STARTS: expected at least 1, got 0"),
    (dict(STEPS="none", FASTEST="yes"), "FASTEST: expected 0 or 1, got 'yes'"),
    (dict(STEPS="none", TM="no_such_folder"), "TM: no folder 'no_such_folder'"),
])
def test_gpu_checks_refuses_bad_variables_before_anything_runs(tmp_path, variables, message):
    """A lent GPU's call runs unattended against a hard limit. An unknown step (STEPS=nonsense, or
    'bench,sgan') was skipped without a word and the call exited 0; a misspelt SGAN_CASES, a missing
    SGAN_DIR or FASTEST=1 without the bench rows it reads met the sgan step only after the bench, on the
    GPU's time; BENCH_CAP=nonsense became `timeout 0`, no cap at all. Each is a usage error naming the
    variable (exit 2), before the install and every step."""
    import shutil

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    done = _gpu_checks(tmp_path, **variables)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"gpu_checks.sh: {message}" in done.stderr
    assert "installed" not in done.stdout


def test_gpu_checks_refuses_sgan_arith_that_reproduce_paper_would_refuse(tmp_path):
    """SGAN_ARITH is parsed by reproduce_paper.py's own parser once Python is there, before any step (a bad
    option failed the sgan step after the bench)."""
    import shutil

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    done = _gpu_checks(tmp_path, STEPS="sgan", SGAN_DIR=str(ROOT / "src" / "latentinv" / "data" / "channels_ti_prior"),
                       SGAN_ARITH="--sgan-layout group_norm")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "gpu_checks.sh: SGAN_ARITH: " in done.stderr and "--sgan-layout: unknown switches" in done.stderr
    assert "sgan:" not in (tmp_path / "out" / "log.txt").read_text()      # no step ran


@pytest.mark.parametrize("path", [p for p in SCRIPTS if p.name.startswith("bench_")], ids=lambda p: p.name)
def test_each_benchmark_record_names_the_code_behind_it(path):
    """A benchmark's JSON record names the latentinv that ran (machine_info.code_info: version, folder,
    commit, uncommitted changes), as reproduce_paper.py's does; bench_sampling records it through
    reproduce_paper's machine()."""
    source = path.read_text()
    assert "json.dump" in source or "write_text(json.dumps" in source
    assert "code_info()" in source or "from reproduce_paper import machine" in source


def test_code_info_names_this_checkouts_commit(monkeypatch):
    import os
    import subprocess

    import latentinv

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from machine_info import code_info

    info = code_info()
    assert info["version"] == latentinv.__version__ and info["file"] == latentinv.__file__
    head = subprocess.run(["git", "-C", os.path.dirname(latentinv.__file__), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        assert info["commit"] is None and info["dirty"] is None     # an installed package: no checkout
    else:
        assert info["commit"] == head.stdout.strip() and isinstance(info["dirty"], bool)


def test_nonlinear_backend_rate_leaves_the_warm_up_out_and_names_the_cpu(monkeypatch, capsys):
    """The first pass (the graph built) was counted in the mean over 20 s: with the Python backend's
    ~5 s per pass, one pass in four; the machine was named by ``platform.processor()`` (often empty)."""
    import time

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import nonlinear_backend_rate as script

    class SlowFirstCall:
        def __init__(self, *args, backend, **kwargs):
            self.calls, self.n_threads = 0, 1

        def jacobian(self, row):
            self.calls += 1
            time.sleep(0.3 if self.calls == 1 else 0.0)

    monkeypatch.setattr(script, "ShortestPathOperator", SlowFirstCall)
    monkeypatch.setattr(script, "cpu_model", lambda: "Test CPU 9000")
    rates = script.main(["--seconds", "0.05"])
    assert max(rates.values()) < 0.1
    out = capsys.readouterr().out
    assert "machine: Test CPU 9000," in out and "python / cpp:" in out
    for bad in ("0", "-1", "nan"):
        with pytest.raises(SystemExit):
            script.main(["--seconds", bad])


@pytest.mark.parametrize("script, argv, message", [
    ("bench_training", ["--window", "0"], "--window must be at least 1, got 0"),
    ("bench_training", ["--iterations", "100", "--window", "200"], "--window 200 is longer than --iterations 100"),
    ("bench_time_to_answer", ["--repeats", "0"], "--repeats must be at least 1, got 0"),
    ("bench_time_to_answer", ["--n-starts", "-1"], "--n-starts must be at least 1, got -1"),
])
def test_benchmark_counts_below_one_are_usage_errors(script, argv, message, capsys):
    # --window 0 divided by zero after the training, --repeats 0 was a KeyError after every row had run
    import importlib
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exc:
        module.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
