"""benchmarks/merge_reproductions.py: runs of one experiment over consecutive published start ranges joined
into one record, every cell as one run over all the starts computes it; and the records it refuses.

The fixture ``tests/data/reproduce_paper_sgan_5_starts.json`` is the record of a real CPU run (SAnnn and
SSbnd, 5 published starts, 3000 iterations; only ``--out`` renamed): its summaries were written by
``reproduce_paper.summarize``, so a join of its slices that gives them back is checked against the script's
own numbers, not against the merge's code.
"""
import copy
import importlib.util
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
FIXTURE = Path(__file__).resolve().parent / "data" / "reproduce_paper_sgan_5_starts.json"


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


merge = _load("merge_reproductions")
report = _load("paper_report")
SUMMARIES = ("accepted", "non_finite", "mean_rmse", "best_rmse")
UNUSED = -1.0      # a part's model_rmse of a truth whose joined selection is in another part: must not be used


def full_record():
    return json.loads(FIXTURE.read_text())


def by_hand(data, thresholds):
    """A cell's Table 3-4 numbers written out (not through paper_report.start_summary)."""
    data = np.asarray(data, dtype=np.float64)
    finite = [row[np.isfinite(row)] for row in data]      # none in a part of one NaN start: NaN, as np.nanmean
    return dict(accepted=[int(np.sum(row <= t)) for row, t in zip(data, thresholds)],
                non_finite=[int(np.sum(~np.isfinite(row))) for row in data],
                mean_rmse=[float(np.mean(f)) if f.size else float("nan") for f in finite],
                best_rmse=[float(np.min(f)) if f.size else float("nan") for f in finite])


def thresholds_of(record, key):
    thr = np.asarray(record["table2"]["threshold"], dtype=np.float64)
    return thr + 0.25 if key.endswith("_noise") else thr


def part(record, a, b, total_s=None):
    """The record a run of the published starts [a, b) of ``record``'s experiment would have written."""
    q = copy.deepcopy(record)
    n = b - a
    q["args"].update(first_start=a, n_starts=n)
    q["n_starts"] = n
    q["command"] = record["command"] + (f" --first-start {a}" if a else "")
    if q.get("sgan_starts"):
        q["sgan_starts"] = q["sgan_starts"].replace(
            merge.SGAN_RANGE.search(q["sgan_starts"]).group(0),
            f"zinitSGAN500.npy[{f':{n}' if not a else f'{a}:{b}'}]")
    q["total_s"] = record["total_s"] * n / record["n_starts"] if total_s is None else total_s
    for key, cell in q["cases"].items():
        full = np.asarray(record["cases"][key]["data_rmse"], dtype=np.float64)
        data = full[:, a:b]
        cell["data_rmse"] = data.tolist()
        cell.update(by_hand(data, thresholds_of(record, key)))
        best = np.argmin(np.where(np.isfinite(full), full, np.inf), axis=1)
        cell["model_rmse"] = [m if a <= k < b else UNUSED
                              for m, k in zip(record["cases"][key]["model_rmse"], best)]
        cell["time_s"] = record["cases"][key]["time_s"] * n / record["n_starts"]
    return q


def write(tmp_path, name, record):
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "reproduce_paper.json"
    path.write_text(json.dumps(record, indent=1))
    return path


def with_noisy_vsbrd(record):
    """The fixture with a VSbrd column and its noisy one, whose starts straddle the thresholds: some exactly at
    the clean threshold, some between it and + 0.25 ns, a NaN start, so every rule of Tables 3-4 is used."""
    r = copy.deepcopy(record)
    thr = np.asarray(r["table2"]["threshold"])
    rng = np.random.default_rng(0)
    cases, columns = {}, []
    for key, shift in (("VSbrd", 0.0), ("VSbrd_noise", 0.25)):
        data = thr[:, None] + rng.choice([-0.3, -0.1, 0.0, 0.1, 0.2, 0.4], size=(6, 5)) + shift * rng.random((6, 5))
        data[:, 2] = thr                    # a tie at the clean threshold: accepted
        data[1, 3] = np.nan                 # a start without a finite misfit
        cell = dict(data_rmse=data.tolist(), **by_hand(data, thresholds_of(r, key)),
                    model_rmse=rng.random(6).tolist(), time_s=10.0, iterations=3000,
                    settings=dict(n_epochs=120, lr=0.001), cuda_graphs=False)
        cases[key] = cell
        columns.append(["VSbrd", key.endswith("_noise")])
    r["cases"].update(cases)
    r["case_columns"] += columns
    return r


@pytest.mark.parametrize("cuts", [c for k in range(1, 5) for c in itertools.combinations(range(1, 5), k)],
                         ids=lambda c: "-".join(map(str, c)))
def test_every_split_of_the_five_starts_joins_back_to_the_single_run(tmp_path, cuts):
    """Every split of the 5 starts into consecutive ranges, given in reverse order, joins back to the 5-start
    run's own numbers, exactly (accepted, non-finite, mean, best, and the selected model's RMSE)."""
    for original in (full_record(), with_noisy_vsbrd(full_record())):
        bounds = [0, *cuts, 5]
        parts = [part(original, a, b) for a, b in zip(bounds, bounds[1:])]
        paths = [write(tmp_path, f"{original['case_columns'][-1][0]}{a}", p) for a, p in zip(bounds, parts)]
        joined = merge.merge(parts[::-1], paths[::-1])
        assert joined["n_starts"] == joined["args"]["n_starts"] == 5 and joined["args"]["first_start"] == 0
        assert sorted(joined["cases"]) == sorted(original["cases"])
        for key, cell in original["cases"].items():
            got = joined["cases"][key]
            assert np.array_equal(got["data_rmse"], cell["data_rmse"], equal_nan=True)
            for field in SUMMARIES + ("model_rmse",):
                assert np.array_equal(got[field], cell[field], equal_nan=True), (key, field)
            assert UNUSED not in got["model_rmse"]
            assert got["time_s"] == pytest.approx(cell["time_s"], rel=1e-12)
        assert joined["sgan_starts"] == original["sgan_starts"]
        assert joined["differences"] == report.differences(original)


def test_the_noisy_column_is_judged_against_the_threshold_plus_a_quarter_nanosecond():
    """As reproduce_paper.py's thresholds[True]: Table 2's threshold + 0.25 ns; a start at the threshold counts."""
    r = with_noisy_vsbrd(full_record())
    thr = np.asarray(r["table2"]["threshold"])
    assert np.array_equal(merge.case_thresholds(r, True), thr + 0.25)
    assert np.array_equal(merge.case_thresholds(r, False), thr)
    clean, noisy = (np.asarray(r["cases"][k]["data_rmse"]) for k in ("VSbrd", "VSbrd_noise"))
    assert r["cases"]["VSbrd"]["accepted"] == np.sum(clean <= thr[:, None], axis=1).tolist()
    assert r["cases"]["VSbrd_noise"]["accepted"] != np.sum(noisy <= thr[:, None], axis=1).tolist()


def test_the_fixture_is_the_runs_own_numbers():
    """The check above is against reproduce_paper.summarize's numbers: the fixture's cells follow from its data."""
    r = full_record()
    for key, cell in r["cases"].items():
        assert by_hand(cell["data_rmse"], thresholds_of(r, key)) == {f: cell[f] for f in SUMMARIES}
        assert report.start_summary(cell["data_rmse"], thresholds_of(r, key)) == {
            f: cell[f] for f in ("data_rmse",) + SUMMARIES}


def test_the_command_line_writes_the_joined_record_and_its_report(tmp_path, capsys):
    """A later run's range [2, 5) beside [5, 8): the report names zinitVAE500[2:8], 6 starts, both commands,
    the summed times; the first run's figures are copied with a note that they show its starts only."""
    original = full_record()
    original["args"]["first_start"] = 0
    shifted = [part(original, 0, 3, total_s=60.0), part(original, 3, 5, total_s=120.0)]
    for p, (a, n) in zip(shifted, ((2, 3), (5, 3))):
        p["args"].update(first_start=a, n_starts=n)
        p["n_starts"] = n
        p["sgan_starts"] = p["sgan_starts"].replace(merge.SGAN_RANGE.search(p["sgan_starts"]).group(0),
                                                    f"zinitSGAN500.npy[{a}:{a + n}]")
        for cell in p["cases"].values():      # 3 starts each: pad the second with a copy of a start
            d = np.asarray(cell["data_rmse"])
            d = d if d.shape[1] == n else np.concatenate([d, d[:, :1]], axis=1)
            cell["data_rmse"] = d.tolist()
            cell.update(by_hand(d, thresholds_of(original, "x")))
    a, b = write(tmp_path, "a", shifted[0]), write(tmp_path, "b", shifted[1])
    for name in original["figures"]:
        (a.parent / name).write_bytes(b"png")
    out = tmp_path / "joined"
    merge.main([str(b), str(a), "--out", str(out)])
    joined = json.loads((out / "reproduce_paper.json").read_text())
    md = (out / "reproduction.md").read_text()
    assert joined["n_starts"] == 6 and joined["args"]["first_start"] == 2 and joined["args"]["out"] == str(out)
    assert "the published initial latents zinitVAE500[2:8]" in md
    assert "zinitSGAN500.npy[2:8]" in joined["sgan_starts"] and "zinitSGAN500.npy[2:8]" in md
    assert "6 starts per truth" in md and "accepted of 6 starts" in md
    assert joined["total_s"] == 180.0 and "Total time 3.0 min" in md
    assert joined["command"].startswith(shifted[0]["command"] + " ; " + shifted[1]["command"] + " ; ")
    assert "merge_reproductions.py" in joined["command"].split(" ; ")[-1]
    assert [r["first_start"] for r in joined["merged_from"]] == [2, 5]
    assert "- starts [2, 5): `" in md and "- starts [5, 8): `" in md
    assert joined["figures"] == original["figures"] and all((out / f).is_file() for f in original["figures"])
    assert "Figs. 8 and 9 show that run's 3 starts only, not the joined 6" in md
    assert joined["differences"] == report.differences(report._from_json(copy.deepcopy(joined)))
    assert "[merge] 2 runs" in capsys.readouterr().out


def test_a_joined_record_joins_again_with_the_next_range(tmp_path):
    """[0, 2) and [2, 3) joined, then joined with [3, 5): the 5-start run's numbers, and the three runs listed."""
    original = full_record()
    a, b, c = (write(tmp_path, n, part(original, *r)) for n, r in (("a", (0, 2)), ("b", (2, 3)), ("c", (3, 5))))
    merge.main([str(a), str(b), "--out", str(tmp_path / "ab")])
    joined = merge.main([str(c), str(tmp_path / "ab" / "reproduce_paper.json"), "--out", str(tmp_path / "abc")])
    for key, cell in original["cases"].items():
        for field in SUMMARIES + ("model_rmse",):
            assert joined["cases"][key][field] == cell[field], (key, field)
    assert [(r["first_start"], r["n_starts"]) for r in joined["merged_from"]] == [(0, 2), (2, 1), (3, 2)]
    assert [r["record"] for r in joined["merged_from"]] == [str(a), str(b), str(c)]
    assert joined["command"].count("merge_reproductions.py") == 2 and joined["command"].count(" ; ") == 4
    assert joined["total_s"] == pytest.approx(original["total_s"], rel=1e-12)


def test_no_figures_says_so(tmp_path):
    original = full_record()
    paths = [write(tmp_path, n, part(original, a, b)) for n, (a, b) in (("a", (0, 2)), ("b", (2, 5)))]
    merge.main([*map(str, paths), "--out", str(tmp_path / "j"), "--no-figures"])
    joined = json.loads((tmp_path / "j" / "reproduce_paper.json").read_text())
    assert joined["figures"] == [] and "No figures" in joined["figures_note"]


def _nonlinear(record, time_s=5.0):
    r = copy.deepcopy(record)
    r["nonlinear"] = dict(threshold=[1.0] * 6, n_starts=1, starts="zinitVAE500.npy[:1]", lam=1.0,
                          best_rmse={"false": [0.5] * 6, "true": [0.7] * 6}, accepted={"false": [1] * 6,
                                                                                    "true": [1] * 6},
                          model_rmse={"false": [0.1] * 6, "true": [0.1] * 6}, time_s=time_s, iterations=750)
    r["args"].update(no_nonlinear=False, nonlinear_starts=1)
    return r


def test_the_nonlinear_case_of_one_run_is_carried_over_with_its_arguments(tmp_path):
    """The nonlinear case held by one record (the others run with --no-nonlinear): kept as it is, and its
    arguments are not compared."""
    original = full_record()
    first, second = _nonlinear(part(original, 0, 2)), part(original, 2, 5)
    paths = [write(tmp_path, "a", first), write(tmp_path, "b", second)]
    joined = merge.merge([second, first], paths[::-1])
    assert joined["nonlinear"] == first["nonlinear"]
    assert joined["args"]["no_nonlinear"] is False and joined["args"]["nonlinear_starts"] == 1
    md = report.markdown_report(report._from_json(copy.deepcopy(joined)))
    assert "## Fig. 10" in md


def _refusals():
    """(name, edit of the records [0, 2) and [2, 5), what the message must name)."""
    def setting(rs):
        rs[1]["cases"]["SAnnn"]["settings"]["lr"] = 0.02

    def arg(rs):
        rs[1]["args"]["device"] = "cuda"

    def threshold(rs):
        rs[1]["table2"]["threshold"][2] += 1e-12

    def truths(rs):
        rs[1]["truth_names"][3] = "mv9"

    def cases(rs):
        del rs[1]["cases"]["SSbnd"]

    def incomplete(rs):
        rs[1]["complete"] = False

    def drawn(rs):
        for r in rs:
            r["args"]["published_starts"] = False

    def overlap(rs):
        rs[1]["args"]["first_start"] = 1
        rs[1]["sgan_starts"] = rs[1]["sgan_starts"].replace("[2:5]", "[1:4]")

    def gap(rs):
        rs[1]["args"]["first_start"] = 3
        rs[1]["sgan_starts"] = rs[1]["sgan_starts"].replace("[2:5]", "[3:6]")

    def same_range(rs):
        rs[1].update(copy.deepcopy(rs[0]))

    def nonlinear_twice(rs):
        rs[0].update(_nonlinear(rs[0]))
        rs[1].update(_nonlinear(rs[1]))

    def tampered(rs):
        rs[1]["cases"]["SSbnd"]["accepted"][0] = 3

    def sgan_text(rs):
        rs[1]["sgan_starts"] = rs[1]["sgan_starts"].replace("used as published", "mapped")

    def sgan_range(rs):
        rs[1]["sgan_starts"] = rs[1]["sgan_starts"].replace("[2:5]", "[:3]")

    def prior(rs):
        rs[1]["prior"]["description"] = "another prior"

    def iterations(rs):
        rs[1]["cases"]["SAnnn"]["iterations"] = 2000

    def short_row(rs):
        rs[1]["cases"]["SAnnn"]["data_rmse"][0].pop()

    def first_start_true(rs):           # JSON true is a Python int: it passed as start 1
        rs[1]["args"]["first_start"] = True

    def no_starts(rs):                  # it was numpy's ValueError traceback (a min of nothing)
        rs[1]["n_starts"] = rs[1]["args"]["n_starts"] = 0
        for cell in rs[1]["cases"].values():
            cell["data_rmse"] = [[] for _ in cell["data_rmse"]]

    return [("different settings", setting, "'cases.SAnnn.settings'"), ("different args", arg, "'args.device'"),
            ("different thresholds", threshold, "'table2'"), ("different truths", truths, "'truth_names'"),
            ("different cases", cases, "'cases'"), ("incomplete", incomplete, "'complete'"),
            ("drawn starts", drawn, "'args.published_starts'"), ("overlap", overlap, "overlap"),
            ("gap", gap, "gap [2, 3)"), ("the same range twice", same_range, "overlap"),
            ("nonlinear twice", nonlinear_twice, "'nonlinear'"), ("tampered summary", tampered,
                                                                   "'cases.SSbnd.accepted'"),
            ("different sgan starts", sgan_text, "'sgan_starts'"), ("wrong sgan range", sgan_range, "'sgan_starts'"),
            ("different prior", prior, "'prior.description'"),
            ("different iterations", iterations, "'cases.SAnnn.iterations'"),
            ("a start missing", short_row, "'cases.SAnnn.data_rmse'"),
            ("first_start true", first_start_true, "'args.first_start' is True"),
            ("no starts", no_starts, "'n_starts' is 0")]


@pytest.mark.parametrize("name, edit, field", _refusals(), ids=[r[0] for r in _refusals()])
def test_records_of_another_experiment_or_range_are_refused_naming_the_file_and_the_field(
        tmp_path, capsys, name, edit, field):
    original = full_record()
    records = [part(original, 0, 2), part(original, 2, 5)]
    edit(records)
    paths = [write(tmp_path, n, r) for n, r in zip("ab", records)]
    with pytest.raises(SystemExit) as exc:
        merge.main([str(paths[0]), str(paths[1]), "--out", str(tmp_path / "joined")])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert field in err, err
    assert str(paths[0]) in err or str(paths[1]) in err, err
    assert not (tmp_path / "joined").exists()


def test_what_is_only_about_output_may_differ(tmp_path):
    """--out and --toys are no part of the experiment; the machine and code may differ and are listed."""
    original = full_record()
    a, b = part(original, 0, 2), part(original, 2, 5)
    b["args"].update(out="elsewhere", toys=True)
    b["machine"] = dict(b["machine"], latentinv=dict(b["machine"]["latentinv"], commit="f" * 40))
    joined = merge.merge([a, b], [write(tmp_path, "a", a), write(tmp_path, "b", b)])
    assert [r["machine"]["latentinv"]["commit"] for r in joined["merged_from"]] == [
        original["machine"]["latentinv"]["commit"], "f" * 40]
    assert "commit ffffffffffff" in report.markdown_report(report._from_json(copy.deepcopy(joined)))


def test_one_record_or_an_out_folder_of_a_run_is_refused(tmp_path, capsys):
    original = full_record()
    a, b = (write(tmp_path, n, part(original, *r)) for n, r in (("a", (0, 2)), ("b", (2, 5))))
    for argv, says in (([str(a), "--out", str(tmp_path / "j")], "at least two"),
                       ([str(a), str(b), "--out", str(a.parent)], "overwrite"),
                       # a file: a FileExistsError traceback after the join
                       ([str(a), str(b), "--out", str(a)], "is a file; expected a folder")):
        with pytest.raises(SystemExit) as exc:
            merge.main(argv)
        assert exc.value.code == 2 and says in capsys.readouterr().err
    original = json.loads(a.read_text())
    assert original["n_starts"] == 2


def test_arguments_added_later_are_compared_at_their_defaults(tmp_path, capsys):
    """A record written before reproduce_paper.py had --precision, --layout ... (the fixture has none of
    them) joins a later run that ran at their defaults, and is refused beside one that did not."""
    original = full_record()
    a, b = part(original, 0, 2), part(original, 2, 5)
    assert "precision" not in a["args"]
    b["args"].update(precision="float32", sgan_precision="float32", layout=[], sgan_layout=[], cudnn_benchmark=False)
    joined = merge.merge([a, b], [write(tmp_path, "a", a), write(tmp_path, "b", b)])
    assert joined["n_starts"] == 5
    b["args"]["sgan_layout"] = ["fused_norm"]
    paths = [write(tmp_path, "c", a), write(tmp_path, "d", b)]
    with pytest.raises(SystemExit):
        merge.main([str(p) for p in paths] + ["--out", str(tmp_path / "j")])
    assert "'args.sgan_layout'" in capsys.readouterr().err
