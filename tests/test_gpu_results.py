"""benchmarks/gpu_results.py: a GPU call's files put where the repository keeps them."""
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_results  # noqa: E402

from latentinv import VAEPrior  # noqa: E402


def _tar(path, files, mode="w"):
    """A tar of ``{name: bytes}``."""
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prior") / "channels_ti_prior"
    X = (np.random.default_rng(0).random((6, 16, 16)) > 0.7).astype(np.float32)
    prior = VAEPrior(n_components=2, channels=(2, 2), kernel_sizes=(3, 3), hidden_size=4, batch_size=3,
                     n_iterations=2, random_state=0, device="cpu").fit(X)
    prior.save(folder, weights_dtype="mixed")
    return prior, folder


def _call_files(tmp_path, prior_folder, extra_prior_file=None, evaluated=True):
    """A call's returned files: logs, results.tar and prior.tgz (a prior of held-out RMSE 0.1)."""
    at = tmp_path / "files_at"
    at.mkdir()
    (at / "log.txt").write_text("[0 s] machine: 16 CPUs\n")
    (at / "prior.txt").write_text("training exit 0\n")
    bench = {"rows": [{"case": "linear paper experiment", "method": "LatentInverter (CUDA graph, float32)",
                       "seconds": 1.5},
                      {"case": "linear paper experiment", "method": "LatentInverter (eager, float32)",
                       "seconds": 10.2},
                      {"case": "table case", "method": "SAnnn, 6 surveys x 100 starts, CUDA graph", "seconds": 20.5},
                      {"case": "profile", "method": "CUDA graph, float32", "ms_per_iteration": 1.24,
                       "entries": [{"name": f"kernel{i}", "share": 0.3 - 0.05 * i} for i in range(6)]}]}
    train = {"rows": [{"variant": "float32", "ms_per_iteration": 4.0, "paper_schedule_minutes": 6.7}]}
    _tar(at / "results.tar", {"./bench/bench_inversion.json": json.dumps(bench).encode(),
                              "./train/bench_training.json": json.dumps(train).encode(),
                              "./reproduce/reproduce_paper.json": json.dumps({"linear_cases_s": 88.0}).encode(),
                              "./reproduce/reproduction.md": b"# reproduction\n",
                              "./reproduce/fig7_truths.png": b"png"})
    files = {f"channels_ti_prior/{f.name}": f.read_bytes() for f in prior_folder.iterdir()}
    if extra_prior_file:
        files["channels_ti_prior/extra.bin"] = bytes(extra_prior_file)
    history = {k: list(range(30)) for k in ("reconstruction", "kl", "loss")}
    files["docs/channels_ti_prior_training.json"] = json.dumps({"train_seconds": 280.0, "history": history}).encode()
    if evaluated:
        files.update({"docs/channels_ti_prior.json": json.dumps({"train_seconds": 280.0,
                                                                 "heldout_reconstruction_rmse": 0.1,
                                                                 "vsbrd": {"mean_accepted_fraction": 0.9}}).encode(),
                      "docs/channels_ti_prior_curve.png": b"png"})
    _tar(at / "prior.tgz", files, mode="w:gz")
    return at


def test_records_and_prior_land_where_the_repository_keeps_them(tmp_path, tiny_prior, capsys):
    prior, folder = tiny_prior
    at = _call_files(tmp_path, folder)
    root = tmp_path / "repo"
    assert gpu_results.main([str(at), "--card", "h200", "--ship-prior", "--root", str(root)]) == 0
    docs = root / "docs"
    for name in ("bench_inversion_h200_graphs.json", "bench_training_h200.json", "reproduction_h200/reproduce_paper.json",
                 "reproduction_h200/reproduction.md", "reproduction_h200/fig7_truths.png", "gpu_call_h200.txt",
                 "channels_ti_prior.json", "channels_ti_prior_curve.png"):
        assert (docs / name).is_file(), name
    assert "==> prior.txt <==\ntraining exit 0" in (docs / "gpu_call_h200.txt").read_text()
    training = json.loads((docs / "channels_ti_prior_training.json").read_text())
    assert training["history_every"] == 10 and training["history"]["loss"] == [0, 10, 20]
    shipped = VAEPrior.load(root / "src" / "latentinv" / "data" / "channels_ti_prior")
    z = np.random.default_rng(1).standard_normal((3, 2))
    np.testing.assert_array_equal(shipped.decode(z), VAEPrior.load(folder).decode(z))
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    sha = hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()
    assert summary["prior"]["weights_sha256"] == sha and summary["prior"]["iterations"] == 2
    assert summary["paper experiment (s)"]["LatentInverter (CUDA graph, float32)"] == 1.5
    assert summary["Tables 3-4, linear cases (s)"] == 88.0
    assert summary["Tables 3-4 cases, bench_inversion --tables (s)"] == {"SAnnn, 6 surveys x 100 starts, CUDA graph": 20.5}
    assert summary["profile, CUDA graph, float32 (ms per iteration; top kernels' shares)"] == [
        1.24, ["30.0% kernel0", "25.0% kernel1", "20.0% kernel2", "15.0% kernel3", "10.0% kernel4"]]


def test_a_prior_over_budget_is_not_shipped(tmp_path, tiny_prior):
    _, folder = tiny_prior
    at = _call_files(tmp_path, folder, extra_prior_file=bytearray(10**7))
    root = tmp_path / "repo"
    with pytest.raises(ValueError, match="over the 10000000 budget"):
        gpu_results.main([str(at), "--card", "h200", "--ship-prior", "--root", str(root)])
    assert not (root / "src").exists()


def _shipped_record(root, rmse):
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "channels_ti_prior.json").write_text(json.dumps({"heldout_reconstruction_rmse": rmse}))


def test_a_prior_the_call_did_not_evaluate_is_not_shipped(tmp_path, tiny_prior):
    # without its own record, the old record would be reported as the new prior's
    _, folder = tiny_prior
    at = _call_files(tmp_path, folder, evaluated=False)
    root = tmp_path / "repo"
    _shipped_record(root, 0.2)
    with pytest.raises(ValueError, match="holds no evaluated record"):
        gpu_results.main([str(at), "--card", "h200", "--ship-prior", "--root", str(root)])
    assert not (root / "src").exists()
    assert json.loads((root / "docs" / "channels_ti_prior.json").read_text())["heldout_reconstruction_rmse"] == 0.2


@pytest.mark.parametrize("shipped_rmse", [0.1, 0.05])
def test_a_prior_no_better_than_the_shipped_one_is_shipped_only_when_asked(tmp_path, tiny_prior, capsys,
                                                                          shipped_rmse):
    _, folder = tiny_prior
    at = _call_files(tmp_path, folder)             # held-out RMSE 0.1
    root = tmp_path / "repo"
    _shipped_record(root, shipped_rmse)
    with pytest.raises(ValueError, match=f"RMSE 0.1000 against the shipped {shipped_rmse:.4f}"):
        gpu_results.main([str(at), "--card", "h200", "--ship-prior", "--root", str(root)])
    assert not (root / "src").exists() and not (root / "docs" / "bench_inversion_h200_graphs.json").exists()
    assert gpu_results.main([str(at), "--card", "h200", "--ship-prior", "--even-if-worse",
                             "--root", str(root)]) == 0
    assert (root / "src" / "latentinv" / "data" / "channels_ti_prior" / "weights.safetensors").is_file()


def test_a_better_prior_replaces_the_shipped_one(tmp_path, tiny_prior, capsys):
    _, folder = tiny_prior
    at = _call_files(tmp_path, folder)
    root = tmp_path / "repo"
    _shipped_record(root, 0.165)
    assert gpu_results.main([str(at), "--card", "h200", "--ship-prior", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["prior"]["heldout_reconstruction_rmse"] == 0.1
    assert summary["prior"]["the shipped prior's before"] == 0.165
    assert json.loads((root / "docs" / "channels_ti_prior.json").read_text())["heldout_reconstruction_rmse"] == 0.1


def test_an_archive_that_escapes_its_folder_is_refused(tmp_path):
    at = tmp_path / "files_at"
    at.mkdir()
    _tar(at / "results.tar", {"../outside.json": b"{}"})
    with pytest.raises(tarfile.OutsideDestinationError):
        gpu_results.main([str(at), "--card", "h200", "--root", str(tmp_path / "repo")])
    assert not (tmp_path / "outside.json").exists()


def test_bad_card_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_results.main([str(tmp_path), "--card", "h200/../x"])
    assert "--card: letters, digits and '-' only" in capsys.readouterr().err


def test_a_prior_over_budget_gets_an_int8_encoder_and_a_record_of_the_stored_files(tmp_path, monkeypatch, capsys):
    """Over the budget: the encoder's largest tensor goes int8 until the files fit, the decoded models stay
    bit for bit, the stored files are evaluated again (here a stand-in) and the record says all of it, its
    encode shift on the held-out crops recomputed."""
    import subprocess

    X = (np.random.default_rng(0).random((6, 129 * 65)) > 0.7).astype(np.float32)
    prior = VAEPrior(n_components=2, architecture="mlp", image_shape=(129, 65), hidden_size=8, batch_size=3,
                     n_iterations=2, random_state=0, device="cpu").fit(X)
    folder = tmp_path / "call" / "channels_ti_prior"
    prior.save(folder, weights_dtype="float16")
    size = sum(f.stat().st_size for f in folder.iterdir())
    monkeypatch.setattr(gpu_results, "PRIOR_BUDGET_BYTES", size - 1000)
    evaluated = []

    real_run = subprocess.run

    def evaluation(cmd, *args, **kwargs):       # train_default_prior.py --evaluate-only, on the stored files
        if "--evaluate-only" not in cmd:
            return real_run(cmd, *args, **kwargs)
        report = Path(cmd[cmd.index("--report") + 1])
        stored = VAEPrior.load(cmd[cmd.index("--out") + 1])
        evaluated.append(stored)
        (report / "channels_ti_prior.json").write_text(json.dumps({"machine": "here", "heldout_reconstruction_rmse": 0.09}))
    monkeypatch.setattr(subprocess, "run", evaluation)
    at = _call_files(tmp_path, folder)              # the call's record: held-out RMSE 0.1, machine absent
    root = tmp_path / "repo"
    _shipped_record(root, 0.165)
    assert gpu_results.main([str(at), "--card", "h200", "--ship-prior", "--root", str(root)]) == 0
    shipped_dir = root / "src" / "latentinv" / "data" / "channels_ti_prior"
    assert sum(f.stat().st_size for f in shipped_dir.iterdir()) <= size - 1000
    config = json.loads((shipped_dir / "config.json").read_text())
    encoder = {k: v for k, v in prior.module_.state_dict().items() if k.startswith("encoder.") and v.dim() >= 2}
    assert config["int8_tensors"] == [max(encoder, key=lambda k: encoder[k].numel())]     # one was enough
    shipped = VAEPrior.load(shipped_dir)
    assert len(evaluated) == 1
    z = np.random.default_rng(1).standard_normal((3, 2))
    np.testing.assert_array_equal(shipped.decode(z), VAEPrior.load(folder).decode(z))
    record = json.loads((root / "docs" / "channels_ti_prior.json").read_text())
    assert record["heldout_reconstruction_rmse"] == 0.09 and record["evaluated_on"] == "here"
    assert record["storage"]["int8_tensors"] == config["int8_tensors"]
    assert record["storage"]["evaluation_before_int8"]["heldout_reconstruction_rmse"] == 0.1
    # the encode shift on the 200 held-out crops, recomputed: largest and mean of |int8 - stored| latents
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from train_default_prior import held_out_truths
    held = held_out_truths(200, "channels_ti")
    shift = np.abs(shipped.encode(held) - VAEPrior.load(folder).encode(held))
    stored_shift = record["storage"]["encode_shift_on_heldout_crops"]
    assert stored_shift["max"] == pytest.approx(shift.max(), rel=1e-6) and shift.max() > 0
    assert stored_shift["mean"] == pytest.approx(shift.mean(), rel=1e-6) and shift.mean() < shift.max()
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert summary["prior"]["storage"]["int8_tensors"] == config["int8_tensors"]
    assert summary["prior"]["heldout_reconstruction_rmse"] == 0.09


def test_the_logs_name_no_machines_folders(tmp_path):
    at = tmp_path / "files_at"
    at.mkdir()
    root = gpu_results.ROOT
    (at / "tests.txt").write_text(f"{root}/tests/test_x.py:3: Warning\nSKIPPED {root.parent}/shared/data/mc1.npy absent\n")
    gpu_results.main([str(at), "--card", "h200", "--root", str(tmp_path / "repo")])
    text = (tmp_path / "repo" / "docs" / "gpu_call_h200.txt").read_text()
    assert "tests/test_x.py:3: Warning" in text and "../shared/data/mc1.npy" in text
    assert str(root) not in text and str(root.parent) not in text


def _sgan_parts(at, folder, part_bytes):
    """The sgan step's files: ``tar -C parent -czf - li_sgan | split -b part_bytes -d``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname="li_sgan")
    data = buffer.getvalue()
    for k in range(0, len(data), part_bytes):
        (at / f"sgan.tgz.part-{k // part_bytes:02d}").write_bytes(data[k:k + part_bytes])
    return -(-len(data) // part_bytes)


def test_the_trained_sgan_is_put_together_from_its_parts_and_checked(tmp_path, capsys):
    from latentinv import SGANPrior
    X = (np.random.default_rng(1).random((4, 40, 40)) > 0.7).astype(np.float32)
    sgan = SGANPrior(n_filters=2, training_latent_shape=(2, 2), batch_size=2, n_iterations=3, image_shape=(33, 33),
                     random_state=0, device="cpu").fit(X)
    sgan.save(tmp_path / "li_sgan")
    at = tmp_path / "files_at"
    at.mkdir()
    n_parts = _sgan_parts(at, tmp_path / "li_sgan", part_bytes=2000)
    assert n_parts >= 3                                    # parts in order: 00, 01, ... (10 sorts after 09)
    parts = {"carried_on_from": 0, "total": 1850, "iterations": 1850,
             "parts": [{"iterations": 150, "seconds": 8.1}, {"iterations": 1700, "seconds": 86.0}]}
    record = {"sgan_steps": [{"device": "NVIDIA H200", "batch": 32, "seconds_per_step": 0.05}],
              "patterns": {"sgan": "published network, 1850 iterations", "sgan_training_seconds": 95.0},
              "sgan_training": parts}
    _tar(at / "results.tar", {"./sgan/bench_prior_sgan.json": json.dumps(record).encode(),
                              "./sgan/reproduce/reproduction.md": b"# SGAN cases\n",
                              "./sgan/reproduce/reproduce_paper.json": json.dumps({"linear_cases_s": 71.5}).encode()})
    root = tmp_path / "repo"
    assert gpu_results.main([str(at), "--card", "h200", "--root", str(root)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):])
    out = root / ".gpu_data" / "sgan_h200"
    assert summary["trained SGAN"] == dict(folder=str(out), parts=n_parts, n_iterations=3, n_filters=2,
                                           image_shape=[33, 33])
    assert summary["SGAN training"]["seconds"] == 95.0 and summary["SGAN training"]["parts"] == parts
    assert summary["Tables 3-4, SGAN cases (s)"] == 71.5
    loaded = SGANPrior.load(out, device="cpu")
    z = np.random.default_rng(2).uniform(-1, 1, (2, loaded.n_components))
    np.testing.assert_array_equal(loaded.decode(z), sgan.decode(z))        # the same generator, bit for bit
    assert (root / "docs" / "bench_prior_sgan_h200.json").is_file()
    assert (root / "docs" / "reproduction_h200_sgan" / "reproduction.md").read_text() == "# SGAN cases\n"
    # a part lost on the way: the archive does not open, or its checksums do not match; never a silent prior,
    # and the SGAN already there is kept
    (at / "sgan.tgz.part-01").unlink()
    with pytest.raises(Exception):
        gpu_results.main([str(at), "--card", "h200", "--root", str(root)])
    np.testing.assert_array_equal(SGANPrior.load(out, device="cpu").decode(z), sgan.decode(z))
    # an archive that opens but whose weights were altered: refused by the checksums, the SGAN kept
    other = tmp_path / "altered"
    other.mkdir()
    (other / "li_sgan").mkdir()
    for f in (tmp_path / "li_sgan").iterdir():
        data = f.read_bytes()
        (other / "li_sgan" / f.name).write_bytes(data[:-8] + bytes(8) if f.name.endswith(".safetensors") else data)
    for part in at.glob("sgan.tgz.part-*"):
        part.unlink()
    _sgan_parts(at, other / "li_sgan", part_bytes=10**6)
    with pytest.raises(Exception, match="(?i)checksum|sha"):
        gpu_results.main([str(at), "--card", "h200", "--root", str(root)])
    np.testing.assert_array_equal(SGANPrior.load(out, device="cpu").decode(z), sgan.decode(z))


def test_a_damaged_record_is_said_and_the_rest_lands(tmp_path, capsys):
    """A bench record cut short (a step stopped while writing it) stopped gpu_results.py with a
    JSONDecodeError before the logs and the other records' summaries; it is named under "unreadable
    records" and the rest lands. The SGAN step's rates and the fastest rows (--sgan-rates, --layouts) are in
    the summary."""
    at = tmp_path / "files_at"
    at.mkdir()
    (at / "log.txt").write_text("[0 s] machine\n")
    bench = {"rows": [{"case": "sgan rate", "method": "SAnnn step, SGAN (float32)", "variant": "float32",
                       "ms_per_iteration": 50.0, "projected_column_s": 150.0},
                      {"case": "sgan fastest", "method": "bfloat16, cuDNN autotuned", "precision": "bfloat16",
                       "cudnn_autotune": True, "layout": []}]}
    _tar(at / "results.tar", {"./train/bench_training.json": b'{"rows": [{"variant": "float32", "ms_per',
                              "./bench/bench_inversion.json": json.dumps(bench).encode(),
                              "./reproduce/reproduce_paper.json": json.dumps({"linear_cases_s": 88.0}).encode()})
    root = tmp_path / "repo"
    assert gpu_results.main([str(at), "--card", "h200", "--root", str(root)]) == 0
    assert (root / "docs" / "gpu_call_h200.txt").is_file()
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{"):])
    assert list(summary["unreadable records"]) == ["bench_training.json"]
    assert summary["Tables 3-4, linear cases (s)"] == 88.0
    assert summary["SGAN step by variant (ms per iteration; column projected s; error)"] == {
        "float32": [50.0, 150.0, None]}
    assert summary["fastest arithmetic (gpu_plan.py tables)"] == {"sgan fastest": dict(
        method="bfloat16, cuDNN autotuned", precision="bfloat16", layout=[], cudnn_autotune=True)}
