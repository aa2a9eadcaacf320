"""Write ``engine_golden.npz``: LatentInverter's results on a few small problems, the record that
``tests/test_engine_golden.py`` compares the engine against.

The file was written by the single-module engine (``inversion.py`` before its split into a package),
so the test shows that the split left every number as it was. Rerun only on purpose (a deliberate
change of the engine's numbers), and say so in the commit: ``python tests/golden/make_engine_golden.py``.
"""
from pathlib import Path

import numpy as np

import cases

OUT = Path(__file__).with_name("engine_golden.npz")

if __name__ == "__main__":
    arrays = {}
    for name, run in cases.CASES.items():
        for key, value in cases.result_arrays(run()).items():
            arrays[f"{name}/{key}"] = value
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({len(arrays)} arrays)")
