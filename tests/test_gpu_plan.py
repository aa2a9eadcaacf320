"""benchmarks/gpu_plan.py: the choices gpu_checks.sh makes unattended on a lent GPU."""
import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_plan  # noqa: E402


def row(variant, precision, ms, graphs=False, diff=0.0, ablation=False, error=None):
    if error:
        return dict(variant=variant, precision=precision, cuda_graphs=graphs, ablation=ablation, error=error)
    return dict(variant=variant, precision=precision, cuda_graphs=graphs, ablation=ablation,
                ms_per_iteration=ms, max_window_rel_diff_vs_float32=diff)


def test_training_takes_the_fastest_row_that_keeps_the_curve():
    rows = [row("float32", "float32", 6.0), row("bfloat16", "bfloat16", 4.0, diff=0.012),
            row("float32, CUDA graph", "float32", 3.5, graphs=True, diff=1e-6),
            row("bfloat16, CUDA graph", "bfloat16", 2.5, graphs=True, diff=0.05),     # curve not kept
            row("ablation", "float32", 1.0, ablation=True)]                           # never chosen
    assert gpu_plan.choose_training(dict(rows=rows)) == ("float32", True, 3.5)
    assert gpu_plan.choose_training(dict(rows=rows), max_curve_diff=0.06) == ("bfloat16", True, 2.5)


def test_training_skips_failed_rows_and_falls_back_to_float32():
    rows = [row("float32", "float32", 6.0), row("bfloat16", "bfloat16", 4.0, diff=float("nan")),
            row("float32, CUDA graph", "float32", None, graphs=True, error="RuntimeError: capture")]
    assert gpu_plan.choose_training(dict(rows=rows)) == ("float32", False, 6.0)
    with pytest.raises(ValueError, match="float32 row did not run"):
        gpu_plan.choose_training(dict(rows=[row("float32", "float32", None, error="OOM"), rows[1]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, None])
def test_training_skips_rows_without_a_finite_time(bad):
    """A row whose time per iteration is NaN (or infinite, zero, missing) did not run: it was chosen when it
    came first (min over NaN keys keeps it) and its NaN then stopped `gpu_plan.py iterations --ms nan`."""
    rows = [row("bfloat16, CUDA graph", "bfloat16", bad, graphs=True, diff=0.01), row("float32", "float32", 6.0),
            row("bfloat16", "bfloat16", 4.0, diff=0.01)]
    assert gpu_plan.choose_training(dict(rows=rows)) == ("bfloat16", False, 4.0)
    with pytest.raises(ValueError, match="float32 row did not run"):
        gpu_plan.choose_training(dict(rows=[row("float32", "float32", bad), rows[2]]))


def test_training_from_the_command_line(tmp_path, capsys):
    record = tmp_path / "bench_training.json"
    record.write_text(json.dumps(dict(rows=[row("float32", "float32", 6.0),
                                            row("bfloat16", "bfloat16", 4.25, diff=0.01)])))
    assert gpu_plan.main(["training", str(record)]) == 0
    assert capsys.readouterr().out.split() == ["bfloat16", "-", "4.2500"]


def test_iterations_of_the_paper_schedule():
    # 3 ms an iteration with the 15 % margin: 1e5 iterations take exactly 345 s
    assert gpu_plan.plan_iterations(3.0, 345.0) == 100_000
    assert gpu_plan.plan_iterations(3.0, 344.0) == 99_000
    assert gpu_plan.plan_iterations(3.0, 10_000.0) == 100_000        # never beyond the target
    assert gpu_plan.plan_iterations(3.0, 100.0, done=100_000) == 0    # already there
    assert gpu_plan.plan_iterations(3.0, 2.0) == 0                    # fewer than the minimum fit
    # the rest of a schedule that fits exactly is asked for whole, not rounded down to the granularity
    assert gpu_plan.plan_iterations(1.0, 1.0, done=1, target=1001, granularity=100, safety=1.0) == 1001
    with pytest.raises(ValueError, match="positive"):
        gpu_plan.plan_iterations(0.0, 100.0)


@settings(max_examples=200, deadline=None)
@given(ms=st.floats(0.05, 500.0), seconds=st.floats(-10.0, 5_000.0), done=st.integers(0, 120_000),
       target=st.integers(1_000, 150_000), granularity=st.sampled_from([1, 100, 1000]),
       minimum=st.integers(1, 5_000))
def test_iterations_fit_the_time_and_use_it(ms, seconds, done, target, granularity, minimum):
    n = gpu_plan.plan_iterations(ms, seconds, done=done, target=target, granularity=granularity,
                                 minimum=minimum)
    cost = lambda total: (total - done) * ms * 1e-3 * 1.15        # seconds to train to ``total``
    fits = lambda total: cost(total) <= seconds * (1 + 1e-9) + 1e-12
    # the totals worth asking for: the target, or multiples of granularity at least minimum more
    smallest = min(target, -(-(done + minimum) // granularity) * granularity)
    if n == 0:
        assert done >= target or not fits(smallest)
        return
    assert done < n <= target and (n == target or (n % granularity == 0 and n - done >= minimum))
    assert fits(n)                                            # ends in time
    assert n == target or not fits(min(target, n + granularity))    # and uses the time


def test_check_out_accepts_the_call_layout(tmp_path):
    for name in ("log.txt", "tests.txt", "prior.txt", "reproduce.txt", "nonlinear.txt", "results.tar",
                 "prior.tgz"):
        (tmp_path / name).write_bytes(b"x" * 100)
    assert gpu_plan.out_problems(tmp_path) == []
    assert gpu_plan.main(["check-out", str(tmp_path)]) == 0


def test_check_out_names_what_would_be_lost(tmp_path, capsys):
    for k in range(8):
        (tmp_path / f"f{k}.txt").write_text("x")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "ckpt.bin").write_text("x")                      # 3 folders down: the 9th file, too deep
    with open(tmp_path / "big.tar", "wb") as f:                # 17 MiB, sparse
        f.truncate(17 * 2**20)
    (tmp_path / "bad name.txt").write_text("x")
    problems = gpu_plan.out_problems(tmp_path)
    text = "\n".join(problems)
    assert "a/b/c/ckpt.bin: more than 2 folders down" in text
    assert "big.tar: 17.0 MiB, over 16 MiB" in text
    assert "bad name.txt: a name with characters" in text
    assert "11 files, over 8" in text
    assert gpu_plan.main(["check-out", str(tmp_path)]) == 1
    assert capsys.readouterr().out.count("OUT will not come back whole") == len(problems)


def test_the_limits_themselves_are_within(tmp_path):
    """At its limits, not beyond: a row exactly at the curve limit keeps the curve, a schedule whose time
    fits exactly the minimum is asked for, and $OUT at exactly 8 files, two folders down, 16 MiB a file and
    64 MiB in all comes back whole."""
    rows = [row("float32", "float32", 6.0), row("bfloat16", "bfloat16", 4.0, diff=gpu_plan.MAX_CURVE_DIFF)]
    assert gpu_plan.choose_training(dict(rows=rows)) == ("bfloat16", False, 4.0)
    assert gpu_plan.plan_iterations(1.0, 1.15, minimum=1000, granularity=1000) == 1000
    (tmp_path / "a" / "b").mkdir(parents=True)
    for k, name in enumerate(("a/b/big0.bin", "big1.bin", "big2.bin", "big3.bin", "x.txt", "y.txt", "z.txt",
                              "a/w.txt")):
        with open(tmp_path / name, "wb") as f:                 # sparse
            f.truncate(16 * 2**20 if k < 4 else 0)
    assert gpu_plan.out_problems(tmp_path) == []


def test_tables_options_follow_the_fastest_rows(tmp_path, capsys):
    """The reproduction's options: each network's fastest row as reproduce_paper.py options, accepted
    by its parser; nothing for an absent row; the autotuner where either row used it."""
    vae = dict(case="vae fastest", method="x", precision="bfloat16", cudnn_autotune=False,
               layout=["channels_last", "fold_last", "fused_norm"])
    sgan = dict(case="sgan fastest", method="y", precision="float32", cudnn_autotune=True, layout=["fused_norm"])
    other = dict(case="linear paper experiment", precision="bfloat16", layout=["group_norm"])   # not a choice
    assert gpu_plan.tables_options(dict(rows=[other, vae, sgan])) == [
        "--precision", "bfloat16", "--layout", "channels_last,fold_last,fused_norm", "--sgan-layout", "fused_norm",
        "--cudnn-benchmark"]
    assert gpu_plan.tables_options(dict(rows=[other])) == []
    assert gpu_plan.tables_options(dict(rows=[dict(sgan, layout=[], cudnn_autotune=False)])) == []
    # a hand-edited record: one name as a string (it was spelt "f,u,s,e,d,_,n,o,r,m"), no layout key
    assert gpu_plan.tables_options(dict(rows=[dict(sgan, layout="fused_norm")])) == [
        "--sgan-layout", "fused_norm", "--cudnn-benchmark"]
    assert gpu_plan.tables_options(dict(rows=[dict(case="vae fastest", precision="bfloat16")])) == [
        "--precision", "bfloat16"]
    record = tmp_path / "bench_inversion.json"
    record.write_text(json.dumps(dict(rows=[vae, sgan])))
    assert gpu_plan.main(["tables", str(record)]) == 0
    printed = capsys.readouterr().out.split()
    sys.path.insert(0, str(Path(gpu_plan.__file__).parent))
    import reproduce_paper
    args = reproduce_paper.parse_args(printed + ["--out", str(tmp_path / "o")])
    assert (args.precision, args.layout, args.sgan_precision, args.sgan_layout, args.cudnn_benchmark) == (
        "bfloat16", ["channels_last", "fold_last", "fused_norm"], "float32", ["fused_norm"], True)
