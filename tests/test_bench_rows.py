"""benchmarks/bench_inversion.py's rows of the paper's experiment, which run only on a GPU machine, on the
CPU with a small problem: every variant runs, and each answer is compared with the first variant's."""
import copy
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "golden"))
import bench_inversion  # noqa: E402
import cases  # noqa: E402

from latentinv.inversion import LatentInverter, estimator, graphed  # noqa: E402
from latentinv.nn import fused  # noqa: E402


TORCH = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])

# the SGAN rows' tests take a generator 8 times narrower than the published one (the rows' logic does not
# depend on its width; the published one took 33 s for one test on a 2-core AMD EPYC)
NARROW = 8


@pytest.fixture
def problem():
    op = cases._straight()
    return op, cases._generator(), cases._data(op, n=1)


@pytest.fixture
def eager_fused_norms(monkeypatch):
    """The fused-norm switches' functions run as written, not compiled: these tests check the rows, and on
    the CPU each shape's compilation took seconds (40 s of the layout rows' test, 30 s of the SGAN rates').
    The compiled kernels are checked against the modules in tests/test_fused.py."""
    plain = {fn: fn for fn in (fused._norm_then_relu, fused._relu_then_norm)}
    monkeypatch.setattr(fused, "_compiled", plain)
    yield
    assert set(fused._compiled) == set(plain), "a fused norm was compiled"


def test_every_variant_runs_and_is_compared_with_the_first(problem):
    op, gen, tt = problem
    rows = []
    bench_inversion.paper_experiment_rows(
        [("eager", gen, False, "float32", None),
         ("static step, dynamo's eager backend", gen, False, "float32", {"backend": "eager"})],
        op, tt, "cpu", 2, rows, n_starts=3)
    if TORCH < (2, 4):
        # torch 2.2.0's dynamo fails inside the step (InternalTorchDynamoError, after "torch.* op returned
        # non-Tensor int ... get_num_threads"); 2.4.0's runs it (2.3 untried): the row says so, the eager one runs
        assert rows[0].get("error") is None and rows[1]["error"].startswith("InternalTorchDynamoError")
        return
    assert [r.get("error") for r in rows] == [None, None]
    eager, traced = rows
    assert eager["max_model_diff_vs_eager"] == 0.0 and eager["first_call"] == "1 epoch, capture included"
    # the traced static step gives the loop's iterates on the CPU (tests/test_graphed.py); its full data
    # are a dense product (torch.compile takes no sparse tensor), equal to float32 rounding
    assert traced["max_model_diff_vs_eager"] == 0.0 and traced["max_best_rmse_diff_vs_eager_ns"] < 1e-5
    assert traced["first_call"] == "the full run, compile included"
    assert traced["iterations"] == eager["iterations"] == 2 * LatentInverter(gen, op).fit(tt).iterations_per_epoch_
    assert graphed.compile_options is None and LatentInverter._static_step is False     # restored


def test_a_failed_reference_row_is_not_a_zero_difference(problem):
    op, gen, tt = problem
    rows = []
    bench_inversion.paper_experiment_rows(
        [("eager, an unknown precision", gen, False, "float8", None), ("eager", gen, False, "float32", None)],
        op, tt, "cpu", 1, rows, n_starts=2)
    assert "precision" in rows[0]["error"]
    assert rows[1].get("error") is None and rows[1]["max_model_diff_vs_eager"] is None


def test_the_autotuned_variant_runs_with_cudnns_autotuner_and_restores_it(problem, monkeypatch):
    op, gen, tt = problem
    seen = []
    real_invert = LatentInverter.invert
    monkeypatch.setattr(LatentInverter, "invert",
                        lambda self, X: seen.append(torch.backends.cudnn.benchmark) or real_invert(self, X))
    rows = []
    bench_inversion.paper_experiment_rows(
        [("eager", gen, False, "float32", None), ("eager, cuDNN autotuned", gen, False, "float32", None, True)],
        op, tt, "cpu", 1, rows, n_starts=2)
    assert [r.get("error") for r in rows] == [None, None]
    assert seen == [False, False, True, True]          # each variant: its first call, then the timed one
    assert torch.backends.cudnn.benchmark is False
    assert rows[1]["max_model_diff_vs_eager"] == 0.0  # no cuDNN on the CPU: the same answer


def test_the_profile_row_accounts_for_the_whole_epoch(problem):
    op, gen, tt = problem
    rows = []
    bench_inversion.profile_rows([("eager", gen, False, "float32")], op, tt, "cpu", rows, n_starts=3, top=4)
    (row,) = rows
    assert row.get("error") is None and row["clock"] == "cpu"
    assert row["iterations"] == LatentInverter(gen, op).fit(tt).iterations_per_epoch_
    shares = [e["share"] for e in row["entries"]]
    assert len(shares) == 4 and shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-9
    # each entry's share is its time over the total, and the total is the time of every entry, not only these
    assert all(abs(e["ms"] / row["total_ms"] - e["share"]) < 1e-9 for e in row["entries"])
    assert sum(e["ms"] for e in row["entries"]) < row["total_ms"]
    assert abs(row["ms_per_iteration"] * row["iterations"] - row["total_ms"]) < 1e-9


def test_the_profile_takes_a_layout_rows_whole_variant_and_its_autotuner(problem, monkeypatch):
    """--profile profiles the fastest layout row as it was timed: its 6-field variant, cuDNN's autotuner
    on during the profile (off after, also where the profile fails)."""
    op, gen, tt = problem
    seen = []
    real = bench_inversion.kernel_profile
    monkeypatch.setattr(bench_inversion, "kernel_profile",
                        lambda *a: seen.append(torch.backends.cudnn.benchmark) or real(*a))
    rows = []
    bench_inversion.profile_rows([("plain", gen, False, "float32"), ("tuned", gen, False, "float32", None, True),
                                  ("tuned, failing", gen, False, "float8", None, True)], op, tt, "cpu", rows,
                                 n_starts=2, top=3)
    assert seen == [False, True] and torch.backends.cudnn.benchmark is False
    assert [r.get("error") is None for r in rows] == [True, True, False]


def test_a_profile_that_fails_is_a_row_with_its_error(problem):
    op, gen, tt = problem
    rows = []
    bench_inversion.profile_rows([("eager, an unknown precision", gen, False, "float8")], op, tt, "cpu", rows,
                                 n_starts=2)
    assert "precision" in rows[0]["error"]


def test_gemm_rates_cover_each_size_and_arithmetic():
    rates = bench_inversion.gemm_rates("cpu", (32, 64), repeats=1)
    assert set(rates) == {"float32", "bfloat16"}          # TF32 is a CUDA arithmetic
    assert all(set(r) == {32, 64} and all(v > 0 for v in r.values()) for r in rates.values())


def test_table_case_rows_run_each_case_on_its_schedule(problem):
    op, gen, tt = problem
    uniform = cases._generator("uniform")
    rows = []
    bench_inversion.table_case_rows([("VSbrd", gen, "vae"), ("SAnnn", uniform, "gan"), ("SSbnd", uniform, "gan"),
                                     ("SAnnn", uniform, "gan", "bfloat16")],
                                    op, tt, "cpu", rows,
                                    n_surveys=2, n_starts=3, cuda_graphs=False, n_epochs=2)
    from latentinv._common import native_bfloat16
    assert [r.get("error") for r in rows[:3]] == [None] * 3
    assert rows[3]["method"].endswith("bfloat16")
    if native_bfloat16(torch.device("cpu")):       # AVX512-BF16 or AMX: the row runs
        assert rows[3].get("error") is None and rows[3]["precision"] == "bfloat16" and rows[3]["paper_case"] == "SAnnn"
    else:                                           # else a row that says why it did not
        assert "needs native bfloat16" in rows[3]["error"]
    rows = rows[:3]
    assert [r["paper_case"] for r in rows] == ["VSbrd", "SAnnn", "SSbnd"]
    assert [r["precision"] for r in rows] == ["float32"] * 3
    # Table 1's settings: SAnnn is Adam on every datum, the others SGD on mini-batches of 25 rays
    assert [(r["optimizer"], r["batch_size"]) for r in rows] == [("sgd", 25), ("adam", None), ("sgd", 25)]
    assert [r["iterations"] for r in rows] == [2 * r["iterations_per_epoch"] for r in rows]
    assert rows[1]["iterations_per_epoch"] == 1 and rows[0]["iterations_per_epoch"] == op.n_data // 25
    assert all(r["seconds"] > 0 and r["n_surveys"] == 2 and np.isfinite(r["best_data_rmse_ns"]) for r in rows)


def test_the_sgan_generator_is_the_published_layout():
    gen = bench_inversion.sgan_generator("cpu")
    assert [c.out_channels for c in gen.module.generator.upsample] == [512, 256, 128, 64, 1]
    assert gen.n_components == 15 and gen.latent_distribution == "uniform"
    x = gen.decode(np.zeros((2, 15)))
    assert x.shape == (2, 129 * 65) and np.all((x >= 0) & (x <= 1))


def test_the_sgan_variants_and_their_rates(monkeypatch, eager_fused_norms):
    """sgan_variants: copies with each switch set as its label says; sgan_rate_rows: a row per variant with
    the time per iteration of the timed call (2 s for each call here), the column's time projected from
    Table 1's schedule, the models against the first variant's, and the fastest variant returned."""
    op, _, tt = bench_inversion._linear_problem("cpu", bench_inversion.paper_decoder("cpu"))    # 129 x 65 cells
    gen = bench_inversion.sgan_generator("cpu", n_filters=NARROW)
    variants = bench_inversion.sgan_variants(gen)
    assert len({v[0] for v in variants}) == len(variants) == 8
    for label, g, precision, autotune in variants:
        net = g.module.generator
        assert (net.layout_channels_last, net.layout_fused_norm) == ("channels-last" in label, "fused" in label)
        assert precision == label.split(",")[0] and autotune == label.endswith("autotuned")
    assert not (gen.module.generator.layout_channels_last or gen.module.generator.layout_fused_norm)   # copies
    runs, seconds = [], iter([2.0, 1.0])

    def timed(fn):
        runs.append(fn())
        return next(seconds), runs[-1]

    monkeypatch.setattr(bench_inversion, "timed", timed)
    rows = []
    picked = [variants[0], variants[6]]     # float32: the default, and channels-last with the fused norms
    fastest = bench_inversion.sgan_rate_rows(picked, op, tt, "cpu", rows, n_surveys=2, n_starts=2, iterations=3,
                                             cuda_graphs=False)
    assert [r.get("error") for r in rows] == [None, None]
    assert fastest is picked[1]
    assert [r["iterations"] for r in rows] == [3, 3]          # SAnnn: one iteration per epoch
    assert [r["ms_per_iteration"] for r in rows] == [2e3 / 3, 1e3 / 3]
    assert [r["projected_column_s"] for r in rows] == [2.0 * 3000 / 3, 1.0 * 3000 / 3]
    assert rows[0]["max_model_diff_vs_first"] == 0.0
    assert rows[1]["max_model_diff_vs_first"] == float(np.max(np.abs(runs[1].models - runs[0].models)))
    assert rows[1]["max_model_diff_vs_first"] < 1e-3           # the same steps, float32 round-off apart
    assert (rows[1]["channels_last"], rows[1]["fused_norm"]) == (True, True)
    # each row's best data RMSE is its own run's least (of 2 surveys x 2 starts, which differ)
    assert [r["best_data_rmse_ns"] for r in rows] == [float(np.nanmin(run.data_rmse)) for run in runs]
    assert all(np.nanmax(run.data_rmse) > np.nanmin(run.data_rmse) for run in runs)


def test_the_fastest_sgan_variant_fits_as_well_as_the_default(monkeypatch):
    """The fastest SGAN variant (what gpu_plan.py tables hands to the reproduction) was the fastest by time
    alone: a variant whose models fit twice worse, or not at all (NaN), was picked. As for the VAE's
    layouts, it is the fastest whose best data RMSE is finite and within 5 % of the first (default)
    variant's."""
    op, _, tt = bench_inversion._linear_problem("cpu", bench_inversion.paper_decoder("cpu"))
    label, gen, precision, autotune = bench_inversion.sgan_variants(bench_inversion.sgan_generator("cpu", n_filters=NARROW))[0]
    variants = [(label, gen, precision, autotune)] + [(f"{label}, {k}", gen, precision, autotune)
                                                      for k in ("worse", "nan", "close")]

    def run(scale, seconds):
        def timed(fn):
            res = fn()
            res.data_rmse = res.data_rmse * scale
            return seconds, res
        return timed

    def fastest(scales_and_seconds):
        plan = iter(scales_and_seconds)
        monkeypatch.setattr(bench_inversion, "timed", lambda fn: run(*next(plan))(fn))
        rows = []
        picked = bench_inversion.sgan_rate_rows(variants[:len(scales_and_seconds)], op, tt, "cpu", rows,
                                                n_surveys=1, n_starts=2, iterations=1, cuda_graphs=False)
        assert all(r.get("error") is None for r in rows)
        return picked

    assert fastest([(1.0, 4.0), (2.0, 1.0), (np.nan, 0.5)]) is variants[0]
    assert fastest([(1.0, 4.0), (2.0, 1.0), (np.nan, 0.5), (1.01, 2.0)]) is variants[3]


def test_the_sgan_section_names_its_fastest_variant_for_the_reproduction(tmp_path, monkeypatch, eager_fused_norms):
    """--sgan-rates's section as the GPU runs it, eager on the CPU: its rate rows, the "sgan fastest" row
    that gpu_plan.py turns into reproduce_paper.py's options (which its parser takes), and the kernel
    tables of the default and the fastest variant, with settings the SGAN's uniform latents take."""
    import gpu_plan
    import reproduce_paper
    op, _, tt = bench_inversion._linear_problem("cpu", bench_inversion.paper_decoder("cpu"))
    variants = bench_inversion.sgan_variants(bench_inversion.sgan_generator("cpu", n_filters=NARROW))
    seconds = iter([2.0, 1.0])
    monkeypatch.setattr(bench_inversion, "timed", lambda fn: (next(seconds), fn()))
    rows = []
    bench_inversion.sgan_section([variants[0], variants[6]], op, tt, "cpu", rows, iterations=2, profile=True,
                                 cuda_graphs=False, n_surveys=1, n_starts=2)
    assert [r["case"] for r in rows] == ["sgan rate", "sgan rate", "sgan fastest", "profile", "profile"]
    assert rows[2] == dict(case="sgan fastest", method=variants[6][0], precision="float32", cudnn_autotune=True,
                           layout=["channels_last", "fused_norm"])
    assert all(r.get("error") is None for r in rows) and rows[3]["n_starts"] == 2
    assert [r["method"] for r in rows[3:]] == [f"SGAN, {variants[0][0]}", f"SGAN, {variants[6][0]}"]
    options = gpu_plan.tables_options(dict(rows=rows))
    assert options == ["--sgan-layout", "channels_last,fused_norm", "--cudnn-benchmark"]
    args = reproduce_paper.parse_args(options + ["--out", str(tmp_path / "o")])
    assert args.sgan_layout == ["channels_last", "fused_norm"] and args.cudnn_benchmark


def test_the_sgan_section_profiles_the_default_and_the_fastest_variant_wherever_it_stands(monkeypatch):
    """The kernel tables of --sgan-rates are those of the first variant (the default) and of the fastest one,
    and the "sgan fastest" row names the fastest, here the third of three (in the test above it was the second,
    so the first two variants would have passed for them)."""
    variants = bench_inversion.sgan_variants(bench_inversion.sgan_generator("cpu", n_filters=NARROW))
    picked = [variants[0], variants[1], variants[6]]
    monkeypatch.setattr(bench_inversion, "sgan_rate_rows", lambda *args, **kwargs: picked[2])
    profiled = []
    monkeypatch.setattr(bench_inversion, "profile_rows",
                        lambda chosen, *args, **kwargs: profiled.extend(v[0] for v in chosen))
    rows = []
    fastest = bench_inversion.sgan_section(picked, None, None, "cpu", rows, iterations=2, profile=True,
                                           cuda_graphs=False)
    assert fastest is picked[2]
    assert profiled == [f"SGAN, {variants[0][0]}", f"SGAN, {variants[6][0]}"]
    assert rows == [dict(case="sgan fastest", method=variants[6][0], precision="float32", cudnn_autotune=True,
                         layout=["channels_last", "fused_norm"])]


def test_later_variants_are_compared_with_an_earlier_calls_reference(problem):
    op, gen, tt = problem
    rows = []
    eager = bench_inversion.paper_experiment_rows([("eager", gen, False, "float32", None)], op, tt, "cpu", 2, rows,
                                                  n_starts=3)
    # the same run again, in a call of its own, against the first call's answer: no difference
    again = bench_inversion.paper_experiment_rows([("eager again", gen, False, "float32", None)], op, tt, "cpu", 2,
                                                  rows, n_starts=3, reference=("eager", eager))
    assert again is eager and rows[1]["max_model_diff_vs_eager"] == 0.0
    # against another answer (half the models): the difference is measured, not taken from the call's first row
    shifted = copy.deepcopy(eager)
    shifted.models = shifted.models * 0.5
    bench_inversion.paper_experiment_rows([("eager", gen, False, "float32", None)], op, tt, "cpu", 2, rows,
                                          n_starts=3, reference=("halved", shifted))
    assert rows[2]["max_model_diff_vs_eager"] == float(np.max(np.abs(eager.models - shifted.models))) > 0


def test_the_layout_rows_run_and_give_the_decoders_answer(monkeypatch, eager_fused_norms):
    import latentinv.nn.vae as vae_module
    paths = []
    real = vae_module._frozen_deconv
    monkeypatch.setattr(vae_module, "_frozen_deconv", lambda *a, **k: paths.append(tuple(k.values())) or real(*a, **k))
    decoder = bench_inversion.paper_decoder("cpu")
    op, gen, tt = bench_inversion._linear_problem("cpu", decoder)
    variants = bench_inversion.layout_variants(decoder)
    assert len({v[0] for v in variants}) == len(variants) == 13
    switches = [(g.module.layout_channels_last, g.module.layout_group_norm, g.module.layout_fold_last,
                 g.module.layout_subpixel, g.module.layout_fused_norm) for _, g, *_ in variants]
    assert switches == ([(True, False, False, False, False), (False, True, False, False, False),
                         (False, False, True, False, False), (False, False, False, True, False)]
                        + [(True, True, True, False, False)] * 3 + [(True, True, False, True, False)] * 2
                        + [(True, True, True, True, False), (False, False, False, False, True)]
                        + [(True, False, True, False, True)] * 2)
    assert [v[3] for v in variants] == (["float32"] * 6 + ["bfloat16", "float32", "bfloat16", "float32"]
                                        + ["float32", "float32", "bfloat16"])
    assert [bool(v[5:] and v[5]) for v in variants] == [False] * 5 + [True] * 5 + [False, True, True]   # cuDNN's autotuner
    assert not (decoder.layout_channels_last or decoder.layout_group_norm or decoder.layout_fold_last
                or decoder.layout_subpixel or decoder.layout_fused_norm)        # copies
    rows = []
    eager = bench_inversion.paper_experiment_rows([("eager", gen, False, "float32", None)], op, tt, "cpu", 1,
                                                  rows, n_starts=2)
    # on the CPU: no CUDA graph, and the CPU's own frozen path off, so that the layout path runs
    cpu_variants = []
    for label, g, _, precision, *_ in variants:
        g.module.fast_frozen_path = False
        cpu_variants.append((label, g, False, precision, None))
    bench_inversion.paper_experiment_rows(cpu_variants, op, tt, "cpu", 1, rows, n_starts=2,
                                          reference=("eager", eager))
    # a CPU without native bfloat16 (AVX2 only): the bfloat16 rows say why they did not run (emulated, they
    # took 25 s here, and moved by up to 0.055 and 0.14 %)
    native = estimator._native_bfloat16(torch.device("cpu"))
    assert [r.get("error") for r in rows if native or ", bfloat16," not in r["method"]] == [None] * (14 if native else 11)
    assert all("needs native bfloat16" in r["error"] for r in rows if not native and ", bfloat16," in r["method"])
    rows = [r for r in rows if r.get("error") is None]
    assert set(paths) == {(False, True, False, False, False), (True, False, False, False, False),
                          (False, False, True, False, False), (True, True, True, False, False),
                          (False, False, False, True, False), (True, True, False, True, False),
                          (True, True, True, True, False), (False, False, False, False, True),
                          (False, True, True, False, True)}
    # 25 SGD steps from the same starts: float32 round-off of another order grows along the way (the decoders
    # agree at one point: tests/test_nn.py), so the answers are near, and their fit nearer. bfloat16 keeps
    # 8 bits: its rows moved by up to 0.055 and 0.14 % emulated on an AVX2 CPU (float32's by 0.004, 0.04 %)
    for r in rows[1:]:
        bf16 = ", bfloat16," in r["method"]
        assert r["max_model_diff_vs_eager"] < (1e-1 if bf16 else 5e-2), r["method"]
        assert abs(r["best_data_rmse_ns"] / rows[0]["best_data_rmse_ns"] - 1) < (5e-3 if bf16 else 1e-3), r["method"]


def test_the_fused_layout_rows_are_the_compiled_norms_and_the_earlier_fastest():
    decoder = bench_inversion.paper_decoder("cpu")
    every, fused = bench_inversion.layout_variants(decoder), bench_inversion.layout_variants(decoder, "fused")
    assert [v[0] for v in fused] == [every[6][0]] + [v[0] for v in every[-3:]]
    assert [v[1].module.layout_fused_norm for v in fused] == [False, True, True, True]
    with pytest.raises(ValueError, match="which must be 'all' or 'fused'"):
        bench_inversion.layout_variants(decoder, "some")


def test_the_profile_takes_the_fastest_layout_row():
    variants = [("a", None, True, "float32", None), ("b", None, True, "float32", None, True),
                ("c", None, True, "bfloat16", None)]
    rows = [dict(method="LatentInverter (a)", seconds=3.0, best_data_rmse_ns=0.030),
            dict(method="LatentInverter (b)", seconds=2.5, best_data_rmse_ns=0.031),
            dict(method="LatentInverter (c)", error="RuntimeError: capture failed"),
            dict(method="LatentInverter (other)", seconds=0.1, best_data_rmse_ns=0.030)]   # not a layout row
    assert bench_inversion.fastest_variant(variants, rows) is variants[1]
    assert bench_inversion.fastest_variant(variants, rows[2:]) is None
    # a layout whose answer fits worse than the eager row's by more than 5 % is not the one profiled
    assert bench_inversion.fastest_variant(variants, rows, reference_rmse=0.030) is variants[1]
    assert bench_inversion.fastest_variant(variants, rows, reference_rmse=0.029) is variants[0]
    assert bench_inversion.fastest_variant(variants, rows, reference_rmse=0.020) is None


def test_the_rows_numbers_are_those_of_the_timed_calls(problem, monkeypatch):
    """Every call timed at 2 s: the paper experiment's time per start-iteration is 2e3 ms / (starts x
    iterations), its best RMSE the least of its run's, its RMSE difference the largest over every survey and
    start; a table case's best RMSE is the least of its own run's; a GEMM rate is 3 products of 2 n^3 flops."""
    op, gen, tt = problem
    runs = []

    def timed(fn):
        runs.append(fn())
        return 2.0, runs[-1]

    monkeypatch.setattr(bench_inversion, "timed", timed)
    rows = []
    eager = bench_inversion.paper_experiment_rows([("eager", gen, False, "float32", None)], op, tt, "cpu", 2, rows,
                                                  n_starts=3)
    row = rows[0]
    assert row["seconds"] == 2.0 and row["per_start_iteration_ms"] == pytest.approx(2e3 / (3 * row["iterations"]))
    assert row["best_data_rmse_ns"] == float(np.min(eager.data_rmse)) < float(np.max(eager.data_rmse))
    other = copy.deepcopy(eager)
    other.data_rmse = np.array(eager.data_rmse, dtype=np.float64)
    other.data_rmse[:, -1] += 0.5                                   # the last start only
    bench_inversion.paper_experiment_rows([("eager", gen, False, "float32", None)], op, tt, "cpu", 2, rows,
                                          n_starts=3, reference=("other", other))
    assert rows[1]["max_best_rmse_diff_vs_eager_ns"] == pytest.approx(0.5, abs=1e-6)
    rows = []
    bench_inversion.table_case_rows([("VSbrd", gen, "vae")], op, tt, "cpu", rows, n_surveys=2, n_starts=3,
                                    cuda_graphs=False, n_epochs=1)
    rm = runs[-1].data_rmse
    assert rows[0]["seconds"] == 2.0 and rows[0]["best_data_rmse_ns"] == float(np.nanmin(rm)) < float(np.nanmax(rm))
    rates = bench_inversion.gemm_rates("cpu", (32,), repeats=1)
    assert rates["float32"][32] == rates["bfloat16"][32] == pytest.approx(3 * 2 * 32**3 / 2.0 / 1e9, rel=1e-12)



def test_the_table_keeps_its_columns_with_long_names(capsys):
    rows = [dict(case="linear", method="eager", device="cpu", n_starts=100, iterations=3000, seconds=10.5,
                 per_start_iteration_ms=0.035),
            dict(case="linear, the paper's whole experiment", device="cuda", n_starts=100, iterations=3000,
                 method="CUDA graph, bfloat16, channels-last, cuDNN autotuned, one capture per epoch",
                 seconds=3.71, per_start_iteration_ms=0.0124, ratio=2.8)]
    bench_inversion.print_table(rows)
    lines = capsys.readouterr().out.splitlines()
    head, table = lines[0], lines[2:4]
    ends = {m.group(): m.end() for m in re.finditer(r"\S+", head)}       # right-aligned number columns
    for row, line in zip(rows, table):
        assert line.startswith(row["case"]) and row["method"] in line
        *_, starts, iters, seconds, per_it = re.findall(r"\S+", line[:ends["ms/start-it"]])
        assert line.index(row["method"]) == head.index("method") and line.index(row["method"]) > len(row["case"])
        for label, text in [("starts", starts), ("iters", iters), ("s", seconds), ("ms/start-it", per_it)]:
            assert line[:ends[label]].endswith(text), (label, line)
        assert (starts, iters, seconds, per_it) == ("100", "3000", f"{row['seconds']:.2f}",
                                                     f"{row['per_start_iteration_ms']:.3f}")


def test_the_record_is_written_whole_or_not_at_all(tmp_path):
    """The record was written in place after each row: a write stopped midway (a deadline's kill; here a
    value JSON cannot hold) left a truncated file that gpu_plan.py and gpu_results.py could not read. The
    earlier record stays whole, and nothing is left beside it."""
    import json

    path = tmp_path / "bench_inversion.json"
    bench_inversion.write_record(path, dict(rows=[dict(case="a", seconds=1.0)]))
    with pytest.raises(TypeError):
        bench_inversion.write_record(path, dict(rows=[dict(case="a", seconds=1.0), dict(case="b", seconds=object())]))
    assert json.loads(path.read_text()) == dict(rows=[dict(case="a", seconds=1.0)])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_cuda_only_options_on_a_cpu_say_that_they_do_not_run(tmp_path, capsys, monkeypatch):
    """--layouts, --sgan-rates (and the other CUDA rows' options) on a machine without CUDA wrote an empty
    table and exit 0 without a word; the output says that they do not run here."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bench_inversion.main(["--quick", "--skip-cpu", "--skip-nonlinear", "--layouts", "fused", "--sgan-rates",
                          "--output", str(tmp_path / "b.json")])
    assert "[note] --layouts, --sgan-rates: rows of CUDA only; no CUDA here, so none of them run" in \
        capsys.readouterr().out
