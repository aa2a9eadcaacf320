"""What a ``gpu_checks.sh`` call brought back, put where the repository keeps it.

The device tool returns the call's ``$OUT`` files into a folder here (``files_at``): ``log.txt``,
``tests.txt``, ``prior.txt``, ``reproduce.txt``, ``nonlinear.txt``, ``results.tar``, ``prior.tgz`` and
``sgan.tgz.part-NN``.
This script

- copies the records of ``results.tar`` into ``docs/``, named by the card (``--card``, e.g. ``h200``):
  ``bench_inversion_<card>_graphs.json``, ``bench_training_<card>.json``, the reproduction in
  ``reproduction_<card>/`` and its nonlinear case in ``reproduction_<card>_nonlinear/`` (each
  ``reproduce_paper.json``, ``reproduction.md`` and the figures it links), and the call's logs into
  ``gpu_call_<card>.txt``;
- with ``--ship-prior``, installs the trained prior as the package's default
  (``src/latentinv/data/channels_ti_prior``) after loading it and checking its size (at most 1e7 bytes; a
  prior over it has its encoder's largest tensors stored int8 until it fits, decoded models unchanged, and
  is evaluated again here so that its record describes the shipped files),
  and its record into ``docs/channels_ti_prior*`` (the training history kept every ``--history-every``
  iterations, said in the file). It refuses a prior that the call did not evaluate (no record to ship
  with it), and one whose held-out reconstruction RMSE is not below the shipped prior's (the same 200
  held-out crops; a call that trained too few iterations), unless ``--even-if-worse``;
- with the sgan step's ``sgan.tgz.part-NN``, puts the trained SGAN together in ``--sgan-out`` (default
  ``.gpu_data/sgan_<card>``, not tracked) and loads it once (checksums), its records into
  ``docs/bench_prior_sgan_<card>.json`` and ``docs/reproduction_<card>_sgan/``;
- prints what the README and the tests then need: the key numbers and the new weights' SHA-256.

Usage::

    python benchmarks/gpu_results.py <files_at> --card h200 --ship-prior
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGS = ("log.txt", "tests.txt", "prior.txt", "reproduce.txt", "nonlinear.txt")
PRIOR_BUDGET_BYTES = 10**7


def _extract(archive, into):
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")      # no links out of the folder, no devices


def _copy(src, dst, copied):
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        copied.append(dst)


def _relative_paths(text):
    """A log with the checkout's absolute paths made relative to it (the device tool runs the copy at the
    same path as here), and ``../shared``'s likewise: the record names no machine's folders."""
    return text.replace(f"{ROOT}/", "").replace(f"{ROOT.parent}/shared/", "../shared/")


def _read_record(path, summary):
    """A record's JSON, or None where it cannot be read (a step stopped while writing it): said in
    ``summary`` under "unreadable records", so that the other records and the logs still land."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        summary.setdefault("unreadable records", {})[path.name] = f"{type(exc).__name__}: {exc}"[:200]
        return None


def records(files_at, card, root, copied):
    """The records of ``results.tar`` and the logs into ``root/docs``; returns a summary dict."""
    docs = root / "docs"
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if (files_at / "results.tar").is_file():
            _extract(files_at / "results.tar", tmp)
        _copy(tmp / "bench" / "bench_inversion.json", docs / f"bench_inversion_{card}_graphs.json", copied)
        _copy(tmp / "train" / "bench_training.json", docs / f"bench_training_{card}.json", copied)
        _copy(tmp / "sgan" / "bench_prior_sgan.json", docs / f"bench_prior_sgan_{card}.json", copied)
        for part, folder in (("reproduce", f"reproduction_{card}"), ("nonlinear", f"reproduction_{card}_nonlinear"),
                             ("sgan/reproduce", f"reproduction_{card}_sgan")):
            # a folder per run: the report links its figures by their own names
            for name in ("reproduce_paper.json", "reproduction.md"):
                _copy(tmp / part / name, docs / folder / name, copied)
            for png in sorted((tmp / part).glob("*.png")) if (tmp / part).is_dir() else ():
                _copy(png, docs / folder / png.name, copied)
        bench = tmp / "bench" / "bench_inversion.json"
        bench_record = _read_record(bench, summary) if bench.is_file() else None
        if bench_record is not None:
            rows = bench_record.get("rows", [])
            summary["paper experiment (s)"] = {r["method"]: r.get("seconds", r.get("error"))
                                               for r in rows if r.get("case") == "linear paper experiment"}
            # bench_inversion.py --tables: Tables 3-4's cases as the reproduction batches them
            summary["Tables 3-4 cases, bench_inversion --tables (s)"] = {
                r["method"]: r.get("seconds", r.get("error")) for r in rows if r.get("case") == "table case"}
            # bench_inversion.py --profile: the five largest kernels of each profiled epoch
            summary.update({f"profile, {r['method']} (ms per iteration; top kernels' shares)": (
                r.get("ms_per_iteration", r.get("error")),
                [f"{e['share']:.1%} {e['name'][:80]}" for e in r.get("entries", [])[:5]])
                for r in rows if r.get("case") == "profile"})
            # --sgan-rates: the SGAN step per variant, a column projected; and the fastest rows that
            # gpu_plan.py tables turned into the reproduction's options (FASTEST=1)
            sgan_rates = {r.get("variant", r["method"]): (r.get("ms_per_iteration"), r.get("projected_column_s"),
                                                          r.get("error"))
                          for r in rows if r.get("case") == "sgan rate"}
            if sgan_rates:
                summary["SGAN step by variant (ms per iteration; column projected s; error)"] = sgan_rates
            fastest = {r["case"]: dict(method=r.get("method"), precision=r.get("precision"), layout=r.get("layout"),
                                       cudnn_autotune=r.get("cudnn_autotune"))
                       for r in rows if r.get("case") in ("vae fastest", "sgan fastest")}
            if fastest:
                summary["fastest arithmetic (gpu_plan.py tables)"] = fastest
        train = tmp / "train" / "bench_training.json"
        train_record = _read_record(train, summary) if train.is_file() else None
        if train_record is not None:
            summary["training (ms per iteration; 1e5 iterations in min)"] = {
                r["variant"]: (r.get("ms_per_iteration"), r.get("paper_schedule_minutes"), r.get("error"))
                for r in train_record.get("rows", [])}
        sgan = tmp / "sgan" / "bench_prior_sgan.json"
        record = _read_record(sgan, summary) if sgan.is_file() else None
        if record is not None:
            summary["SGAN training"] = dict(steps=record.get("sgan_steps"),
                                            trained=record.get("patterns", {}).get("sgan"),
                                            seconds=record.get("patterns", {}).get("sgan_training_seconds"),
                                            parts=record.get("sgan_training"))   # carried on, then part by part
        sgan_rp = tmp / "sgan" / "reproduce" / "reproduce_paper.json"
        sgan_record = _read_record(sgan_rp, summary) if sgan_rp.is_file() else None
        if sgan_record is not None:     # SAnnn and SSbnd with the trained SGAN, from CUDA graphs
            summary["Tables 3-4, SGAN cases (s)"] = sgan_record.get("linear_cases_s")
        rp = tmp / "reproduce" / "reproduce_paper.json"
        rp_record = _read_record(rp, summary) if rp.is_file() else None
        if rp_record is not None:
            summary["Tables 3-4, linear cases (s)"] = rp_record.get("linear_cases_s")
    logs = [f"==> {name} <==\n{_relative_paths((files_at / name).read_text(errors='replace'))}" for name in LOGS
            if (files_at / name).is_file()]
    if logs:
        out = docs / f"gpu_call_{card}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(logs))
        copied.append(out)
    return summary


def _heldout_rmse(record_path):
    """The held-out reconstruction RMSE of a prior's record, or None where there is no such record."""
    if not record_path.is_file():
        return None
    value = json.loads(record_path.read_text()).get("heldout_reconstruction_rmse")
    return None if value is None else float(value)


def _fit_budget(prior, folder, docs):
    """The call's prior over the budget: its encoder's largest tensors stored int8 until the files fit
    (``VAEPrior.save``'s ``max_bytes``), the decoder exactly as the call stored it (its float16/float32
    choice was made against the float32 weights, which did not come back). Checks that decoded models are
    unchanged, measures how far ``encode`` moves on the 200 held-out crops, and evaluates the stored prior
    again on this machine (its record must describe the shipped files); returns the storage summary."""
    import subprocess

    import numpy as np
    import torch

    from latentinv import VAEPrior
    from latentinv._common import _load_safetensors, _read_model_files, _write_tensor_files
    from latentinv._cpus import available_cpus
    from latentinv.prior import _encoder_int8_to_fit

    sys.path.insert(0, str(ROOT / "scripts"))
    from train_default_prior import held_out_truths

    held = held_out_truths(200, "channels_ti")
    z = np.random.default_rng(0).standard_normal((256, int(prior.n_components)))
    before_z, before_x = prior.encode(held), prior.decode(z)
    (_, weights_path), (raw, weights) = _read_model_files(folder, "gpu_results", "VAEPrior")
    config = {k: v for k, v in json.loads(raw).items() if not k.endswith("_sha256")}
    state, config = _encoder_int8_to_fit(_load_safetensors(weights, weights_path, "gpu_results"), config,
                                         PRIOR_BUDGET_BYTES, "gpu_results")
    _write_tensor_files(folder, state, config)
    stored = VAEPrior.load(folder)
    if not np.array_equal(stored.decode(z), before_x):
        raise RuntimeError("storing the encoder in int8 changed the decoded models: the decoder was touched")
    shift = np.abs(stored.encode(held) - before_z)
    gpu_record = json.loads((docs / "channels_ti_prior.json").read_text())
    # the record of the shipped files: evaluated here (a few minutes on the CPU), the training's machine kept
    subprocess.run([sys.executable, str(ROOT / "scripts" / "train_default_prior.py"), "--evaluate-only",
                    "--device", "cuda" if torch.cuda.is_available() else "cpu", "--threads",
                    str(min(8, available_cpus())), "--out", str(folder), "--report", str(docs)], check=True)
    record = json.loads((docs / "channels_ti_prior.json").read_text())
    record["evaluated_on"] = record["machine"]
    record["machine"] = gpu_record.get("machine")
    record["storage"] = {
        "bytes": sum(f.stat().st_size for f in folder.iterdir()),
        "float32_tensors": config.get("float32_tensors"), "int8_tensors": config.get("int8_tensors", []),
        "why": f"the call's mixed float16/float32 files took {sum(len(b) for b in (raw, weights))} bytes, over "
               f"the {PRIOR_BUDGET_BYTES} budget; the encoder's largest tensors went int8 (per-row scales), "
               f"the decoder unchanged (decoded models identical)",
        "encode_shift_on_heldout_crops": {"max": float(shift.max()), "mean": float(shift.mean())},
        "evaluation_before_int8": {k: gpu_record.get(k) for k in ("heldout_reconstruction_rmse", "vsbrd")},
    }
    (docs / "channels_ti_prior.json").write_text(json.dumps(record, indent=1))
    return record["storage"]


def ship_prior(files_at, root, copied, history_every=10, even_if_worse=False):
    """The prior of ``prior.tgz`` as the package's default, and its record; returns a summary dict.
    Everything is checked before anything is written."""
    from latentinv import VAEPrior

    if not (files_at / "prior.tgz").is_file():
        raise FileNotFoundError(f"no prior.tgz in {files_at}: the call saved no prior")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _extract(files_at / "prior.tgz", tmp)
        folder = tmp / "channels_ti_prior"
        prior = VAEPrior.load(folder)        # verifies its checksums; no code is executed
        size = sum(f.stat().st_size for f in folder.iterdir())
        storage = None
        model_files_only = sorted(f.name for f in folder.iterdir()) == ["config.json", "weights.safetensors"]
        if size > PRIOR_BUDGET_BYTES and model_files_only and (tmp / "docs" / "channels_ti_prior.json").is_file():
            storage = _fit_budget(prior, folder, tmp / "docs")     # re-evaluates the stored prior
            prior, size = VAEPrior.load(folder), storage["bytes"]
        if size > PRIOR_BUDGET_BYTES:
            raise ValueError(f"the prior's files take {size} bytes, over the {PRIOR_BUDGET_BYTES} budget")
        new_rmse = _heldout_rmse(tmp / "docs" / "channels_ti_prior.json")
        if new_rmse is None or not (tmp / "docs" / "channels_ti_prior_training.json").is_file():
            raise ValueError("prior.tgz holds no evaluated record (docs/channels_ti_prior.json with its held-out "
                             "reconstruction RMSE, and docs/channels_ti_prior_training.json): the call's "
                             "evaluation did not run. Evaluate the prior first (python "
                             "scripts/train_default_prior.py --evaluate-only --out <its folder> --report "
                             "<its docs folder>), then pack it again")
        old_rmse = _heldout_rmse(root / "docs" / "channels_ti_prior.json")
        if old_rmse is not None and not new_rmse < old_rmse and not even_if_worse:
            raise ValueError(f"the call's prior is not better than the shipped one: held-out reconstruction "
                             f"RMSE {new_rmse:.4f} against the shipped {old_rmse:.4f} ({prior.n_iterations} "
                             f"iterations); not shipped (--even-if-worse ships it anyway)")
        data = root / "src" / "latentinv" / "data" / "channels_ti_prior"
        for name in ("config.json", "weights.safetensors"):
            _copy(folder / name, data / name, copied)
        docs = root / "docs"
        _copy(tmp / "docs" / "channels_ti_prior.json", docs / "channels_ti_prior.json", copied)
        _copy(tmp / "docs" / "channels_ti_prior_curve.png", docs / "channels_ti_prior_curve.png", copied)
        training = json.loads((tmp / "docs" / "channels_ti_prior_training.json").read_text())
        training["history"] = {k: v[::history_every] for k, v in training["history"].items()}
        training["history_every"] = history_every
        out = docs / "channels_ti_prior_training.json"
        out.write_text(json.dumps(training))
        copied.append(out)
        record = json.loads((docs / "channels_ti_prior.json").read_text())
        weights = (folder / "weights.safetensors").read_bytes()
        return {"prior": {"iterations": prior.n_iterations, "bytes": size, "storage": storage,
                          "weights_sha256": hashlib.sha256(weights).hexdigest(),
                          "train_seconds (last call)": record.get("train_seconds"),
                          "heldout_reconstruction_rmse": record.get("heldout_reconstruction_rmse"),
                          "the shipped prior's before": old_rmse,
                          "VSbrd mean accepted fraction": record.get("vsbrd", {}).get("mean_accepted_fraction")}}


def unpack_sgan(files_at, into):
    """The trained SGAN of the call's ``sgan.tgz.part-NN`` files (the sgan step splits its archive: the
    weights are over one returned file's 16 MiB) into the folder ``into``, loaded once to verify its
    checksums; returns a summary, or None where the call brought no parts."""
    parts = sorted(Path(files_at).glob("sgan.tgz.part-*"))
    if not parts:
        return None
    from latentinv import SGANPrior
    into = Path(into)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "sgan.tgz"
        with open(archive, "wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        _extract(archive, Path(tmp) / "x")
        # checked where it was unpacked (checksums): a damaged archive never replaces a good SGAN
        prior = SGANPrior.load(Path(tmp) / "x" / "li_sgan", device="cpu")
        if into.exists():
            shutil.rmtree(into)
        into.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(Path(tmp) / "x" / "li_sgan"), str(into))
    return dict(folder=str(into), parts=len(parts), n_iterations=prior.n_iterations,
                n_filters=prior.n_filters, image_shape=list(prior.image_shape_))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files_at", help="the folder the device tool returned the call's files into")
    p.add_argument("--card", required=True, help="the GPU's short name in the file names, e.g. h200")
    p.add_argument("--ship-prior", action="store_true", help="install prior.tgz's prior as the default")
    p.add_argument("--even-if-worse", action="store_true",
                   help="ship the prior even if its held-out reconstruction RMSE is not below the shipped one's")
    p.add_argument("--history-every", type=int, default=10, help="training history kept every N iterations")
    p.add_argument("--sgan-out", default=None,
                   help="folder for the trained SGAN of sgan.tgz.part-NN (default: .gpu_data/sgan_<card>, not "
                        "tracked by git)")
    p.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    files_at, root = Path(a.files_at), Path(a.root)
    if not files_at.is_dir():
        p.error(f"no folder {files_at}")
    if not a.card.replace("-", "").isalnum():
        p.error(f"--card: letters, digits and '-' only, got {a.card!r}")
    copied, summary = [], {}
    if a.ship_prior:      # first: a prior it refuses leaves the repository untouched
        summary.update(ship_prior(files_at, root, copied, a.history_every, a.even_if_worse))
    # the SGAN before the records: a damaged one (an error) leaves the repository untouched
    sgan = unpack_sgan(files_at, a.sgan_out or root / ".gpu_data" / f"sgan_{a.card}")
    summary = {**records(files_at, a.card, root, copied), **summary}
    if sgan is not None:
        summary["trained SGAN"] = sgan
    for path in copied:
        print(f"wrote {path.relative_to(root)}")
    print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
