"""Threads of the engine (devices: ``latentinv._common._resolve_device``, shared with the priors), and the
cancellation of its loops when another chunk of the same call fails."""
from __future__ import annotations

import contextlib
import contextvars
import threading

import torch


@contextlib.contextmanager
def torch_threads(n):
    """torch's intra-op thread count set to ``n`` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


# -- cancellation of the chunks that run beside a failed one (threads only: see parallel.py) ---------------
_cancel = contextvars.ContextVar("latentinv_cancel", default=None)


class ChunkCancelled(RuntimeError):
    """A chunk stopped because another chunk of the same call failed (never the error the caller sees)."""


class Cancellation(threading.Event):
    """The event of one call's chunks, and the error that set it first (:attr:`error`): the caller
    raises that one, whichever chunk joblib reports first."""

    error = None


@contextlib.contextmanager
def cancelled_with(event):
    """Inside the block the engine's loops stop once ``event`` (a :class:`threading.Event`, shared by the
    chunks of one call; None: never) is set, and an error raised in the block sets it."""
    if event is None:
        yield
        return
    token = _cancel.set(event)
    try:
        yield
    except BaseException as err:
        if not isinstance(err, ChunkCancelled):     # a cancelled chunk is not a failure of its own
            if getattr(event, "error", None) is None:
                event.error = err
            event.set()
        raise
    finally:
        _cancel.reset(token)


def stop_if_cancelled():
    """:class:`ChunkCancelled` where the block's event (:func:`cancelled_with`) is set: checked before a
    chunk's first step (a chunk that a thread takes up after the failure calls nothing of the user's), after
    its loop, and at every iteration (:func:`iterations`)."""
    event = _cancel.get()
    if event is not None and event.is_set():
        raise ChunkCancelled("another chunk of this call failed")


def iterations(n, progress=None, unit="it"):
    """``range(n)`` for an engine loop, with a tqdm bar described by ``progress`` (None: none), stopping
    with :class:`ChunkCancelled` at the first iteration after the block's event (:func:`cancelled_with`)
    was set."""
    steps = range(n)
    if progress is not None:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=progress, unit=unit)
    for k in steps:
        stop_if_cancelled()
        yield k
