"""Does ``torch.compile`` keep the static SGD step's answers? (issue 16: CUDA graph or torch.compile)

The static step of ``latentinv.inversion.graphed`` runs a golden case (``tests/golden/cases.py``) once
uncompiled and once through ``torch.compile`` per backend, with ``torch.autograd.grad`` split from the
graph (torch's default) and traced into it (``trace_autograd_ops``, where this torch has it). Printed per
row: the largest difference from the uncompiled run in the latents' norms after the first update and in
the final latents, or the error. Dynamo's ``eager`` backend checks the tracing alone, ``aot_eager``
adds AOTAutograd (the graph's functional form and backward), ``inductor`` (what ``torch.compile`` runs
by default) adds the generated code. On a GPU machine ``--device cuda`` adds the
``reduce-overhead`` mode. Usage::

    python benchmarks/compile_check.py [--case sgd_ring] [--epochs 1] [--device cpu]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "golden"))
import cases  # noqa: E402

from latentinv.inversion import LatentInverter, graphed, native  # noqa: E402


def run(case, epochs, device, options):
    """The case's result arrays through the static step, compiled with ``options`` (None: not)."""
    original = cases._invert
    cases._invert = lambda op, *a, **kw: original(op, *a, **dict(kw, n_epochs=epochs, device=device))
    LatentInverter._static_step, graphed.compile_options = True, options
    try:
        return cases.result_arrays(cases.CASES[case]())
    finally:
        cases._invert, LatentInverter._static_step, graphed.compile_options = original, False, None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="sgd_ring", choices=sorted(cases.CASES))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    native.use_kernels = False          # torch's ops, as on CUDA (dynamo cannot trace the CPU kernels)
    variants = [("dynamo, eager backend", {"backend": "eager"}), ("dynamo + AOTAutograd, aot_eager backend",
                                                                 {"backend": "aot_eager"}), ("inductor", {})]
    if a.device.startswith("cuda"):
        variants.append(("inductor, mode reduce-overhead", {"mode": "reduce-overhead"}))
    traces = [False] + ([True] if hasattr(torch._dynamo.config, "trace_autograd_ops") else [])
    ref = run(a.case, a.epochs, a.device, None)
    rows = []
    for label, options in variants:
        for trace in traces:
            torch._dynamo.reset()
            row = {"variant": label, "autograd.grad": "traced" if trace else "split"}
            try:
                with torch._dynamo.config.patch(**({"trace_autograd_ops": trace} if trace else {})):
                    out = run(a.case, a.epochs, a.device, options)
                row["first_update_norm_diff"] = float(np.nanmax(np.abs(
                    out["latent_norm_history"][..., 1] - ref["latent_norm_history"][..., 1])))
                row["first_update_size"] = float(np.nanmax(np.abs(
                    ref["latent_norm_history"][..., 1] - ref["latent_norm_history"][..., 0])))
                row["final_latents_diff"] = float(np.max(np.abs(out["latents"] - ref["latents"])))
            except Exception as exc:          # a row that fails is a result
                row["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"case": a.case, "epochs": a.epochs, "device": a.device, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
