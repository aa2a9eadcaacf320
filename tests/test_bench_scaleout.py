"""benchmarks/bench_scaleout.py's rows, run with a fake estimator, a fake clock and a fake Dask (no
inversion, no cluster): every row times the same thing, ``invert`` alone, and the record says so."""
import contextlib
import json
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_scaleout  # noqa: E402

FIT_SECONDS, INVERT_SECONDS_PER_SURVEY = 100.0, 1.0


class Clock:
    now = 0.0

    @classmethod
    def perf_counter(cls):
        return cls.now


class Result:
    def __init__(self, models):
        self.models = models

    @classmethod
    def concatenate(cls, parts):
        return cls(np.concatenate([p.models for p in parts]))


class Prior:
    def sample(self, n, random_state=None):
        return np.zeros((n, 4))


class Operator:
    def __init__(self, *geometry):
        pass

    def response(self, slowness):
        return np.asarray(slowness)


class Inverter:
    """fit takes FIT_SECONDS of the fake clock, invert (or a chunk of it) one second per survey."""

    def __init__(self, prior, operator, n_jobs=None, chunk_size=None, **settings):
        self.settings = settings

    def fit(self, X):
        Clock.now += FIT_SECONDS
        return self

    def invert(self, X):
        Clock.now += INVERT_SECONDS_PER_SURVEY * len(X)
        return Result(np.asarray(X, dtype=float))


def run_chunk(estimator, X, sigma, seed, surveys):
    return estimator.invert(X)


class Client:
    """Dask's client, run in line: scatter is the object, map calls the function on each chunk."""

    def __init__(self, cluster):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def run(self, fn):
        pass

    def scatter(self, obj, broadcast=False):
        return obj

    def map(self, fn, *iterables, pure=True):
        return [fn(*args) for args in zip(*iterables)]

    def gather(self, futures):
        return futures


def test_every_row_times_invert_alone_the_serial_ones_as_the_dask_ones(tmp_path, monkeypatch, capsys):
    """The serial rows (and joblib's) timed fit + invert, the client.map rows invert alone: "overhead per
    chunk" was low by fit's time over the surveys."""
    monkeypatch.setattr(bench_scaleout, "time", Clock)
    monkeypatch.setattr(bench_scaleout, "LatentInverter", Inverter)
    monkeypatch.setattr(bench_scaleout, "VAEPrior", types.SimpleNamespace(pretrained=lambda device: Prior()))
    monkeypatch.setattr(bench_scaleout, "StraightRayOperator", Operator)
    monkeypatch.setattr(bench_scaleout, "paper_slowness", lambda x: x)
    monkeypatch.setattr(bench_scaleout, "run_chunk", run_chunk)
    monkeypatch.setattr(bench_scaleout, "InversionResult", Result)
    monkeypatch.setattr(bench_scaleout, "joblib", types.SimpleNamespace(parallel_backend=lambda name: contextlib.nullcontext()))
    monkeypatch.setitem(sys.modules, "distributed", types.SimpleNamespace(Client=Client, LocalCluster=lambda **kw: contextlib.nullcontext()))
    out = tmp_path / "scaleout.json"
    bench_scaleout.main(["--surveys", "3", "--workers", "2", "--json", str(out)])
    record = json.loads(out.read_text())
    modes = [r["mode"] for r in record["rows"]]
    assert len(modes) == len(bench_scaleout.serial_threads()) + 4 and any("joblib" in m for m in modes)
    assert {r["mode"]: r["seconds"] for r in record["rows"]} == {m: 3 * INVERT_SECONDS_PER_SURVEY for m in modes}
    assert record["overhead_per_chunk_s"] == 0.0
    assert record["timed"].startswith("invert alone")
    assert "timed: invert alone" in capsys.readouterr().out
