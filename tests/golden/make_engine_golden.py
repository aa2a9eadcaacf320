"""Write ``engine_golden.npz``: LatentInverter's results on a few small problems, the record that
``tests/test_engine_golden.py`` compares the engine against, and ``engine_golden_data.npz``, the
observed data those problems invert (``cases._data``, as this machine computes them).

The record was written by the single-module engine (``inversion.py`` before its split into a package),
so the test shows that the split left every number as it was. Rerun only on purpose (a deliberate
change of the engine's numbers), and say so in the commit: ``python tests/golden/make_engine_golden.py``.
``--data-only`` writes only the data file (it was added beside the record later, on a machine that
reproduces the record bit for bit).
"""
import sys
from pathlib import Path

import numpy as np

import cases

OUT = Path(__file__).with_name("engine_golden.npz")

if __name__ == "__main__":
    data = {cases.kind(op): cases._data(op) for op in (cases._straight(), cases._graph())}
    np.savez_compressed(cases.DATA_FILE, **data)
    print(f"wrote {cases.DATA_FILE} ({len(data)} arrays)")
    if "--data-only" in sys.argv[1:]:
        sys.exit(0)
    cases.observed = data
    arrays = {}
    for name, run in cases.CASES.items():
        for key, value in cases.result_arrays(run()).items():
            arrays[f"{name}/{key}"] = value
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({len(arrays)} arrays)")
