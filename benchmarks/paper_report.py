"""The paper's published numbers and the side-by-side report of ``reproduce_paper.py``.

Numbers transcribed from Lopez-Alvis, Laloy, Nguyen & Hermans (2021), "Deep generative models in
inversion: a review and development of a new approach based on a variational autoencoder",
Computers & Geosciences: Table 2 (encode-decode thresholds and model RMSEs, linear operator),
Table 3 (accepted inversions of 100 starts), Table 4 (mean data RMSE of the 100 starts' selected
models) and Section 3.3 (the nonlinear case, Fig. 10). ``tests/test_reproduce_paper.py`` checks
this transcription against the paper's text where it is available.
"""
from __future__ import annotations

import numpy as np

TRUTHS = ("mc1", "mc2", "mc3", "mv1", "mv2", "mv3")
LINEAR_CASES = ("VSnnn", "VSbnn", "VSbod", "VSbrd", "SAnnn", "SSbnd")
NOISE_STD = 0.25  # ns, the paper's noisy cases

#: Table 2: data RMSE (ns) of the encode-decode models (the acceptance thresholds) and model RMSE (-).
PAPER_TABLE2 = {
    "threshold": dict(mc1=0.606, mc2=0.998, mc3=1.096, mv1=0.524, mv2=0.958, mv3=0.734),
    "model_rmse": dict(mc1=0.104, mc2=0.147, mc3=0.173, mv1=0.057, mv2=0.098, mv3=0.085),
}
#: Table 3: accepted inversions of 100 starts; key (case, noisy).
PAPER_TABLE3 = {
    ("VSnnn", False): dict(mc1=88, mc2=96, mc3=92, mv1=100, mv2=64, mv3=91),
    ("VSbnn", False): dict(mc1=35, mc2=50, mc3=58, mv1=75, mv2=54, mv3=71),
    ("VSbod", False): dict(mc1=100, mc2=100, mc3=100, mv1=100, mv2=100, mv3=100),
    ("VSbrd", False): dict(mc1=100, mc2=100, mc3=100, mv1=100, mv2=100, mv3=100),
    ("SAnnn", False): dict(mc1=0, mc2=0, mc3=0, mv1=2, mv2=0, mv3=0),
    ("SSbnd", False): dict(mc1=0, mc2=0, mc3=0, mv1=0, mv2=0, mv3=0),
    ("VSbrd", True): dict(mc1=100, mc2=100, mc3=100, mv1=100, mv2=100, mv3=100),
}
#: Table 4: mean data RMSE (ns) of the 100 inversions; key (case, noisy).
PAPER_TABLE4 = {
    ("VSnnn", False): dict(mc1=0.493, mc2=0.620, mc3=1.066, mv1=0.456, mv2=1.061, mv3=1.282),
    ("VSbnn", False): dict(mc1=1.242, mc2=1.525, mc3=1.507, mv1=0.963, mv2=1.308, mv3=1.233),
    ("VSbod", False): dict(mc1=0.544, mc2=0.690, mc3=0.885, mv1=0.121, mv2=0.289, mv3=0.224),
    ("VSbrd", False): dict(mc1=0.405, mc2=0.546, mc3=0.833, mv1=0.062, mv2=0.080, mv3=0.033),
    ("SAnnn", False): dict(mc1=4.538, mc2=5.266, mc3=3.298, mv1=4.777, mv2=5.236, mv3=4.770),
    ("SSbnd", False): dict(mc1=3.988, mc2=4.495, mc3=3.775, mv1=4.703, mv2=4.717, mv3=4.774),
    ("VSbrd", True): dict(mc1=0.480, mc2=0.593, mc3=0.880, mv1=0.273, mv2=0.268, mv3=0.256),
}
#: Section 3.3 (Fig. 10), nonlinear VSbrd, one start per truth: what the text states.
PAPER_NONLINEAR = {
    False: "all inversions accepted (every truth, one start each)",
    True: "6 out of 8 inversions accepted",
}


def start_summary(data_rmse, thresholds):
    """Tables 3 and 4 of one case from its per-start data RMSE ``(n_truths, n_starts)`` (the selected model of
    each start) and each truth's threshold: ``accepted`` (at most the threshold), ``non_finite`` (starts
    without a finite misfit: rejected in Table 3, left out of Table 4's mean), ``mean_rmse`` (Table 4: the mean
    over the finite starts), ``best_rmse`` (the least). ``reproduce_paper.summarize`` and
    ``merge_reproductions.py`` both use it, so a joined record's cells are computed as a single run's."""
    best = np.asarray(data_rmse, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    finite = np.where(np.isfinite(best), best, np.nan)     # Table 4 leaves an inf out as a NaN (nanmean kept it)
    return dict(data_rmse=best.tolist(),
                accepted=np.sum(best <= thresholds[:, None], axis=1).astype(int).tolist(),
                non_finite=np.sum(~np.isfinite(best), axis=1).astype(int).tolist(),
                mean_rmse=np.nanmean(finite, axis=1).tolist(), best_rmse=np.nanmin(best, axis=1).tolist())


def _fmt(value, fmt):
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else fmt.format(value)


def pair(ours, paper, fmt="{:.3f}", sep=" \\| "):
    """One table cell, ``"latentinv | paper"`` (the bar escaped for Markdown tables by default)."""
    return f"{_fmt(ours, fmt)}{sep}{_fmt(paper, fmt)}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _device(record):
    """The device the run used: "auto" resolved from the recorded machine."""
    d = record["device"]
    if d == "auto":
        return "cpu (auto: no GPU)" if not record["machine"].get("cuda") else f"cuda (auto: {record['machine']['cuda']})"
    return d


def _cores(machine):
    """The cores a run had: those its process could run on (``cpus_available``) where the record has them
    and they are fewer than the host's (``cpu_count``; all that records before 2026-12 name)."""
    count, available = machine.get("cpu_count"), machine.get("cpus_available")
    if available is None or available == count:
        return f"{count} cores"
    return f"{available} cores available of the host's {count}"


def scale_line(record):
    """The run's scale, stated above every table."""
    a = record["args"]
    prior = record["prior"]
    if not record["case_columns"]:          # the nonlinear case alone: no linear starts or iterations
        return (f"Scale of this run: prior: {prior['description']}; device {_device(record)}; machine "
                f"{record['machine']['processor_name']} ({_cores(record['machine'])}).")
    return (f"Scale of this run: prior: {prior['description']}; {record['n_starts']} starts per truth "
            f"(paper: 100){' from the published initial latents' if a['published_starts'] else ''}; "
            f"{record['iterations_linear']} iterations per start (paper: 3000); device "
            f"{_device(record)}; machine {record['machine']['processor_name']} "
            f"({_cores(record['machine'])}).")


def _tables_3_and_4(record, case_table):
    """Tables 3 and 4 of a run with linear cases, and the starts left out of Table 4's means."""
    truths = record["truth_names"]
    out = []
    out += ["## Table 3: accepted inversions", "", scale_line(record), "",
            f"latentinv: accepted of {record['n_starts']} starts; paper: of 100. A start is accepted when "
            "its selected model's data RMSE is at most the truth's threshold (Table 2; plus 0.25 ns "
            "with noise).", "", case_table(PAPER_TABLE3, "accepted", "{:.0f}"), ""]
    out += ["## Table 4: mean data RMSE (ns) of the starts' selected models", "", scale_line(record), "",
            case_table(PAPER_TABLE4, "mean_rmse", "{:.3f}", with_threshold=True), ""]
    n = record["n_starts"]
    for key, cell in record["cases"].items():
        for t, k in zip(truths, cell.get("non_finite") or []):
            if k:
                out += [f"**Not in the mean.** {key.replace('_noise', ' (noise)')}: {t}: {k} of {n} starts ended "
                        f"without a finite data RMSE (rejected in Table 3); the cell is the mean of the other "
                        f"{n - k}.", ""]
    return out


def _convergence(record):
    """The stationarity check of ``invert`` on each case (records written since the check exists): the
    relative fall of the selected model's data RMSE along the full-data gradient, per truth; the check
    warns above its threshold (``drop``, ``stationarity.DROP``) unless the fit is within the noise."""
    truths = record["truth_names"]
    cells = [(k.replace("_noise", " (noise)"), c["convergence"]) for k, c in record["cases"].items()
             if c.get("convergence")]
    nl = record.get("nonlinear") or {}
    cells += [(f"nonlinear VSbrd{' (noise)' if noisy in (True, 'true', 'True') else ''}", c)
              for noisy, c in (nl.get("convergence") or {}).items()]
    if not cells:
        return []
    rows = [[name] + [f"{100 * f:.2f} %{'' if ok else ' (not stationary)'}"
                      for f, ok in zip(c["fall"], c["stationary"])] + [str(len(c["warnings"]))]
            for name, c in cells]
    falls = [f for _, c in cells for f in c["fall"]]
    return ["## The convergence check", "",
            "`invert` searches along the full-data gradient from each truth's selected latent "
            f"(`latentinv.inversion.stationarity`) and warns where a step lowers the data RMSE by more than "
            f"{100 * cells[0][1]['drop']:.0f} %, unless the fit is within the noise. The fall per truth (largest here: "
            f"{100 * max(falls):.2f} %; negative where every step raised it):", "",
            _table(["case"] + truths + ["ConvergenceWarnings"], rows), ""]


def _from_json(record):
    """A record read back from JSON: bool keys and tuples as the script holds them."""
    nl = record.get("nonlinear")
    if nl:
        for key in ("best_rmse", "accepted", "model_rmse"):
            nl[key] = {(k in (True, "true", "True")): v for k, v in nl[key].items()}
    record["case_columns"] = [tuple(c) for c in record["case_columns"]]
    return record


def _code_line(record):
    """The latentinv that ran (records of runs before it was recorded have none)."""
    code = record["machine"].get("latentinv")
    if not code:
        return []
    commit = (f", commit {code['commit'][:12]}{' with uncommitted changes' if code.get('dirty') else ''}"
              if code.get("commit") else "")
    return [f"Code: latentinv {code['version']} from {code['file']}{commit}.", ""]



def _arithmetic(record):
    """A set-up line for arithmetic other than float32 with the default kernels (``--precision``,
    ``--sgan-precision``, ``--layout``, ``--sgan-layout``, ``--cudnn-benchmark``), or none. What was asked
    but could not act is said so: the VAE decoder's layout switches act off the CPU's own path (on a CPU
    the decoder ran that path), cuDNN's autotuner on CUDA only, the SGAN's options with an SGAN only."""
    args = record["args"]
    on_cpu = args.get("device") == "cpu" or not (record.get("machine") or {}).get("cuda")
    no_sgan = not record.get("sgan")
    parts = []
    for what, precision, layout in (("VAE", "precision", "layout"), ("SGAN", "sgan_precision", "sgan_layout")):
        chosen = [args[precision]] if args.get(precision, "float32") != "float32" else []
        if args.get(layout):
            idle = (" (asked; no effect: on the CPU the decoder runs its own CPU path)"
                    if what == "VAE" and on_cpu else "")
            chosen += [f"layout {', '.join(args[layout])}{idle}"]
        if chosen:
            idle = " (asked; no effect: no SGAN case ran)" if what == "SGAN" and no_sgan else ""
            parts.append(f"the {what} cases' decoder in {'; '.join(chosen)}{idle}")
    if args.get("cudnn_benchmark"):
        parts.append("cuDNN's autotuner on" + (" (asked; no effect on the CPU)" if on_cpu else ""))
    return [f"- Arithmetic: {'; '.join(parts)} (float32 with the default kernels otherwise)."] if parts else []


def _joined_runs(record):
    """The runs a record joined (``benchmarks/merge_reproductions.py``), each with its starts, code and machine."""
    runs = record.get("merged_from")
    if not runs:
        return []
    out = [f"Joined from {len(runs)} runs of the same experiment over consecutive published start ranges "
           "(`benchmarks/merge_reproductions.py`): every cell of Tables 3 and 4 is computed again from the "
           "runs' per-start data RMSEs, as one run computes it.", ""]
    for run in runs:
        code = (run.get("machine") or {}).get("latentinv") or {}
        commit = f", commit {code['commit'][:12]}" if code.get("commit") else ""
        dirty = " with uncommitted changes" if code.get("dirty") else ""
        first = run["first_start"]
        out.append(f"- starts [{first}, {first + run['n_starts']}): `{run['command']}`; latentinv "
                   f"{code.get('version', '?')}{commit}{dirty}; {(run.get('machine') or {}).get('processor_name')} "
                   f"({_cores(run.get('machine') or {})}); {run['total_s'] / 60:.1f} min.")
    return out + [""]


def _published_starts(args):
    """Which published initial latents a run started from (``--first-start`` K: [K, K + N))."""
    first = args.get("first_start") or 0
    if not first:
        return "the first N published initial latents (zinitVAE500)"
    return f"the published initial latents zinitVAE500[{first}:{first + args['n_starts']}]"

def markdown_report(record, figure_prefix=""):
    """``docs/reproduction.md``: Tables 2-4 and Fig. 10, every cell "latentinv | paper".

    ``figure_prefix``: the path from the report's folder to the run's figures.
    """
    a = record["args"]
    truths = record["truth_names"]
    out = ["# Reproduction of Lopez-Alvis et al. (2021), Tables 2-4 and Fig. 10", "",
           "Written by `benchmarks/reproduce_paper.py`; every cell reads **latentinv \\| paper**. "
           "The paper's numbers are those of its Tables 2-4 and Section 3.3.", "",
           f"Command: `{record['command']}`", "",
           *_code_line(record),
           *_joined_runs(record),
           "## Set-up", "",
           f"- Truths: mc1-mc3 are the crops of the training image at (row, col) "
           f"{record['truth_windows']} ({record['mc_check']}); mv1-mv3: {record['mv_source']}.",
           f"- Prior: {record['prior']['description']}. Training crops exclude "
           f"{record['exclusion_text']}.",
           f"- Straight rays: sources at x = 0.01 m, receivers at x = 6.49 m; rays on horizontal "
           f"cell boundaries: `{a['boundary_rays']}`"
           f"{' (the published kernel: the row above)' if a['boundary_rays'] == 'upper_left' else ''}.",
           f"- Starts: {_published_starts(a) if a['published_starts'] else 'drawn from N(0, I) with seed ' + str(a['seed'])}"
           f"{'; the SGAN cases: ' + record['sgan_starts'] if record.get('sgan_starts') else ''}; "
           f"noise: {'the published realization x 0.25 ns' if a['published_noise'] else 'N(0, 0.25^2) ns drawn with seed ' + str(a['seed'])}.",
           (f"- Cases: `PAPER_CASES` (Table 1's settings), {record['iterations_linear']} iterations each."
            if record["case_columns"] else "- Cases: none of Table 1 (`--cases ''`): Table 2's thresholds and "
                                           "the nonlinear case only."),
           *_arithmetic(record),
           f"- Total time {record['total_s'] / 60:.1f} min; prior training {record['prior']['training_s']:.0f} s.",
           ""]

    t2 = record["table2"]
    out += ["## Table 2: encode-decode thresholds (linear operator)", "", scale_line(record), "",
            "Beside them, the baselines a skeptic asks for: the best constant model's RMSE (the "
            "truth's standard deviation) and the data RMSE of the best homogeneous-velocity model.", ""]
    rows = [[t, pair(t2["threshold"][i], PAPER_TABLE2["threshold"].get(t)),
             pair(t2["model_rmse"][i], PAPER_TABLE2["model_rmse"].get(t)),
             _fmt(t2["constant_model_rmse"][i], "{:.3f}"), _fmt(t2["homogeneous_data_rmse"][i], "{:.3f}")]
            for i, t in enumerate(truths)]
    out += [_table(["truth", "data RMSE (ns)", "model RMSE", "best constant model RMSE",
                    "best homogeneous model data RMSE (ns)"], rows), ""]
    # what the run printed as warnings: thresholds no better than a baseline make Table 3's acceptances say little
    for w in record.get("baseline_warnings") or []:
        out += [f"**Warning.** {w}.", ""]

    def case_table(paper, key, fmt, with_threshold=False):
        """Clean cases, then (Table 4) the threshold, then the noisy cases, as the paper's tables."""
        cols = [(c, False) for c, n in record["case_columns"] if not n]
        if with_threshold:
            cols.append(("threshold", None))
        cols += [(c, True) for c, n in record["case_columns"] if n]
        header = ["truth"] + [c if n is None else f"{c}{' (noise)' if n else ''}" for c, n in cols]
        rows = []
        for i, t in enumerate(truths):
            row = [t]
            for c, n in cols:
                if n is None:
                    row.append(pair(t2["threshold"][i], PAPER_TABLE2["threshold"].get(t)))
                    continue
                cell = record["cases"].get(f"{c}{'_noise' if n else ''}")
                ref = paper.get((c, n), {}).get(t)
                row.append(f"skipped \\| {_fmt(ref, fmt)}" if cell is None else pair(cell[key][i], ref, fmt))
            rows.append(row)
        return _table(header, rows)

    if not record["case_columns"]:
        out += ["No case of Table 1 ran (`--cases ''`): no Tables 3 and 4.", ""]
    else:
        out += _tables_3_and_4(record, case_table)
    if record["skipped"]:
        out += ["Skipped cases: " + "; ".join(f"{k}: {v}" for k, v in record["skipped"].items()), ""]

    nl = record.get("nonlinear")
    if nl:
        out += ["## Fig. 10: nonlinear operator (shortest paths), VSbrd", "",
                f"Scale: {nl['n_starts']} start(s) per truth"
                + (f" ({nl['starts']})" if nl.get("starts") else "") + f", {nl['iterations']} iterations "
                f"(paper: 1 start, 750); data simulated with 2 secondary nodes, inverted with 3; "
                f"lambda = {nl['lam']}; {nl['time_s']:.0f} s.", ""]
        rows = []
        for i, t in enumerate(truths):
            rows.append([t, _fmt(nl["threshold"][i], "{:.3f}"),
                         _fmt(nl["best_rmse"][False][i], "{:.3f}"),
                         f"{nl['accepted'][False][i]} of {nl['n_starts']}",
                         _fmt(nl["best_rmse"][True][i], "{:.3f}") if nl["best_rmse"].get(True) else "–",
                         f"{nl['accepted'][True][i]} of {nl['n_starts']}" if nl["accepted"].get(True) else "–",
                         _fmt(nl["model_rmse"][False][i], "{:.3f}")])
        out += [_table(["truth", "threshold (ns)", "best data RMSE", "accepted",
                        "best data RMSE (noise)", "accepted (noise)", "model RMSE"], rows), "",
                f"Paper (Section 3.3): without noise, {PAPER_NONLINEAR[False]}; with noise, "
                f"{PAPER_NONLINEAR[True]}. The paper gives no nonlinear thresholds.", ""]

    out += _convergence(record)
    out += ["## Where latentinv and the paper differ, and why", ""] + record["differences"] + [""]
    out += ["## Figures", ""]
    if record.get("figures_note"):
        out += [record["figures_note"], ""]
    out += [f"![{f}]({figure_prefix}{f})" + "\n" for f in record["figures"]]
    return "\n".join(out)


def differences(record):
    """Measured differences, each with its likely cause (lines of the report)."""
    t2 = record["table2"]
    truths = record["truth_names"]
    lines = []
    ratio = [t2["model_rmse"][i] / PAPER_TABLE2["model_rmse"][t] for i, t in enumerate(truths)
             if t in PAPER_TABLE2["model_rmse"]]
    thr = [t2["threshold"][i] / PAPER_TABLE2["threshold"][t] for i, t in enumerate(truths)
           if t in PAPER_TABLE2["threshold"]]
    lines.append(
        f"- **Thresholds (Table 2).** The encode-decode model RMSE is {min(ratio):.2f}-{max(ratio):.2f} "
        f"times the paper's and the thresholds {min(thr):.2f}-{max(thr):.2f} times. The thresholds "
        f"measure the prior, not the inversion: {record['prior']['description']}, against the paper's "
        "reference network trained for 1e5 iterations of 100 crops. "
        + ("A less trained prior reconstructs less sharply, which raises every threshold and makes "
           "acceptance easier" if record["prior"].get("iterations", 0) < 100_000 else
           "The schedule is the paper's; what remains differs between two trainings of the same network "
           "(seed, the training crops"
           + (", which here exclude every crop overlapping mc1-mc3" if record["args"].get("exclusion") == "paper"
              and record["args"].get("prior") in (None, "shipped") and not record["args"].get("reference_vae")
              else "")
           + ", the arithmetic), "
           "and a threshold that is higher makes acceptance easier")
        + "; Table 3 counts must be read against this run's own thresholds.")
    if record["mv_source"].startswith("generated"):
        lines.append(
            "- **mv truths.** The paper's mv1-mv3 come from its own network; ours are generated by "
            "this run's prior (rule above), so they are different models of similar role: "
            "compare their columns by trend, not value by value.")
    else:
        lines.append(
            "- **mv truths.** The published mv1-mv3 come from the paper's network; through this run's "
            "prior their encode-decode is not exact, so their thresholds measure how well our prior "
            "represents the paper's generator's models, not the paper's encode-decode error.")
    for key, paper_key in (("VSbrd", ("VSbrd", False)), ("VSbrd_noise", ("VSbrd", True))):
        cell = record["cases"].get(key)
        if cell:
            ours = np.mean(cell["mean_rmse"])
            ref = np.mean([PAPER_TABLE4[paper_key][t] for t in truths])
            lines.append(f"- **{key.replace('_noise', ' with noise')} (Table 4).** Mean over truths of the "
                         f"mean data RMSE: {ours:.3f} ns against the paper's {ref:.3f} ns.")
    for case in ("VSnnn", "VSbnn"):
        cell = record["cases"].get(case)
        if cell:
            ours = 100.0 * np.sum(cell["accepted"]) / (record["n_starts"] * len(truths))
            ref = np.mean([PAPER_TABLE3[(case, False)][t] for t in truths])
            lines.append(f"- **{case} (Table 3).** {ours:.1f} % of starts accepted against the paper's "
                         f"{ref:.1f} %. With fixed steps (no decay, no regularization) acceptance "
                         "depends on the threshold's level, so a looser threshold raises it.")
    if record["args"]["exclusion"] == "notebook":
        lines.append("- **Exclusion.** This run used the published notebook's exclusion windows, which "
                     "leave crops overlapping mc1-mc3 in training: the prior has seen the truths.")
    return lines


def histories_figure(panels, ylabel="data RMSE (ns)", ylim=None):
    """One axes per panel: ``(title, [(history, colour, label)], [threshold lines])``.

    Lines as the paper's Figs. 8-10: one curve per start over the iterations, dashed thresholds.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(panels), 2.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, lines, thresholds) in zip(axes, panels):
        seen = set()
        for history, colour, label in lines:
            ax.plot(np.arange(len(history)), history, color=colour, lw=0.7,
                    label=None if label in seen else label)
            seen.add(label)
        for value, text in thresholds:
            ax.axhline(value, color="k", ls="--", lw=0.8, label=text)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        if ylim:
            ax.set_ylim(*ylim)
        ax.legend(fontsize=6)
    axes[0].set_ylabel(ylabel)
    return fig


def main(argv=None):
    """Render a report again from a run's JSON record, e.g. into docs/ beside the copied figures."""
    import argparse
    import json
    import os
    from pathlib import Path

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("record", help="reproduce_paper.json of a run (its figures beside it)")
    p.add_argument("--report", required=True, help="Markdown file to write")
    a = p.parse_args(argv)
    record = _from_json(json.loads(Path(a.record).read_text()))
    prefix = os.path.relpath(Path(a.record).resolve().parent, Path(a.report).resolve().parent)
    Path(a.report).write_text(markdown_report(record, "" if prefix == "." else prefix + "/"))


if __name__ == "__main__":
    main()
