"""Join ``reproduce_paper.py`` records of one experiment run over consecutive published start ranges.

``reproduce_paper.py --published-starts --n-starts N --first-start K`` starts every truth of every case from
the published initial latents ``[K, K + N)``. Runs of the same experiment over ranges ``[0, N1)``,
``[N1, N1 + N2)``, ... are joined here into one record over ``[0, N1 + N2 + ...)``, as if one run had
inverted all those starts::

    python benchmarks/merge_reproductions.py A/reproduce_paper.json B/reproduce_paper.json --out DIR

writes ``DIR/reproduce_paper.json`` and ``DIR/reproduction.md`` (``paper_report.markdown_report``).

Rules
-----
* Same experiment. Every argument of the runs must be equal except the start range (``n_starts``,
  ``first_start``), where the output went (``out``) and the toy figures (``toys``); so must the cases,
  truths, Table 2 (thresholds and baselines, bit for bit), each case's settings and iterations, the prior,
  the SGAN, and every other field of the record that is not one run's own (command, times, machine,
  figures). A record whose summaries do not follow from its own per-start data RMSEs is refused too.
* Complete runs of published starts: ``complete`` true and ``--published-starts`` (drawn starts of the same
  seed are the same starts, not more of them).
* Start ranges: sorted by ``first_start`` they must be consecutive, neither overlapping nor leaving a gap
  (the report then says "the published starts [K, K + N)").
* The nonlinear case (Fig. 10) starts from ``zinitVAE500[:nonlinear_starts]`` whatever ``--first-start``,
  so two runs' nonlinear results are the same starts twice: at most one of the records may hold it (run
  the others with ``--no-nonlinear``), and it is carried over unchanged with its arguments
  (``no_nonlinear``, ``nonlinear_starts``, ``epochs_nonlinear``, not compared between the records).

What is recomputed, and how
---------------------------
* Per case, the per-start ``data_rmse`` of the runs are concatenated in start order and ``accepted``,
  ``non_finite``, ``mean_rmse`` and ``best_rmse`` computed again by ``paper_report.start_summary`` (the
  function ``reproduce_paper.summarize`` uses) against Table 2's threshold, plus 0.25 ns in the noisy
  VSbrd column, as ``reproduce_paper.py`` builds them.
* ``model_rmse`` (the model RMSE of the selected model per truth) cannot be computed again: records hold no
  models. It is taken from the run that holds the joined selection, the first start of least data RMSE
  (ties: the earlier start, as ``np.argmin``). The inverter selects by least misfit, which is the least
  data RMSE (without noise_std the misfit is the sum of squares, with a scalar noise_std the chi-square),
  so the choice is the inverter's up to float ties.
* ``time_s``, ``total_s``, ``linear_cases_s`` and the prior's ``training_s`` are summed; ``n_starts`` and
  ``args.n_starts`` are the joined count, ``args.first_start`` its first start, ``args.out`` the ``--out``
  given here; ``sgan_starts`` names the joined range; ``command`` is the runs' commands and this one,
  separated by " ; "; ``differences`` is ``paper_report.differences`` of the joined record;
  ``merged_from`` lists each run (file, range, command, machine, times).
* Figures are not joined: the first run's are copied (those present beside its record), plus the
  nonlinear run's Fig. 10 when another run holds that case, and ``figures_note`` says that Figs. 8-9 show
  that run's starts only.
* A joined record can be joined again with runs of the next ranges: ``merged_from`` then lists every
  original run, and ``command`` holds the earlier join's commands before the new ones.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import paper_report as report  # noqa: E402  (a sibling script)

#: arguments that may differ between the runs: the start range, and what is purely about output
RANGE_ARGS = ("n_starts", "first_start")
OUTPUT_ARGS = ("out", "toys")
#: arguments reproduce_paper.py gained after records were written, at their defaults: a record without one
#: ran as that default does
LATER_ARGS = dict(first_start=0, precision="float32", sgan_precision="float32", layout=[], sgan_layout=[],
                  cudnn_benchmark=False)
#: arguments of the nonlinear case alone: taken from the one record that holds it
NONLINEAR_ARGS = ("no_nonlinear", "nonlinear_starts", "epochs_nonlinear")
#: record fields that are one run's own, joined below; every other field must be equal in every record
RUN_FIELDS = ("command", "complete", "args", "n_starts", "machine", "cases", "sgan_starts", "nonlinear",
              "figures", "differences", "total_s", "linear_cases_s", "prior", "merged_from", "figures_note")
#: case fields joined below; every other one (iterations, settings, ...) must be equal
CASE_RUN_FIELDS = ("data_rmse", "accepted", "non_finite", "mean_rmse", "best_rmse", "model_rmse", "time_s",
                   "cuda_graphs", "cuda_graphs_error")
SUMMARY_FIELDS = ("accepted", "non_finite", "mean_rmse", "best_rmse")
SGAN_RANGE = re.compile(r"zinitSGAN500\.npy\[([^\]]*)\]")


class MergeError(ValueError):
    """Records that cannot be joined; the message names the file and the field."""


def start_range_text(first, n):
    """The slice text reproduce_paper.py writes for the published starts [first, first + n)."""
    return f":{n}" if not first else f"{first}:{first + n}"


def case_thresholds(record, noisy):
    """Each truth's acceptance threshold of a column, as reproduce_paper.py builds ``thresholds[noisy]``: Table 2's
    threshold, plus 0.25 ns (``report.NOISE_STD``) in the noisy column."""
    thr = np.asarray(record["table2"]["threshold"], dtype=np.float64)
    return thr + report.NOISE_STD if noisy else thr


def _same(a, b):
    """Equal as JSON values (NaN equal to NaN, tuples as lists)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _show(value, width=120):
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[:width] + "..."


def load_record(path):
    """A run's record, checked alone: complete, published starts, its summaries its own data's."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MergeError(f"{path}: not a readable JSON record ({exc})") from None
    for field in ("args", "cases", "case_columns", "table2", "n_starts", "complete", "truth_names"):
        if not isinstance(record, dict) or field not in record:
            raise MergeError(f"{path}: field {field!r} missing: not a reproduce_paper.py record")
    if record["complete"] is not True:
        raise MergeError(f"{path}: field 'complete' is {record['complete']!r}: the run did not finish (a "
                         "record is rewritten after every case), so its cases are not all there")
    args = record["args"]
    if not args.get("published_starts"):
        raise MergeError(f"{path}: field 'args.published_starts' is {args.get('published_starts')!r}: drawn "
                         "starts have no order to continue (two runs of the same seed draw the same starts); "
                         "only runs of --published-starts can be joined")
    n, first = record["n_starts"], args.get("first_start") or 0
    if args.get("n_starts") != n:
        raise MergeError(f"{path}: field 'args.n_starts' is {args.get('n_starts')!r} but 'n_starts' is {n!r}")
    if not (isinstance(first, int) and not isinstance(first, bool) and first >= 0):     # JSON true is an int
        raise MergeError(f"{path}: field 'args.first_start' is {first!r}: expected an integer >= 0")
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise MergeError(f"{path}: field 'n_starts' is {n!r}: expected an integer >= 1")
    n_truths = len(record["truth_names"])
    keys = {f"{c}{'_noise' if noisy else ''}": bool(noisy) for c, noisy in record["case_columns"]}
    for key, cell in record["cases"].items():
        if key not in keys:
            raise MergeError(f"{path}: field 'cases.{key}' has no column in 'case_columns'")
        try:
            data = np.asarray(cell.get("data_rmse"), dtype=np.float64)
        except (TypeError, ValueError):          # ragged rows, or not numbers
            data = None
        if data is None or data.shape != (n_truths, n):
            got = "ragged or not numbers" if data is None else f"of shape {data.shape}"
            raise MergeError(f"{path}: field 'cases.{key}.data_rmse' is {got}, expected {n_truths} truths x "
                             f"{n} starts (n_starts)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN rows: NaN, as the run wrote
            again = report.start_summary(data, case_thresholds(record, keys[key]))
        for field in SUMMARY_FIELDS:
            if not _same(again[field], cell.get(field)):
                raise MergeError(f"{path}: field 'cases.{key}.{field}' is {_show(cell.get(field))}, but its own "
                                 f"data_rmse against Table 2's thresholds gives {_show(again[field])}")
    return record


def _check_same_experiment(path, record, ref_path, ref):
    """Refuse ``record`` unless it is ``ref``'s experiment (the rules in the module's docstring)."""
    def differ(field, here, there):
        raise MergeError(f"{path}: field {field!r} is {_show(here)} here but {_show(there)} in {ref_path}: "
                         "not the same experiment")

    for field in sorted(set(record) | set(ref)):
        if field not in RUN_FIELDS and not _same(record.get(field), ref.get(field)):
            differ(field, record.get(field), ref.get(field))
    skip = set(RANGE_ARGS) | set(OUTPUT_ARGS) | set(NONLINEAR_ARGS)
    for name in sorted(set(record["args"]) | set(ref["args"])):
        here, there = (r["args"].get(name, LATER_ARGS.get(name)) for r in (record, ref))
        if name not in skip and not _same(here, there):
            differ(f"args.{name}", here, there)
    for name in sorted(set(record["prior"]) | set(ref["prior"])):
        if name != "training_s" and not _same(record["prior"].get(name), ref["prior"].get(name)):
            differ(f"prior.{name}", record["prior"].get(name), ref["prior"].get(name))
    if sorted(record["cases"]) != sorted(ref["cases"]):
        differ("cases", sorted(record["cases"]), sorted(ref["cases"]))
    for key, cell in record["cases"].items():
        other = ref["cases"][key]
        for name in sorted(set(cell) | set(other)):
            if name not in CASE_RUN_FIELDS and not _same(cell.get(name), other.get(name)):
                differ(f"cases.{key}.{name}", cell.get(name), other.get(name))
    here, there = record.get("sgan_starts"), ref.get("sgan_starts")
    if (here is None) != (there is None) or (here is not None and SGAN_RANGE.sub("", here)
                                             != SGAN_RANGE.sub("", there)):
        differ("sgan_starts", here, there)


def _check_sgan_range(path, record):
    text = record.get("sgan_starts")
    if text is None:
        return
    found = SGAN_RANGE.findall(text)
    want = start_range_text(record["args"].get("first_start") or 0, record["n_starts"])
    if found != [want]:
        raise MergeError(f"{path}: field 'sgan_starts' names the range {found} of zinitSGAN500.npy, expected "
                         f"[{want!r}] (args.first_start and n_starts)")


def merge(records, paths, out=None, merge_command=None):
    """The joined record of ``records`` (read from ``paths``); raises :class:`MergeError` when they cannot be
    joined. ``out``: the new ``args.out``; ``merge_command``: this merge's command line, for ``command``."""
    if len(records) < 2:
        raise MergeError("give at least two records to join")
    order = sorted(range(len(records)), key=lambda i: ((records[i]["args"].get("first_start") or 0),
                                                        records[i]["n_starts"]))
    records = [records[i] for i in order]
    paths = [Path(paths[i]) for i in order]
    ranges = [((r["args"].get("first_start") or 0), r["n_starts"]) for r in records]
    for (a, n), (b, m), pa, pb in zip(ranges, ranges[1:], paths, paths[1:]):
        if b < a + n:
            raise MergeError(f"{pb}: field 'args.first_start': its published starts [{b}, {b + m}) overlap "
                             f"[{a}, {a + n}) of {pa}: a start would be counted twice")
        if b > a + n:
            raise MergeError(f"{pb}: field 'args.first_start': its published starts [{b}, {b + m}) leave a "
                             f"gap [{a + n}, {b}) after [{a}, {a + n}) of {pa}: the joined record would not be "
                             "the published starts of one range")
    for path, record in zip(paths, records):
        _check_sgan_range(path, record)
    ref, ref_path = records[0], paths[0]
    for path, record in zip(paths[1:], records[1:]):
        _check_same_experiment(path, record, ref_path, ref)
    with_nl = [i for i, r in enumerate(records) if r.get("nonlinear")]
    if len(with_nl) > 1:
        raise MergeError(f"{paths[with_nl[1]]}: field 'nonlinear': {paths[with_nl[0]]} holds the nonlinear case "
                         "too. Its starts are zinitVAE500[:nonlinear_starts] whatever --first-start, so two "
                         "runs' nonlinear results are the same starts twice and cannot be joined: keep it in one "
                         "run (the others with --no-nonlinear)")

    first, total = ranges[0][0], sum(n for _, n in ranges)
    merged = copy.deepcopy(ref)
    nl_source = records[with_nl[0]] if with_nl else ref
    args = merged["args"]
    for name in NONLINEAR_ARGS:
        if name in nl_source["args"]:
            args[name] = nl_source["args"][name]
    args.update(n_starts=total, first_start=first)
    if out is not None:
        args["out"] = str(out)
    merged["n_starts"] = total
    merged["nonlinear"] = copy.deepcopy(nl_source.get("nonlinear"))
    merged["complete"] = True
    merged["prior"]["training_s"] = sum(r["prior"].get("training_s") or 0.0 for r in records)
    merged["total_s"] = sum(r.get("total_s") or 0.0 for r in records)
    if any("linear_cases_s" in r for r in records):
        merged["linear_cases_s"] = sum(r.get("linear_cases_s") or 0.0 for r in records)
    if merged.get("sgan_starts") is not None:
        merged["sgan_starts"] = SGAN_RANGE.sub(f"zinitSGAN500.npy[{start_range_text(first, total)}]",
                                               merged["sgan_starts"])
    noisy_of = {f"{c}{'_noise' if noisy else ''}": bool(noisy) for c, noisy in ref["case_columns"]}
    for key, cell in merged["cases"].items():
        cells = [r["cases"][key] for r in records]
        data = np.concatenate([np.asarray(c["data_rmse"], dtype=np.float64) for c in cells], axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            cell.update(report.start_summary(data, case_thresholds(merged, noisy_of[key])))
        # the selected model of each truth: the first start of least data RMSE, and the run that holds it
        owner = np.repeat(np.arange(len(cells)), [n for _, n in ranges])
        pick = np.argmin(np.where(np.isfinite(data), data, np.inf), axis=1)
        cell["model_rmse"] = [cells[owner[k]]["model_rmse"][i] for i, k in enumerate(pick)]
        cell["time_s"] = sum(c.get("time_s") or 0.0 for c in cells)
        if "cuda_graphs" in cell:
            cell["cuda_graphs"] = all(c.get("cuda_graphs") for c in cells)
        errors = [f"{p}: {c['cuda_graphs_error']}" for p, c in zip(paths, cells) if c.get("cuda_graphs_error")]
        cell.pop("cuda_graphs_error", None)
        if errors:
            cell["cuda_graphs_error"] = "; ".join(errors)
    # the runs, each with its own range; a record that is itself a join contributes the runs it joined
    merged["merged_from"] = [run for p, (a, n), r in zip(paths, ranges, records) for run in (
        copy.deepcopy(r["merged_from"]) if r.get("merged_from") else
        [dict(record=str(p), first_start=a, n_starts=n, command=r.get("command"), total_s=r.get("total_s") or 0.0,
              linear_cases_s=r.get("linear_cases_s"), machine=r.get("machine"),
              figures=list(r.get("figures") or []), nonlinear=bool(r.get("nonlinear")))])]
    merged["command"] = " ; ".join([str(r.get("command")) for r in records]
                                   + ([merge_command] if merge_command else []))
    merged["figures"], merged["figures_note"] = [], (
        f"No figures: they show one run's starts, not the joined {total} (see each run's folder in "
        "'merged_from').")
    merged["differences"] = report.differences(report._from_json(copy.deepcopy(merged)))
    return merged


def copy_figures(merged, out):
    """Copy the first run's figures (and the nonlinear run's Fig. 10) into ``out``; set ``figures`` and
    ``figures_note`` of ``merged`` to what was copied."""
    runs = merged["merged_from"]
    first = runs[0]
    nl_run = next((r for r in runs if r["nonlinear"]), None)
    wanted = [(first, f) for f in first["figures"]]
    if nl_run is not None and nl_run is not first:
        wanted += [(nl_run, f) for f in nl_run["figures"] if f.startswith("fig10_")]
    files, missing = [], []
    for run, name in wanted:
        src = Path(run["record"]).parent / name
        if src.is_file():
            shutil.copyfile(src, Path(out) / name)
            files.append(name)
        else:
            missing.append(str(src))
    a, n = first["first_start"], first["n_starts"]
    note = (f"These figures are one run's, not the joined record's: those of the run of the published starts "
            f"[{a}, {a + n}) ({first['record']}); Figs. 8 and 9 show that run's {n} starts only, not the joined "
            f"{merged['n_starts']}.")
    if nl_run is not None and nl_run is not first:
        note += f" Fig. 10 is that of {nl_run['record']}, the run that holds the nonlinear case."
    if missing:
        note += f" Not found beside their records, so left out: {', '.join(missing)}."
    merged["figures"], merged["figures_note"] = files, note


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("records", nargs="+", help="reproduce_paper.json of each run (any order; two or more)")
    p.add_argument("--out", required=True, help="folder for the joined reproduce_paper.json and reproduction.md")
    p.add_argument("--no-figures", action="store_true",
                   help="copy no figure (by default the first run's, which show that run's starts only)")
    a = p.parse_args(argv)
    out = Path(a.out)
    if len(a.records) < 2:
        p.error("records: give at least two reproduce_paper.json files to join")
    if out.exists() and not out.is_dir():      # a FileExistsError traceback after the join, before
        p.error(f"--out {a.out}: is a file; expected a folder (created when missing)")
    for path in a.records:
        if out.resolve() == Path(path).resolve().parent:
            p.error(f"--out {a.out}: is the folder of {path}; the joined record would overwrite a run's own")
    try:
        records = [load_record(path) for path in a.records]
        command = "python benchmarks/merge_reproductions.py " + " ".join(
            shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
        merged = merge(records, a.records, out=out, merge_command=command)
    except MergeError as exc:
        p.error(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    if not a.no_figures:
        copy_figures(merged, out)
    (out / "reproduce_paper.json").write_text(json.dumps(merged, indent=1, default=str))
    (out / "reproduction.md").write_text(report.markdown_report(report._from_json(copy.deepcopy(merged))))
    ranges = ", ".join(f"[{r['first_start']}, {r['first_start'] + r['n_starts']})" for r in merged["merged_from"])
    print(f"[merge] {len(records)} runs, published starts {ranges} -> [{merged['args']['first_start']}, "
          f"{merged['args']['first_start'] + merged['n_starts']}); {len(merged['cases'])} cases; "
          f"reproduce_paper.json and reproduction.md in {out}")
    return merged


if __name__ == "__main__":
    main()
