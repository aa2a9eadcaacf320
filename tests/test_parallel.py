"""LatentInverter(n_jobs=...) through joblib: chunks of surveys in worker processes and on a real
``dask.distributed.LocalCluster`` (processes, one thread each), bit for bit equal to the serial run
with the same chunks; GridSearchCV inside the Dask backend equal to the serial search; the workers'
threads; the fitted estimator's travel size."""
import pickle

import joblib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV

from latentinv.inversion import InversionResult, LatentInverter, TorchGenerator
from latentinv.inversion.parallel import run_chunk, survey_chunks, worker_threads
from latentinv.metrics import model_rmse_scorer
from latentinv.operators import ShortestPathOperator, StraightRayOperator

sys.path.insert(0, str(Path(__file__).with_name("golden")))
from cases import small_crosshole  # noqa: E402  (the small problem shared with the golden record)

D = 4


def _generator():
    torch.manual_seed(0)       # torch's own modules: importable by the workers, nothing of this file
    net = torch.nn.Sequential(torch.nn.Linear(D, 32), torch.nn.Tanh(), torch.nn.Linear(32, 96),
                              torch.nn.Sigmoid()).eval()
    return TorchGenerator(net, D, image_shape=(12, 8))


def _problem(n=8, op=None):
    op = op or StraightRayOperator(*small_crosshole())
    gen = _generator()
    z = np.random.default_rng(1).standard_normal((n, D))
    models = gen.decode(z)
    times = np.asarray(op.response(1.0 / (0.06 + 0.02 * (1.0 - models)))).reshape(n, -1)
    return op, gen, models, times


def _inverter(op, gen, **params):
    return LatentInverter(gen, op, **dict(dict(n_starts=3, n_epochs=2, batch_size=9, lr=1e-3,
                                               random_state=4, device="cpu"), **params))


def _assert_same(a, b):
    for f in ("models", "start_models", "latents", "data_rmse", "data_rmse_history", "best_start",
              "n_iterations_run", "homogeneous_rmse"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def test_survey_chunks():
    assert survey_chunks(5, None, None) == [slice(0, 5)]
    assert survey_chunks(5, 2, None) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert survey_chunks(3, None, 2) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    with joblib.parallel_backend("threading", n_jobs=2):
        assert len(survey_chunks(3, None, None)) == 3     # parallel by the context: one per chunk


def _serial(op, gen, times, threads=1, **params):
    """The serial run with ``threads`` torch threads (a worker's own count: 1 in these tests)."""
    from latentinv.inversion.runtime import torch_threads
    with torch_threads(threads):
        return _inverter(op, gen, n_jobs=1, **params).fit(times).invert(times)


def test_chunked_runs_equal_bit_for_bit_whatever_n_jobs():
    op, gen, _, times = _problem(5)
    serial = _serial(op, gen, times, chunk_size=2)
    procs = _inverter(op, gen, chunk_size=2, n_jobs=2).fit(times).invert(times)   # 2 workers x 1 thread
    _assert_same(serial, procs)
    # one batch of all surveys, and another thread count: the same run up to float32 rounding
    one = _inverter(op, gen).fit(times).invert(times)
    np.testing.assert_allclose(one.data_rmse, serial.data_rmse, rtol=1e-4)
    np.testing.assert_array_equal(one.n_iterations_run, serial.n_iterations_run)


def test_concatenate_pads_histories_of_chunks_that_stopped_early():
    op, gen, _, times = _problem(2)
    inv = _inverter(op, gen, target_misfit=1e9, n_epochs=3).fit(times)     # stops at once
    short = inv.invert(times[:1])
    long = _inverter(op, gen, n_epochs=3).fit(times).invert(times[1:])
    both = InversionResult.concatenate([short, long])
    assert both.data_rmse_history.shape == (2, 3, long.data_rmse_history.shape[2])
    assert np.isnan(both.data_rmse_history[0, :, short.data_rmse_history.shape[2]:]).all()
    np.testing.assert_array_equal(both.models, np.vstack([short.models, long.models]))


def test_run_chunk_uses_the_workers_threads_and_restores_them(monkeypatch):
    import latentinv.inversion.parallel as parallel
    op = ShortestPathOperator(*small_crosshole(), n_secondary_nodes=1, n_threads=2)
    _, gen, _, times = _problem(2, op)
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            seen.append((torch.get_num_threads(), op.n_threads))
            return self.inner(z)

    inv = _inverter(op, TorchGenerator(Spy(gen.module), D, image_shape=(12, 8)), n_epochs=1).fit(times)
    before = torch.get_num_threads()
    seen.clear()                                  # fit's own checks of the generator
    monkeypatch.setattr(parallel, "worker_threads", lambda: 1)
    run_chunk(inv, times, None, 3, slice(0, len(times)))
    assert set(seen) == {(1, 1)}
    assert torch.get_num_threads() == before and op.n_threads == 2


def test_fitted_inverter_travels_lean():
    from latentinv import VAEPrior, paper_crosshole
    prior = VAEPrior.pretrained(device="cpu")
    op = StraightRayOperator(*paper_crosshole())
    inv = LatentInverter(prior, op, device="cpu").fit(np.full((1, op.n_data), 100.0))
    size = len(pickle.dumps(inv))
    # the weights in float32, as loaded (the file may store them in float16: VAEPrior.save's "mixed")
    weights = sum(t.numel() * 4 for t in prior.module_.state_dict().values() if t.is_floating_point())
    assert size <= 1.2 * weights, (size, weights)
    clone = pickle.loads(pickle.dumps(inv))
    assert not any(p.requires_grad and p.grad is not None for p in clone.prior_.decoder_.parameters())


# ---------------------------------------------------------------------------------------------------
# a real Dask cluster: processes, one thread each
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def test_dask_workers_report_their_threads(dask_client):
    assert set(dask_client.run(worker_threads).values()) == {1}


def test_predict_on_dask_equals_the_serial_run(dask_client):
    op, gen, _, times = _problem(8)
    serial = _serial(op, gen, times, chunk_size=2)
    with joblib.parallel_backend("dask"):
        on_dask = _inverter(op, gen, chunk_size=2).fit(times).invert(times)
    _assert_same(serial, on_dask)
    with joblib.parallel_backend("dask"):
        per_survey = _inverter(op, gen).fit(times).invert(times)     # chunk_size None: one per chunk
    _assert_same(_serial(op, gen, times, chunk_size=1), per_survey)
    # starting latents of one array per survey: each chunk submitted to Dask takes its own surveys' arrays
    # (a chunk given the first surveys' arrays ran without a word: only the in-line path was tested)
    Z = np.random.default_rng(2).standard_normal((8, 3, D)) * np.arange(1, 9)[:, None, None]
    with joblib.parallel_backend("dask"):
        on_dask = _inverter(op, gen, chunk_size=2, initial_latents=Z).fit(times).invert(times)
    _assert_same(_serial(op, gen, times, chunk_size=2, initial_latents=Z), on_dask)
    np.testing.assert_allclose(on_dask.latent_norm_history[:, :, 0], np.linalg.norm(Z.astype(np.float32), axis=2),
                               rtol=1e-6)


def test_grid_search_on_dask_equals_the_serial_search(dask_client):
    op, gen, models, times = _problem(4)
    grid = {"lr": [1e-3, 1e-2], "lam": [1.0, 10.0]}
    # chunk_size fixes the batches: inside a Dask task, joblib sends predict's own chunks to Dask too
    from latentinv.inversion.runtime import torch_threads
    with torch_threads(1):                       # the workers' thread count
        serial = GridSearchCV(_inverter(op, gen, chunk_size=1), grid, cv=2, scoring=model_rmse_scorer).fit(times, models)
    with joblib.parallel_backend("dask"):
        on_dask = GridSearchCV(_inverter(op, gen, chunk_size=1), grid, cv=2, scoring=model_rmse_scorer).fit(times, models)
    assert on_dask.best_params_ == serial.best_params_
    np.testing.assert_array_equal(on_dask.cv_results_["mean_test_score"],
                                  serial.cv_results_["mean_test_score"])


def test_cli_invert_many_surveys_on_the_dask_scheduler(dask_client, tmp_path):
    """`latentinv invert SURVEYS.csv --scheduler ADDRESS`: one model per survey, as the serial CLI."""
    from click.testing import CliRunner

    from latentinv import VAEPrior, cli, paper_crosshole
    from latentinv.inversion import paper_slowness
    prior = VAEPrior.pretrained(device="cpu")
    op = StraightRayOperator(*paper_crosshole())
    data = op.response(paper_slowness(prior.sample(3, random_state=2)))
    np.savetxt(tmp_path / "surveys.csv", data, delimiter=",")
    args = ["invert", str(tmp_path / "surveys.csv"), "--n-starts", "2", "--epochs", "1", "--quiet",
            "--device", "cpu", "--chunk-size", "1"]
    dask_run = CliRunner().invoke(cli.main, args + ["--out", str(tmp_path / "d"),
                                                    "--scheduler", dask_client.scheduler.address])
    assert dask_run.exit_code == 0, dask_run.output
    from latentinv.inversion.runtime import torch_threads
    with torch_threads(1):
        serial_run = CliRunner().invoke(cli.main, args + ["--out", str(tmp_path / "s"), "--n-jobs", "1"])
    assert serial_run.exit_code == 0, serial_run.output
    on_dask, serial = np.load(tmp_path / "d" / "models.npy"), np.load(tmp_path / "s" / "models.npy")
    assert on_dask.shape == (3, 129 * 65)
    np.testing.assert_array_equal(on_dask, serial)


# ---------------------------------------------------------------------------------------------------
# a worker that dies mid-run: a clear error (never a hang, never a result short of a survey)
# ---------------------------------------------------------------------------------------------------
_DYING_WORKER = r'''
import json, os, sys, tempfile
import joblib, numpy as np
sys.path.insert(0, sys.argv[1])
from test_parallel import _inverter, _problem, _serial
from latentinv.inversion import paper_slowness


class DyingSlowness:
    """paper_slowness, but a process other than the one that built it kills itself (SIGKILL) on its
    first call: every chunk's worker dies; with ``token`` (a file), only the first worker to remove it."""
    def __init__(self, token=None):
        self.pid, self.token = os.getpid(), token

    def __call__(self, x):
        if os.getpid() != self.pid:
            try:
                if self.token is not None:
                    os.unlink(self.token)
                os.kill(os.getpid(), 9)
            except FileNotFoundError:
                pass
        return paper_slowness(x)


def outcome(call):
    try:
        return {"models": np.shape(call().models)}
    except BaseException as err:        # what the user sees
        return {"error": type(err).__name__, "message": str(err)}


if __name__ == "__main__":
    op, gen, _, times = _problem(3)
    out = {"loky": outcome(lambda: _inverter(op, gen, n_jobs=2, slowness_map=DyingSlowness())
                           .fit(times).invert(times))}
    import dask, distributed
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                     silence_logs=50) as cluster, distributed.Client(cluster), \
            joblib.parallel_backend("dask"):
        client = distributed.get_client()
        token = tempfile.mkstemp()[1]     # one worker dies: the scheduler runs its chunk again elsewhere
        once = _inverter(op, gen, chunk_size=1, slowness_map=DyingSlowness(token)).fit(times).invert(times)
        serial = _serial(op, gen, times, chunk_size=1)
        out["dask_once"] = {"died": not os.path.exists(token),
                            "same": bool(np.array_equal(once.models, serial.models)
                                         and np.array_equal(once.data_rmse, serial.data_rmse))}
        client.wait_for_workers(2, timeout=60)    # the nanny's new worker (with 1, joblib runs in line)
        out["dask"] = outcome(lambda: _inverter(op, gen, chunk_size=1, slowness_map=DyingSlowness())
                              .fit(times).invert(times))
    print("OUTCOME", json.dumps(out))
'''


@pytest.mark.slow
def test_a_worker_killed_mid_run_raises_a_clear_error_never_hangs(tmp_path):
    """A worker process SIGKILLed inside a chunk: loky raises joblib's TerminatedWorkerError; a Dask
    worker's chunk runs again elsewhere (the same models as the serial run) and, when every worker
    it runs on dies, a RuntimeError names the surveys (joblib's Dask backend waited forever there)."""
    import json
    import subprocess
    script = tmp_path / "dying_worker.py"
    script.write_text(_DYING_WORKER)
    pytest.importorskip("distributed", reason="dask[distributed] is not installed")
    try:
        done = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], capture_output=True,
                              text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("an inversion whose worker died hung (no result, no error, in 180 s)")
    line = [x for x in done.stdout.splitlines() if x.startswith("OUTCOME ")]
    assert line, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(line[-1][len("OUTCOME "):])
    assert out["loky"]["error"] == "TerminatedWorkerError", out
    assert "SIGKILL" in out["loky"]["message"], out
    assert "a worker process died while inverting X's 3 surveys in" in out["loky"]["message"], out
    assert out["dask_once"] == {"died": True, "same": True}, out
    assert out["dask"]["error"] == "RuntimeError", out
    assert "Dask lost the chunk of surveys 0 to 0 of X" in out["dask"]["message"], out
    assert "died" in out["dask"]["message"], out


class _Interrupting:
    """paper_slowness, or a KeyboardInterrupt while ``armed`` (fit calls it on its test latents)."""
    armed = False

    def __call__(self, x):
        if self.armed:
            raise KeyboardInterrupt
        from latentinv.inversion import paper_slowness
        return paper_slowness(x)


def test_an_interrupted_or_failed_fit_leaves_the_previous_fit_or_none():
    """A first fit interrupted after its checks left n_features_in_, device_ and prior_ set: the inverter
    claimed to be fitted and predict failed on a missing operator_; a refit that failed on data of
    another width left n_features_in_ of those data, and the previous fit could no longer predict."""
    from sklearn.exceptions import NotFittedError
    op, gen, _, times = _problem(2)
    stop = _Interrupting()
    inv = _inverter(op, gen, slowness_map=stop)
    stop.armed = True
    with pytest.raises(KeyboardInterrupt):
        inv.fit(times)
    stop.armed = False
    assert [k for k in vars(inv) if k.endswith("_")] == []
    with pytest.raises(NotFittedError):
        inv.predict(times)
    models = inv.fit(times).predict(times)
    with pytest.raises(ValueError, match="30 traveltimes per survey but the operator expects 36"):
        inv.fit(times[:, :30])
    np.testing.assert_array_equal(inv.predict(times), models)


def test_bench_scaleouts_chunks_are_run_chunks_own_arguments_and_give_the_serial_run():
    """benchmarks/bench_scaleout.py maps ``run_chunk`` over the surveys itself (client.map): it passed
    four arguments after ``run_chunk`` gained ``surveys`` (80c57f4), and every Dask row failed."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import bench_scaleout
    finally:
        sys.path.pop(0)
    from latentinv.inversion.randomness import as_seed

    op, gen, _, times = _problem(n=3)
    est = _inverter(op, gen, n_jobs=1, chunk_size=1).fit(times)
    seed = as_seed(est.random_state)
    parts = [run_chunk(*args) for args in zip(*bench_scaleout.chunk_arguments(est, times, seed))]
    mapped, serial = InversionResult.concatenate(parts), est.invert(times)
    for f in ("models", "start_models", "latents", "data_rmse", "data_rmse_history", "best_start"):
        np.testing.assert_array_equal(getattr(mapped, f), getattr(serial, f), err_msg=f)


def test_under_the_threading_backend_the_chunks_beside_a_failed_one_stop():
    """A slowness map raising at its 20th call under joblib's threading backend (4 surveys, chunk_size=1,
    n_jobs=2): predict raised, but the other thread's chunk went on to its end, calling the map in the
    background (189 more times in the trial, 229 here). The chunks of a call now share an event that the failing one sets: the
    other stops at its next iteration (within one call of the map), and the next call is the serial run's."""
    import threading
    import time

    op, gen, _, times = _problem(4)
    lock, calls, fail = threading.Lock(), [], [True]

    def slowness(x):
        with lock:
            calls.append(threading.get_ident())
            if fail[0] and len(calls) == 20:
                raise ValueError("the map failed at its 20th call")
        time.sleep(0.002)                     # both threads are inside the loop when one fails
        return 1.0 / (0.06 + 0.02 * (1.0 - x))

    est = _inverter(op, gen, slowness_map=slowness, n_epochs=30, chunk_size=1, n_jobs=2).fit(times)
    calls.clear()
    with joblib.parallel_backend("threading", n_jobs=2):
        with pytest.raises(ValueError, match="the map failed at its 20th call"):
            est.predict(times)
        raised = len(calls)
        time.sleep(1.0)
        # the other chunk: at most the call of the iteration it was in (its full run: 30 epochs of 3 steps)
        assert len(calls) - raised <= 2 and len(set(calls)) == 2
        fail[0] = False
        _assert_same(est.invert(times), _serial(op, gen, times, slowness_map=slowness, n_epochs=30, chunk_size=1))


def test_a_chunk_that_starts_or_ends_its_loop_after_another_failed_calls_nothing_more_of_the_users():
    """Under the threading backend a thread takes up its next chunk as soon as its own failed, before joblib
    hears of the failure: that chunk's set-up (the memory probe) called the slowness map twice, and the
    test above saw 3 calls after the failure (at most 2 allowed) in a full suite on an AMD EPYC. A chunk
    whose loop ends as another fails goes on to no rescoring or convergence check either."""
    from latentinv.inversion import estimator as estimator_module
    from latentinv.inversion.runtime import Cancellation, ChunkCancelled

    op, gen, _, times = _problem(2)
    calls = []
    est = _inverter(op, gen, slowness_map=lambda x: calls.append(1) or 1.0 / (0.06 + 0.02 * (1.0 - x)),
                    n_epochs=3).fit(times)
    calls.clear()
    cancel = Cancellation()
    cancel.set()
    with pytest.raises(ChunkCancelled):
        run_chunk(est, times[:1], None, 0, slice(0, 1), cancel)
    assert calls == []

    real, cancel = estimator_module.run_sgd, Cancellation()

    def loop_then_another_fails(*args, **kwargs):
        out = real(*args, **kwargs)
        cancel.set()
        calls.clear()
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(estimator_module, "run_sgd", loop_then_another_fails)
        with pytest.raises(ChunkCancelled):
            run_chunk(est, times[:1], None, 0, slice(0, 1), cancel)
    assert calls == []


def test_the_call_raises_the_chunks_error_not_the_stop_of_a_chunk_before_it_in_x():
    """Chunk 1 fails while chunk 0 runs, and chunk 0 stops before joblib hears of the failure (the event is
    set first; in the threading test above that order came by chance, in one run of the suite); joblib reports the first failed chunk
    in X's order, chunk 0's ChunkCancelled ("another chunk of this call failed"); the call raises chunk 1's."""
    import threading
    import time

    from latentinv.inversion import runtime
    from latentinv.inversion.parallel import run_chunks

    started, stopped = threading.Event(), threading.Event()

    class Estimator:
        operator_ = None

        def _run(self, Y, sigma, seed, chunked, surveys):
            if surveys.start == 0:
                started.set()
                try:
                    for _ in runtime.iterations(10**6):       # runs until chunk 1 sets the call's event
                        time.sleep(0.001)
                finally:
                    stopped.set()
            # chunk 0 runs before chunk 1 fails: on Python 3.13 joblib's second thread started chunk 1 first,
            # and chunk 0, cancelled before it began, never ran
            assert started.wait(5)
            # what cancelled_with does with the error, before the error leaves the chunk for joblib
            error, event = KeyError("chunk 1 failed"), runtime._cancel.get()
            event.error = error
            event.set()
            stopped.wait(5)
            time.sleep(0.1)                                   # chunk 0's stop reaches joblib first
            raise error

    with joblib.parallel_backend("threading", n_jobs=2):
        with pytest.raises(KeyError, match="chunk 1 failed"):
            run_chunks(Estimator(), np.zeros((2, 3)), None, 0, [slice(0, 1), slice(1, 2)], 2)
    assert stopped.is_set()


def test_the_engine_loops_stop_once_the_calls_event_is_set():
    """runtime.iterations: every engine loop (eager SGD, static SGD by chunks of epochs, sampler) counts
    through it; inside cancelled_with(event) it stops at the first iteration after the event is set, and an
    error raised inside the block sets the event for the others (a ChunkCancelled does not count as one)."""
    import threading

    from latentinv.inversion.runtime import ChunkCancelled, cancelled_with, iterations
    assert list(iterations(3)) == [0, 1, 2]                  # outside a block: never cancelled
    event, seen = threading.Event(), []
    with pytest.raises(ChunkCancelled), cancelled_with(event):
        for k in iterations(10):
            seen.append(k)
            if k == 3:
                event.set()                                   # another chunk failed
    assert seen == [0, 1, 2, 3]
    event.clear()
    with pytest.raises(ZeroDivisionError), cancelled_with(event):
        1 / 0
    assert event.is_set()
    event.clear()
    with pytest.raises(ChunkCancelled), cancelled_with(event):
        raise ChunkCancelled("stopped")
    assert not event.is_set()
    # the three loops take their steps from it
    import inspect

    from latentinv.inversion import graphed, sampler, sgd
    for fn in (sgd.run_sgd, graphed.run_sgd_static, sampler.run_chains):
        assert "in iterations(" in inspect.getsource(fn), fn.__name__
