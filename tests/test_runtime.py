"""latentinv.inversion.runtime: the event that a call's chunks share (``cancelled_with``) keeps the first error
of the call, never a stopped chunk's (the engine's loops stopping at it: tests/test_parallel.py)."""
import pytest

from latentinv.inversion.runtime import Cancellation, ChunkCancelled, cancelled_with, stop_if_cancelled


def test_the_event_keeps_the_first_error_of_the_call_and_never_a_stop():
    """The call raises ``event.error`` (parallel.run_chunks): the error of the chunk that failed first, not
    one that failed after it, and not the ChunkCancelled of a chunk that the failure stopped."""
    event = Cancellation()
    with pytest.raises(ChunkCancelled), cancelled_with(event):
        raise ChunkCancelled("stopped")
    assert event.error is None and not event.is_set()
    first = ZeroDivisionError("chunk 2 failed")
    with pytest.raises(ZeroDivisionError), cancelled_with(event):
        raise first
    assert event.error is first and event.is_set()
    with pytest.raises(KeyError), cancelled_with(event):
        raise KeyError("chunk 3 failed after it")
    with pytest.raises(ChunkCancelled), cancelled_with(event):
        stop_if_cancelled()
    assert event.error is first and str(event.error) == "chunk 2 failed"

