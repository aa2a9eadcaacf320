"""The README's Python examples run, in order, in one namespace, as a reader would paste them.

Only their budgets are cut (starts, epochs, iterations, chain lengths) and the GPU or cluster they
name replaced by this machine's CPU or an in-process Dask cluster: each cut names the README text it
replaces, so an edit of an example that this test no longer matches fails here, not silently.
"""
import re
from pathlib import Path

import pytest
import torch

from latentinv._common import native_bfloat16

README = Path(__file__).resolve().parents[1] / "README.md"

#: per example (0-based, in README order): (README text, what runs instead)
CUTS = {
    0: [("n_starts=10, random_state=0, verbose=1)", "n_starts=2, n_epochs=1, random_state=0, verbose=0)"),
        ("cv=2,\n                      scoring=model_rmse_scorer, verbose=1)",
         "cv=2,\n                      scoring=model_rmse_scorer, verbose=0)")],
    1: [("VAEPrior(n_iterations=100_000, random_state=0)",
         "VAEPrior(n_iterations=2, batch_size=4, random_state=0, device='cpu')")],
    2: [("n_starts=100, random_state=0,\n                      prune=",
         "n_starts=4, n_epochs=2, random_state=0,\n                      prune="),
        ("n_starts=100, random_state=0,\n                         tol=",
         "n_starts=4, n_epochs=2, random_state=0,\n                         tol=")],
    3: [],                # constructs only: the device is checked by fit
    4: [('Client("tcp://scheduler:8786")', "Client(processes=False, n_workers=1, dashboard_address=None)")],
    5: [("n_burnin=300,\n                        n_samples=583",
         "n_burnin=5,\n                        n_samples=5")],
    6: [('SGANPrior(image_shape=(129, 65), device="cuda", random_state=0)',
         "SGANPrior(image_shape=(129, 65), device='cpu', n_filters=4, batch_size=2, n_iterations=1, "
         "random_state=0)")],
    7: [("n_starts=4, random_state=0)", "n_starts=2, n_epochs=1, random_state=0)")],
}


def examples():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_every_example_has_its_cuts():
    assert len(examples()) == len(CUTS), "an example was added or removed: give it its cuts here"


def test_the_readme_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("arviz", reason="the sampling example calls ess() and to_inference_data()")
    pytest.importorskip("distributed", reason="the cluster example runs on dask.distributed")
    monkeypatch.chdir(tmp_path)            # the examples write prior-ckpt/, my-prior/, sgan_prior/
    namespace = {}
    try:
        for k, code in enumerate(examples()):
            for old, new in CUTS[k]:
                assert old in code, f"example {k + 1} no longer holds {old!r}: update this test's cuts"
                code = code.replace(old, new)
            if not native_bfloat16(torch.device("cpu")):     # the example's bfloat16 needs it, else is refused
                code = code.replace('precision="bfloat16"', 'precision="float32"')
            exec(compile(code, f"README example {k + 1}", "exec"), namespace)
    finally:
        # the cluster example's in-process cluster, left open as a reader would leave it, is closed
        # here: else its threads log at the interpreter's exit, after pytest closed their stream
        if "client" in namespace:
            namespace["client"].close()
    # what the examples promise, checked on what they left
    assert namespace["models"].shape == (4, 129 * 65)
    assert set(namespace["search"].best_params_) == {"lr", "lam"}
    assert (tmp_path / "my-prior" / "weights.safetensors").is_file()
    assert namespace["result"].pruned.shape == (4, 4)
    assert namespace["posterior"].mean.shape == (1, 129 * 65)
    assert (tmp_path / "sgan_prior").is_dir()
    assert namespace["mine"].n_cells_ == 129 * 65          # the operator of one's own, fitted


def test_the_recorded_example_is_the_scikit_learn_one():
    """benchmarks/bench_readme_example.py times the README's scikit-learn example whole; it must find
    that example, not another block."""
    import sys

    sys.path.insert(0, str(README.parents[0] / "benchmarks"))
    import bench_readme_example

    code = bench_readme_example.sklearn_example(README)
    assert code == examples()[0] and "GridSearchCV(" in code and "search = " in code


def test_the_readme_names_the_extra_of_every_optional_feature():
    """Each extra of pyproject.toml that a feature needs (all but `test` and `peers`) is named in the
    README with its pip command, as the errors of a missing package do (the packaging trial: the README
    named only `latentinv[arviz]`; Dask and pyGIMLi were used there without a word on installing them)."""
    import tomllib

    extras = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    text = README.read_text()
    missing = [e for e in extras if e not in ("test", "peers") and f'pip install "latentinv[{e}]"' not in text]
    assert not missing, f"the README does not say how to install these extras: {missing}"
