"""benchmarks/bench_scaleout.py's rows, run with a fake estimator, a fake clock and a fake Dask (no
inversion, no cluster): every row times the same thing, ``invert`` alone, and the record says so."""
import contextlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

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


def fake_bench(monkeypatch, client=Client, cluster=lambda **kw: contextlib.nullcontext()):
    """bench_scaleout with the fakes above: no inversion, no cluster, the fake clock."""
    monkeypatch.setattr(bench_scaleout, "time", Clock)
    monkeypatch.setattr(bench_scaleout, "LatentInverter", Inverter)
    monkeypatch.setattr(bench_scaleout, "VAEPrior", types.SimpleNamespace(pretrained=lambda device: Prior()))
    monkeypatch.setattr(bench_scaleout, "StraightRayOperator", Operator)
    monkeypatch.setattr(bench_scaleout, "paper_slowness", lambda x: x)
    monkeypatch.setattr(bench_scaleout, "run_chunk", run_chunk)
    monkeypatch.setattr(bench_scaleout, "InversionResult", Result)
    monkeypatch.setattr(bench_scaleout, "joblib", types.SimpleNamespace(parallel_backend=lambda name: contextlib.nullcontext()))
    monkeypatch.setitem(sys.modules, "distributed", types.SimpleNamespace(Client=client, LocalCluster=cluster))


def test_every_row_times_invert_alone_the_serial_ones_as_the_dask_ones(tmp_path, monkeypatch, capsys):
    """The serial rows (and joblib's) timed fit + invert, the client.map rows invert alone: "overhead per
    chunk" was low by fit's time over the surveys."""
    fake_bench(monkeypatch)
    out = tmp_path / "scaleout.json"
    bench_scaleout.main(["--surveys", "3", "--workers", "2", "--json", str(out)])
    record = json.loads(out.read_text())
    modes = [r["mode"] for r in record["rows"]]
    assert len(modes) == len(bench_scaleout.serial_threads()) + 4 and any("joblib" in m for m in modes)
    assert {r["mode"]: r["seconds"] for r in record["rows"]} == {m: 3 * INVERT_SECONDS_PER_SURVEY for m in modes}
    assert record["overhead_per_chunk_s"] == 0.0
    assert record["timed"].startswith("invert alone")
    assert "timed: invert alone" in capsys.readouterr().out


CHUNK_OVERHEAD = 0.5      # seconds a Dask chunk costs beyond its inversion


class Cluster:
    def __init__(self, n_workers, **kw):
        self.n_workers = n_workers

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class SharingClient(Client):
    """Its workers share the chunks: a map takes its chunks' time plus CHUNK_OVERHEAD per chunk, over the
    workers."""

    def __init__(self, cluster):
        self.workers = cluster.n_workers

    def map(self, fn, *iterables, pure=True):
        start = Clock.now
        out = [fn(*args) for args in zip(*iterables)]
        Clock.now = start + (Clock.now - start + CHUNK_OVERHEAD * len(out)) / self.workers
        return out


class ThreadedInverter(Inverter):
    """invert takes one second per survey over the torch threads set by the bench (Clock.threads)."""

    def invert(self, X):
        Clock.now += INVERT_SECONDS_PER_SURVEY * len(X) / Clock.threads
        return Result(np.asarray(X, dtype=float))


def test_the_summary_numbers_are_those_of_the_rows(tmp_path, monkeypatch, capsys):
    """The test above gave every row the same time, so the summary's speedup, efficiency and overhead per
    chunk (0 there) could be any ratio of the rows. Here the workers share the chunks, each chunk costs
    CHUNK_OVERHEAD, threads divide a serial batch's time: hand values from the rows' own times."""
    @contextlib.contextmanager
    def torch_threads(n):
        Clock.threads = n
        try:
            yield
        finally:
            Clock.threads = 1

    fake_bench(monkeypatch, client=SharingClient, cluster=Cluster)
    monkeypatch.setattr(bench_scaleout, "LatentInverter", ThreadedInverter)
    monkeypatch.setattr(bench_scaleout, "torch_threads", torch_threads)
    monkeypatch.setattr(bench_scaleout, "serial_threads", lambda: [1, 4])
    monkeypatch.setattr(Clock, "threads", 1, raising=False)
    out = tmp_path / "scaleout.json"
    bench_scaleout.main(["--surveys", "3", "--workers", "2", "--json", str(out)])
    record = json.loads(out.read_text())
    seconds = {r["mode"]: r["seconds"] for r in record["rows"]}
    one, many = (3 + 3 * CHUNK_OVERHEAD) / 1, (3 + 3 * CHUNK_OVERHEAD) / 2            # 4.5 s and 2.25 s
    assert seconds == pytest.approx({"serial, one batch, 1 thread(s)": 3.0, "serial, one batch, 4 thread(s)": 0.75,
                                     "serial, one survey per chunk, 1 thread": 3.0,
                                     "Dask LocalCluster 1 worker(s) x 1 thread": one,
                                     "Dask LocalCluster 2 worker(s) x 1 thread": many,
                                     "joblib Dask backend, 2 workers x 1 thread": 3.0})
    assert record["speedup"] == pytest.approx(one / many) == pytest.approx(2.0)
    assert record["efficiency"] == pytest.approx(2.0 / 2)
    assert record["overhead_per_chunk_s"] == pytest.approx(CHUNK_OVERHEAD)     # (4.5 - 3) / 3 surveys
    printed = capsys.readouterr().out
    assert "2 workers / 1 worker: 2.00x (parallel efficiency 100%); overhead per chunk 500 ms" in printed
    assert "serial 4-thread one batch vs 2 workers: 0.33x" in printed             # 0.75 s / 2.25 s
