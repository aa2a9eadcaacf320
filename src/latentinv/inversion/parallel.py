"""Surveys in chunks through joblib: ``n_jobs`` of :class:`~.estimator.LatentInverter`, so that
``with joblib.parallel_backend("dask"):`` runs them on a Dask cluster.

Each survey's randomness depends only on the estimator's seed and its own data (:mod:`.randomness`),
so a survey's result does not depend on the chunk it is in, except for float rounding: a chunk is one
batch of ``chunk_size * n_starts`` rows, and a decoder may round a row differently in batches of
another size. The chunks are therefore fixed by ``chunk_size`` alone (never by ``n_jobs`` or the
backend): for a given ``chunk_size`` the results are bit for bit the same whatever ``n_jobs`` and the
backend (on machines of one kind).

Threads: a worker runs torch and the operator's engine with the threads it was given (a Dask
worker's ``nthreads``; in a joblib process worker, the ``OMP_NUM_THREADS`` that joblib sets for it),
restored afterwards, so that ``n_workers * threads_per_worker`` never exceeds the cores.

A worker that dies mid-chunk (killed, out of memory, a crash in native code): loky raises joblib's
``TerminatedWorkerError`` (its message extended with what was lost and what needs less memory); Dask
retries the chunk on other workers (the same result, each chunk's randomness being its own) and, once
``distributed.scheduler.allowed-failures`` workers died on it, raises a RuntimeError naming the chunk's
surveys. joblib's Dask backend itself never hears of that failure (its callback is called only for
results) and would wait forever, so under it :func:`run_chunks` submits the chunks to the backend's Dask
client directly.

A chunk that raises under joblib's threading backend ends the call, and the chunks running beside it in
the backend's other threads stop at their next iteration (:func:`~.runtime.cancelled_with`), and a chunk
that a thread takes up afterwards does not start: they would otherwise go on calling the user's slowness
map and the operator after the call has returned. The call raises the error that failed, never the stop
of a chunk beside it. Under loky and Dask the running chunks finish in their workers (no shared event
reaches another process).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os

import joblib

from .runtime import Cancellation, ChunkCancelled, cancelled_with, stop_if_cancelled, torch_threads


def survey_chunks(n_surveys, chunk_size, n_jobs):
    """Slices of the surveys: one (all in one batch) when the call is serial and ``chunk_size`` is
    None; else consecutive chunks of ``chunk_size`` surveys (1 when None)."""
    if chunk_size is None:
        if n_jobs is None and joblib.effective_n_jobs(None) == 1:
            return [slice(0, n_surveys)]
        chunk_size = 1
    return [slice(i, min(i + chunk_size, n_surveys)) for i in range(0, n_surveys, chunk_size)]


def worker_threads():
    """Threads this process was given as a worker: a Dask worker's ``nthreads``, or the
    ``OMP_NUM_THREADS`` of a joblib process worker; None in the user's own process."""
    try:
        from distributed import get_worker
        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        pass
    if multiprocessing.parent_process() is not None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return None


@contextlib.contextmanager
def operator_threads(op, n):
    """The operator's engine threads (``n_threads``, where it has them) set to ``n`` inside the block."""
    before = getattr(op, "n_threads", None)
    if n is None or before is None or before == n:
        yield
        return
    op.n_threads = n
    try:
        yield
    finally:
        op.n_threads = before


def run_chunks(estimator, Y, sigma, seed, chunks, n_jobs):
    """Every chunk's :class:`~.result.InversionResult`, in order, through joblib (``n_jobs``) or, under
    joblib's Dask backend with more than one worker thread, as futures of the backend's client: the
    estimator scattered once, the chunks' futures cancelled when one fails."""
    backend = joblib.parallel.get_active_backend()[0]
    client = getattr(backend, "client", None) if type(backend).__name__ == "DaskDistributedBackend" else None
    if client is None or joblib.effective_n_jobs(n_jobs) == 1:      # joblib runs those in line
        from joblib.externals.loky.process_executor import TerminatedWorkerError
        # threads of this process: the chunks beside a failed one stop at their next iteration
        cancel = Cancellation() if isinstance(backend, joblib.parallel.ThreadingBackend) else None
        try:
            return joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(run_chunk)(estimator, Y[c], sigma, seed, c, cancel)
                                                  for c in chunks)
        except ChunkCancelled:
            # joblib raises the first failed chunk in X's order, which may be one that the failure stopped
            raise cancel.error
        except TerminatedWorkerError as err:    # joblib's message does not say what was lost, or why
            raise TerminatedWorkerError(
                f"{type(estimator).__name__}: a worker process died while inverting X's {len(Y)} surveys in "
                f"{len(chunks)} chunks (joblib does not say which chunk): no survey's result is returned. A "
                f"worker is most often killed for memory: fewer workers (n_jobs) or smaller chunks "
                f"(chunk_size) need less. joblib: {err}") from err
    from concurrent.futures import CancelledError     # a future lost with the workers holding its input
    from distributed import KilledWorker
    # on every worker: a chunk run again after its worker died finds it on another
    [shared] = client.scatter([estimator], hash=False, broadcast=True)
    futures = [client.submit(run_chunk, shared, Y[c], sigma, seed, c, pure=False) for c in chunks]
    try:
        with backend.retrieval_context():       # inside a Dask task (a nested search): secede meanwhile
            parts = []
            for c, future in zip(chunks, futures):
                try:
                    parts.append(future.result())
                except (KilledWorker, CancelledError) as err:
                    raise RuntimeError(
                        f"{type(estimator).__name__}: Dask lost the chunk of surveys {c.start} to {c.stop - 1} of X: "
                        f"the workers running it (or holding the estimator) died (killed, out of memory, or a "
                        f"crash in native code), as many times as the scheduler allows "
                        f"(distributed.scheduler.allowed-failures): {type(err).__name__}: {err}") from err
            return parts
    finally:
        client.cancel(futures + [shared])


def run_chunk(estimator, Y, sigma, seed, surveys, cancel=None):
    """One chunk's :class:`~.result.InversionResult` (in a worker or in line), with the worker's threads;
    ``surveys``: the chunk's slice of X (for per-survey ``initial_latents``); ``cancel``: the
    :class:`~.runtime.Cancellation` of the call's chunks in threads (:func:`~.runtime.cancelled_with`), or None."""
    n = worker_threads()
    with cancelled_with(cancel), torch_threads(n), operator_threads(estimator.operator_, n):
        stop_if_cancelled()
        return estimator._run(Y, sigma, seed, chunked=True, surveys=surveys)
