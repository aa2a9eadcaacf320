"""The SGD engine against its record: every array of ``InversionResult`` on small problems that cover
each branch (linear kernel, graph operator in line and pipelined, SGD and Adam, ring / origin / no
regularisation, normal and uniform latents with both clipping rules, noise weights, target misfit).

The record (``tests/golden/engine_golden.npz``) was written by the engine before its split into the
``latentinv.inversion`` package. Float arrays are compared to float32 round-off (another CPU's
kernels may round differently); integer and boolean ones (best start, best iteration, iterations
run, stops) exactly. ``LATENTINV_GOLDEN_EXACT=1`` compares every array bit for bit (on the machine
that wrote the record), except in the cases where starts stop early: those leave the batch, and a
smaller batch may round the decoder's floats differently (``cases.SHRINKING``).
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).with_name("golden")))
import cases  # noqa: E402

GOLDEN = np.load(Path(__file__).with_name("golden") / "engine_golden.npz")
EXACT = os.environ.get("LATENTINV_GOLDEN_EXACT") == "1"


@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_engine_matches_record(name):
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
