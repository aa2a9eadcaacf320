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
    assert "usage:" in capsys.readouterr().out


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


@pytest.mark.parametrize("path", [p for p in SCRIPTS if p.parent.name == "benchmarks"], ids=lambda p: p.name)
def test_the_help_says_the_whole_first_sentence(path, capsys):
    """--help showed the docstring's first line only: 'Reproduction of ... (2021), "Deep generative models
    in' and 'the VAE (...) and' ended mid-sentence. It shows the first paragraph."""
    import subprocess

    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    text = done.stdout.split("\n\n")[1]                 # usage, then the description
    assert text.rstrip().endswith((".", "?", ")")), text


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
