"""The SGD engine against its record: every array of ``InversionResult`` on small problems that cover
each branch (linear kernel, graph operator in line and pipelined, SGD and Adam, ring / origin / no
regularisation, normal and uniform latents with both clipping rules, noise weights, target misfit).

The record (``tests/golden/engine_golden.npz``) was written by the engine before its split into the
``latentinv.inversion`` package. The cases invert the record's own observed data
(``engine_golden_data.npz``, ``cases.recorded_data``), not data computed again here: the engine seeds
each survey's random streams (mini-batch orders, clipping draws) from the bits of its data, and another
CPU's torch rounds the cases' decoder (``cases._data``) by an ulp here and there, which would draw
other mini-batches from the first step on. On the record's data, float arrays are compared to float32
round-off (another CPU's kernels may round the engine's steps differently); integer and boolean ones
(best start, best iteration, iterations run, stops) exactly. ``LATENTINV_GOLDEN_EXACT=1`` compares
every array bit for bit (on the machine that wrote the record), except in the cases where starts stop
early: those leave the batch, and a smaller batch may round the decoder's floats differently
(``cases.SHRINKING``).
"""
import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).with_name("golden")))
import cases  # noqa: E402

GOLDEN = np.load(Path(__file__).with_name("golden") / "engine_golden.npz")
EXACT = os.environ.get("LATENTINV_GOLDEN_EXACT") == "1"
RECORDED = cases.recorded_data()


@functools.lru_cache(maxsize=None)
def _data_probe():
    """This machine's data (``cases._data``) against the record's: ``{kind: (values that differ, max
    |difference| in ns, this machine's data)}``; no difference where this machine's torch rounds the
    cases' decoder as the recording machine's did."""
    out = {}
    for op in (cases._straight(), cases._graph()):
        here, rec = cases._data(op), RECORDED[cases.kind(op)]
        out[cases.kind(op)] = (int(np.sum(here != rec)), float(np.max(np.abs(here - rec))), here)
    return out


def test_recorded_data_are_the_cases_data():
    """The record's data are what ``cases._data`` computes: to float32 round-off of the decoder's
    models anywhere, bit for bit on a machine that rounds as the recording machine did."""
    probe = _data_probe()
    for kind, (_, _, here) in probe.items():
        assert here.shape == RECORDED[kind].shape
        # models differ by float32 round-off (a few ulps of ~0.5); traveltimes (~10-20 ns) by far less
        np.testing.assert_allclose(here, RECORDED[kind], rtol=1e-6, atol=0, err_msg=kind)
    differ = {k: v[:2] for k, v in probe.items() if v[0]}
    if differ:
        pytest.skip("bit-for-bit part: this machine's torch rounds the cases' decoder otherwise than the "
                    "recording machine's: " + "; ".join(f"{k} data: {n} of {RECORDED[k].size} values differ, "
                                                          f"by up to {d:.2e} ns" for k, (n, d) in differ.items())
                    + " (the golden cases invert the recorded data)")


@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_engine_matches_record(name, monkeypatch):
    monkeypatch.setattr(cases, "observed", RECORDED)
    got = cases.result_arrays(cases.CASES[name]())
    want = {k.split("/", 1)[1]: GOLDEN[k] for k in GOLDEN.files if k.startswith(name + "/")}
    assert set(want) <= set(got)      # later fields (the stop reasons) are new: absent from the record
    assert not got["converged"].any() and not got["pruned"].any()
    for key, expected in want.items():
        actual = got[key]
        assert actual.shape == expected.shape, key
        if (EXACT and name not in cases.SHRINKING) or expected.dtype.kind in "biu":
            np.testing.assert_array_equal(actual, expected, err_msg=f"{name}: {key}")
        else:
            np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=1e-6, equal_nan=True,
                                       err_msg=f"{name}: {key}")
