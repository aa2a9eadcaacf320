"""benchmarks/reproduce_paper.py: the paper's truths, Table 1's settings, the report side by side.

End to end on tiny settings (a tiny saved prior, one epoch), plus the transcription of the paper's
tables checked against the paper's text where it is available.
"""
import importlib.util
import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from latentinv.datasets import PatchSampler, make_channel_image
from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.inversion import PAPER_CASES, paper_slowness
from latentinv.operators import StraightRayOperator
from latentinv.prior import VAEPrior

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "paper" / "lopez-alvis-2021.md"
TEST_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "paper_test_models"
TI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "channels_ti.png"


def _load(name):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load("reproduce_paper")


# the tests whose runs draw the figures (Figs. 7-10 of the VAE cases and the nonlinear one; Fig. 8 with the
# SGAN's): drawing took 30 of a run's 35 s (matplotlib's constrained layout), and the others check the record
DRAWS_FIGURES = {"test_reproduce_paper_tiny_run", "test_sgan_cases_run_with_a_saved_sgan_prior_and_the_published_starts"}


@pytest.fixture(autouse=True)
def _figures_only_where_drawn(request, monkeypatch):
    if "script" in request.fixturenames and request.function.__name__ not in DRAWS_FIGURES:
        monkeypatch.setattr(request.getfixturevalue("script"), "save_figures", lambda *a, **k: [])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random binary training image holding the paper's windows, its mc crops as 'published'
    files, fake published starts and noise, and a tiny saved prior."""
    root = tmp_path_factory.mktemp("tiny")
    ti = (np.random.default_rng(3).random((1640, 2030)) < 0.3).astype(np.float64)
    np.save(root / "ti.npy", ti)
    models = root / "test_models"
    models.mkdir()
    windows = [(1135, 1658), (1502, 1958), (582, 503)]
    for k, (r, c) in enumerate(windows):
        np.save(models / f"mc{k + 1}.npy", ti[r:r + 129, c:c + 65])
    prior = VAEPrior(n_components=4, channels=(2, 2, 2, 2), hidden_size=4, batch_size=2,
                     n_iterations=2, random_state=0, device="cpu")
    prior.fit(PatchSampler(make_channel_image((160, 90), random_state=1), (129, 65), random_state=0))
    prior.save(root / "prior")
    rng = np.random.default_rng(7)
    np.save(models / "zinitVAE500.npy", rng.standard_normal((500, 4)))
    np.save(models / "noiserealz.npy", rng.standard_normal(625))
    return root, ti, windows


def _mc_truths_and_recon(root, windows, ti):
    """The mc truths cut from the training image at their windows, and their encode-decode by the saved prior."""
    mc = np.stack([ti[r:r + 129, c:c + 65].reshape(-1) for r, c in windows])
    loaded = VAEPrior.load(root / "prior")
    return mc, loaded.decode(loaded.encode(mc))


def test_truth_windows_are_the_published_crops(script):
    """mc1-mc3 are exact crops of the paper's training image at the script's windows."""
    if not (TI.is_file() and TEST_MODELS.is_dir()):
        pytest.skip("the paper's training image and test models are not beside this repository")
    from latentinv.datasets import load_image
    ti = load_image(TI)
    for k, (r, c, h, w) in enumerate(script.PAPER_TRUTH_WINDOWS):
        assert (h, w) == (129, 65)
        np.testing.assert_array_equal(ti[r:r + h, c:c + w], np.load(TEST_MODELS / f"mc{k + 1}.npy"))
    # the notebook's windows hold none of them (why the paper's exclusion is the default)
    for r, c, h, w in script.NOTEBOOK_WINDOWS:
        assert not any(np.array_equal(ti[r:r + h, c:c + w], np.load(TEST_MODELS / f"mc{k}.npy"))
                       for k in (1, 2, 3))


def test_reproduce_paper_tiny_run(script, tiny):
    root, ti, windows = tiny
    out = root / "out"
    script.main(["--ti", str(root / "ti.npy"), "--prior", str(root / "prior"),
                 "--test-models", str(root / "test_models"), "--published-starts", "--published-noise",
                 "--cases", "VSbnn,VSbrd,SAnnn", "--n-starts", "3", "--epochs", "1",
                 "--epochs-nonlinear", "1", "--device", "cpu", "--out", str(out)])
    record = json.loads((out / "reproduce_paper.json").read_text())
    assert record["complete"] is True
    assert record["mc_check"].startswith("checked")
    assert record["args"]["exclusion"] is None     # a loaded prior: its training's exclusion is not known here

    # Table 2 thresholds: data RMSE of the truth vs its encode-decode with the published kernel's
    # boundary convention, recomputed here for the mc truths
    mc, recon = _mc_truths_and_recon(root, windows, ti)
    op = StraightRayOperator(Grid2D.paper(), CrossholeSurvey.paper(0.01, 6.49), boundary_rays="upper_left")
    expected = np.sqrt(np.mean((op.response(paper_slowness(recon))
                                - op.response(paper_slowness(mc))) ** 2, axis=1))
    np.testing.assert_allclose(record["table2"]["threshold"][:3], expected, rtol=1e-6)
    np.testing.assert_allclose(record["table2"]["constant_model_rmse"][:3], mc.std(axis=1), rtol=1e-12)

    # Tables 3-4: counts and means recomputed from the per-start misfits; noisy threshold + 0.25
    assert set(record["cases"]) == {"VSbnn", "VSbrd", "VSbrd_noise"}
    for key, cell in record["cases"].items():
        thr = np.asarray(record["table2"]["threshold"]) + (0.25 if key.endswith("noise") else 0.0)
        rm = np.asarray(cell["data_rmse"])
        assert rm.shape == (6, 3)
        assert cell["accepted"] == (rm <= thr[:, None]).sum(axis=1).tolist()
        np.testing.assert_allclose(cell["mean_rmse"], rm.mean(axis=1), rtol=1e-12)
        assert cell["iterations"] == 25
        # Table 1's step sizes reach the inverter unchanged (only the length is shortened)
        name = key.split("_")[0]
        settings = {k: v for k, v in PAPER_CASES[name].items() if k != "n_epochs"}
        assert {k: cell["settings"][k] for k in settings} == settings
        # the convergence check's record: the selected start's RMSE, the fall along the gradient, and
        # one ConvergenceWarning per case where a truth's fall passes the threshold
        conv = cell["convergence"]
        np.testing.assert_allclose(conv["selected_rmse"], np.nanmin(rm, axis=1), rtol=1e-12)
        np.testing.assert_allclose(conv["fall"], 1 - np.divide(conv["descent_rmse"], conv["selected_rmse"]),
                                   rtol=1e-12)
        assert all(ok or f > conv["drop"] for f, ok in zip(conv["fall"], conv["stationary"]))
        assert len(conv["warnings"]) == (not all(conv["stationary"]))
    assert "SAnnn" in record["skipped"] and "SGAN" in record["skipped"]["SAnnn"]
    assert len(record["nonlinear"]["threshold"]) == 6 and record["nonlinear"]["iterations"] == 25
    assert set(record["nonlinear"]["convergence"]) == {"false", "true"}

    # the report: every cell "latentinv | paper", the paper's own numbers beside ours
    md = (out / "reproduction.md").read_text()
    assert f"{record['table2']['threshold'][1]:.3f} \\| 0.998" in md            # Table 2, mc2
    assert f"{record['cases']['VSbrd']['accepted'][3]} \\| 100" in md            # Table 3, mv1
    assert f"{record['cases']['VSbnn']['mean_rmse'][0]:.3f} \\| 1.242" in md     # Table 4, mc1
    assert "skipped \\| 2" in md                                                 # SAnnn, mv1
    assert "Scale of this run" in md and "3 starts per truth" in md
    fall = record["cases"]["VSbrd_noise"]["convergence"]["fall"][4]
    assert f"| VSbrd (noise) | " in md and f"{100 * fall:.2f} %" in md          # the convergence check, mv2
    assert "| nonlinear VSbrd (noise) | " in md
    for name in ("fig7_truths.png", "fig8_mc2_histories.png", "fig9_vsbrd_models.png",
                 "fig10_nonlinear_models.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md

    # the report rendered again from the JSON record alone (e.g. into docs/) is the same report,
    # with its figure links relative to where it is written
    docs = root / "docs"
    docs.mkdir(exist_ok=True)
    _load("paper_report").main([str(out / "reproduce_paper.json"), "--report", str(docs / "r.md")])
    again = (docs / "r.md").read_text()
    assert again.replace("](../out/", "](") == md


def test_published_starts_are_the_first_latents(script, tiny, monkeypatch):
    """--published-starts hands the first N published latents to the inverter, in order."""
    root, _, _ = tiny
    seen = []
    real = script.LatentInverter

    class Spy(real):
        def fit(self, X, y=None):
            seen.append(None if self.initial_latents is None else np.array(self.initial_latents))
            return super().fit(X, y)

    monkeypatch.setattr(script, "LatentInverter", Spy)
    script.main(["--ti", str(root / "ti.npy"), "--prior", str(root / "prior"),
                 "--test-models", str(root / "test_models"), "--published-starts", "--cases", "VSbrd",
                 "--n-starts", "2", "--epochs", "1", "--no-nonlinear", "--device", "cpu",
                 "--out", str(root / "o2")])
    z = np.load(root / "test_models" / "zinitVAE500.npy")
    assert len(seen) == 2 and all(np.array_equal(s, z[:2]) for s in seen)


def test_first_start_continues_the_published_latents_and_the_layouts_reach_the_decoder(script, tiny, monkeypatch):
    """--first-start K hands the published latents [K, K + N) to the inverter; --layout turns on the
    decoder's switches (and --cudnn-benchmark cuDNN's autotuner); the record and the report's set-up
    say both."""
    import torch
    root, _, _ = tiny
    seen = []
    real = script.LatentInverter

    class Spy(real):
        def fit(self, X, y=None):
            decoder = next(m for m in self.prior.decoder_.modules() if type(m).__name__ == "ConvDecoder")
            seen.append((np.array(self.initial_latents), decoder.layout_fused_norm, decoder.layout_channels_last,
                         torch.backends.cudnn.benchmark, self.precision))
            return super().fit(X, y)

    monkeypatch.setattr(script, "LatentInverter", Spy)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    out = root / "o_first"
    script.main(["--ti", str(root / "ti.npy"), "--prior", str(root / "prior"),
                 "--test-models", str(root / "test_models"), "--published-starts", "--first-start", "3",
                 "--cases", "VSbrd", "--n-starts", "2", "--epochs", "1", "--no-nonlinear", "--device", "cpu",
                 "--layout", "fused_norm", "--cudnn-benchmark", "--out", str(out)])
    z = np.load(root / "test_models" / "zinitVAE500.npy")
    assert len(seen) == 2 and all(np.array_equal(s[0], z[3:5]) for s in seen)
    assert all(s[1:] == (True, False, True, "float32") for s in seen)
    record = json.loads((out / "reproduce_paper.json").read_text())
    assert record["args"]["first_start"] == 3 and record["args"]["layout"] == ["fused_norm"]
    text = (out / "reproduction.md").read_text()
    assert "the published initial latents zinitVAE500[3:5]" in text
    assert ("- Arithmetic: the VAE cases' decoder in layout fused_norm (asked; no effect: on the CPU the decoder "
            "runs its own CPU path); cuDNN's autotuner on (asked; no effect on the CPU)") in text


def test_the_arithmetic_line_says_what_could_not_act():
    """The set-up's arithmetic line named the VAE decoder's layout switches and cuDNN's autotuner of a CPU
    run as the run's arithmetic, and the SGAN's options of a run without an SGAN; none of them acted. On
    CUDA, and the SGAN's switches (its generator has no CPU path of its own), they did."""
    report = _load("paper_report")
    args = dict(device="auto", precision="bfloat16", layout=["fused_norm"], sgan_precision="float32",
                sgan_layout=["channels_last"], cudnn_benchmark=True)
    gpu = dict(args=args, machine=dict(cuda="NVIDIA H200"), sgan="SGANPrior saved in s")
    assert report._arithmetic(gpu) == [
        "- Arithmetic: the VAE cases' decoder in bfloat16; layout fused_norm; the SGAN cases' decoder in layout "
        "channels_last; cuDNN's autotuner on (float32 with the default kernels otherwise)."]
    cpu = dict(gpu, machine=dict(cuda=None), sgan=None)
    assert report._arithmetic(cpu) == [
        "- Arithmetic: the VAE cases' decoder in bfloat16; layout fused_norm (asked; no effect: on the CPU the "
        "decoder runs its own CPU path); the SGAN cases' decoder in layout channels_last (asked; no effect: no "
        "SGAN case ran); cuDNN's autotuner on (asked; no effect on the CPU) (float32 with the default kernels "
        "otherwise)."]
    assert report._arithmetic(dict(gpu, args=dict(args, device="cpu")))[0].count("asked; no effect") == 2


def test_a_failed_capture_runs_the_case_eagerly_and_says_so(script, tiny, monkeypatch, capsys):
    """--cuda-graphs on a machine where the capture fails (a RuntimeError from CUDA): that case runs
    eagerly, the record and the output say so, and the other cases still run from graphs."""
    root, _, _ = tiny
    real = script.LatentInverter

    failed = []

    class CaptureFailsOnce(real):     # on the CPU: runs eagerly, as if from graphs, but the first capture fails
        def fit(self, X, y=None):
            self.graphs_asked = self.cuda_graphs
            return real.fit(self.set_params(cuda_graphs=False), X, y)

        def invert(self, X):
            if self.graphs_asked and not failed:
                failed.append(1)
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
            result = real.invert(self, X)
            self.cuda_graphs = self.graphs_asked
            return result

    monkeypatch.setattr(script, "LatentInverter", CaptureFailsOnce)
    monkeypatch.setattr(script, "resolve_device", lambda device: script.torch.device("cuda"))  # as on a GPU
    out = root / "o_graphs"
    script.main(["--ti", str(root / "ti.npy"), "--prior", str(root / "prior"), "--test-models",
                 str(root / "test_models"), "--cases", "VSnnn,VSbrd", "--n-starts", "2", "--epochs", "1",
                 "--no-nonlinear", "--device", "cpu", "--cuda-graphs", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "[VSnnn] CUDA GRAPHS FAILED (RuntimeError: CUDA error: operation not permitted" in printed
    assert "eagerly after a failed capture: ['VSnnn']" in printed
    cases = json.loads((out / "reproduce_paper.json").read_text())["cases"]
    assert cases["VSnnn"]["cuda_graphs"] is False and "operation not permitted" in cases["VSnnn"]["cuda_graphs_error"]
    assert cases["VSbrd"]["cuda_graphs"] is True and "cuda_graphs_error" not in cases["VSbrd"]


@pytest.mark.parametrize("first", [0, 3])
def test_sgan_cases_run_with_a_saved_sgan_prior_and_the_published_starts(script, tiny, monkeypatch, first):
    """--sgan DIR runs SAnnn and SSbnd with the saved SGANPrior; --published-starts hands them the first
    N arrays of zinitSGAN500.npy, flattened in C order and mapped by --sgan-starts-map; with --first-start K
    the arrays [K, K + N), as the VAE cases' (a run adding starts to the SGAN columns)."""
    from latentinv.sgan import SGANPrior

    root, _, _ = tiny
    sgan = SGANPrior(n_filters=2, dilations=(), training_latent_shape=None, batch_size=2, n_iterations=1,
                     random_state=0, device="cpu")
    sgan.fit(PatchSampler(make_channel_image((160, 90), random_state=1), (129, 65), random_state=0))
    sgan.save(root / f"sgan{first}")
    u = np.random.default_rng(11).random((500, 5, 3))
    np.save(root / "test_models" / "zinitSGAN500.npy", u)
    seen = []
    real = script.LatentInverter

    class Spy(real):
        def fit(self, X, y=None):
            seen.append((type(self.prior).__name__, np.array(self.initial_latents)))
            return super().fit(X, y)

    monkeypatch.setattr(script, "LatentInverter", Spy)
    out = root / f"o_sgan{first}"
    script.main(["--ti", str(root / "ti.npy"), "--prior", str(root / "prior"), "--sgan", str(root / f"sgan{first}"),
                 "--test-models", str(root / "test_models"), "--published-starts", "--sgan-starts-map", "box",
                 "--first-start", str(first), "--cases", "SAnnn,SSbnd", "--n-starts", "2", "--epochs", "1",
                 "--no-nonlinear", "--device", "cpu", "--out", str(out)])
    assert [name for name, _ in seen] == ["SGANPrior", "SGANPrior"]
    for _, z in seen:
        np.testing.assert_array_equal(z, 2.0 * u[first:first + 2].reshape(2, 15) - 1.0)
    record = json.loads((out / "reproduce_paper.json").read_text())
    assert set(record["cases"]) == {"SAnnn", "SSbnd"} and not record["skipped"]
    assert "mapped to [-1, 1] by z = 2u - 1" in record["sgan_starts"]
    # the report's set-up names the SGAN cases' starts too (it named zinitVAE500 alone)
    starts = "[:2]" if first == 0 else "[3:5]"
    assert f"the SGAN cases: zinitSGAN500.npy{starts}" in (out / "reproduction.md").read_text()


def test_reference_vae_runs_the_paper_network(script, tiny, tmp_path):
    """--reference-vae: a state dict of the published layout (random weights here) is the prior."""
    import torch
    from latentinv.nn.reference import published_shapes

    root, _, _ = tiny
    gen = torch.Generator().manual_seed(0)
    state = {k: 0.05 * torch.randn(shape, generator=gen) for k, shape in published_shapes().items()}
    torch.save(state, tmp_path / "vae.pth")
    out = tmp_path / "out"
    script.main(["--ti", str(root / "ti.npy"), "--test-models", str(root / "test_models"),
                 "--reference-vae", str(tmp_path / "vae.pth"), "--cases", "VSbrd", "--n-starts", "1",
                 "--epochs", "1", "--no-nonlinear", "--device", "cpu", "--out", str(out)])
    record = json.loads((out / "reproduce_paper.json").read_text())
    assert record["prior"]["description"].startswith("the paper's trained VAE (vae.pth)")
    # the thresholds are those of that network, loaded independently
    prior = VAEPrior.from_reference_checkpoint(tmp_path / "vae.pth")
    truths = np.concatenate([np.stack([np.load(root / "test_models" / f"mc{k}.npy").reshape(-1)
                                       for k in (1, 2, 3)]),
                             script.generated_truths(prior, **script.MV_RULE)[0]])
    op = StraightRayOperator(Grid2D.paper(), CrossholeSurvey.paper(0.01, 6.49), boundary_rays="upper_left")
    recon = prior.decode(prior.encode(truths))
    expected = np.sqrt(np.mean((op.response(paper_slowness(recon))
                                - op.response(paper_slowness(truths))) ** 2, axis=1))
    np.testing.assert_allclose(record["table2"]["threshold"], expected, rtol=1e-6)


def test_a_wrong_training_image_is_caught(script, tiny, tmp_path):
    root, ti, _ = tiny
    np.save(tmp_path / "other.npy", 1.0 - ti)
    with pytest.raises(SystemExit, match="mc1: the crop .* differs"):
        script.main(["--ti", str(tmp_path / "other.npy"), "--prior", str(root / "prior"),
                     "--test-models", str(root / "test_models"), "--out", str(tmp_path / "o")])


def test_generated_truths_follow_the_rule(script):
    # interface density against a hand count: one vertical stripe -> 2 interfaces per row
    m = np.zeros((129, 65))
    m[:, 10:20] = 1.0
    assert script.interface_density(m[None])[0] == pytest.approx(2 * 129 / (129 * 65))
    m[60, :] = 1.0   # plus a full horizontal line: 2 per column outside the stripe, 0 at the stripe
    expected = (2 * 128 + 2 * 55) / (129 * 65)  # rows other than 60: 2 each; 55 columns cross row 60
    assert script.interface_density(m[None])[0] == pytest.approx(expected)

    class Prior:
        n_components, image_shape = 3, (129, 65)

        def decode(self, Z):
            # complexity grows with z[0]: a stripe of width depending on z
            w = np.clip((np.abs(Z[:, 0]) * 10).astype(int), 0, 60)
            out = np.zeros((len(Z), 129, 65))
            for i, k in enumerate(w):
                out[i, :, ::max(1, 61 - k)] = 1.0
            return out.reshape(len(Z), -1)

    models, c = script.generated_truths(Prior(), n_candidates=200, seed=5)
    allc = script.interface_density(Prior().decode(np.random.default_rng(5).standard_normal((200, 3))))
    for q, ci in zip((0.1, 0.5, 0.9), c):
        assert abs(ci - np.quantile(allc, q)) == pytest.approx(np.min(np.abs(allc - np.quantile(allc, q))))
    assert c[0] <= c[1] <= c[2]


def test_transcribed_tables_match_the_paper():
    """benchmarks/paper_report.py's Tables 2-4 against the paper's text, value by value."""
    if not PAPER.is_file():
        pytest.skip("the paper's text is not beside this repository")
    report = _load("paper_report")
    text = PAPER.read_text()

    def rows_after(caption_start):
        # the tab-separated rows just above a caption "Table N: ..."
        i = text.index(caption_start)
        block = text[:i].rstrip().split("\n\n")[-1]
        rows = {}
        for line in block.splitlines()[1:]:
            cells = line.split("\t")
            key = re.sub(r"[^a-z0-9]", "", re.sub(r"\\mathrm|_|\$|<sub>|</sub>", "", cells[0]))
            rows[key] = [float(x) for x in cells[1:]]
        return rows

    t2 = rows_after("Table 2:")
    for t in report.TRUTHS:
        assert [report.PAPER_TABLE2["threshold"][t], report.PAPER_TABLE2["model_rmse"][t]] == t2[t]
    t3 = rows_after("Table 3:")
    cols3 = [(c, False) for c in report.LINEAR_CASES] + [("VSbrd", True)]
    for t in report.TRUTHS:
        assert [report.PAPER_TABLE3[c][t] for c in cols3] == t3[t]
    t4 = rows_after("Table 4:")
    for t in report.TRUTHS:
        ours = ([report.PAPER_TABLE4[(c, False)][t] for c in report.LINEAR_CASES]
                + [report.PAPER_TABLE2["threshold"][t], report.PAPER_TABLE4[("VSbrd", True)][t]])
        assert ours == t4[t]


@pytest.mark.parametrize("args, message", [
    (["--cases", "VSbrd,VSxyz"], "unknown cases"),
    (["--n-starts", "0"], "integer >= 1"),
    (["--nonlinear-starts", "-2"], "integer >= 1"),
    (["--iterations", "many"], "integer >= 1"),
    (["--sgan-module", "absent_sgan.py"], "--sgan-module: no file"),
    (["--prior", "absent_prior_dir"], "--prior: no directory"),
    (["--sgan", "absent_sgan_dir"], "--sgan: no directory"),
    (["--reference-sgan", "absent.pth"], "--reference-sgan: no file"),
    (["--reference-vae", "absent.pth"], "--reference-vae: no file"),
    (["--published-starts", "--test-models", str(BENCH)], "--published-starts: needs zinitVAE500.npy"),
    (["--mv", "published", "--test-models", str(BENCH)], "--mv published: needs mv1.npy"),
    (["--exclusion", "nowhere"], "invalid choice"),
    (["--first-start", "3"], "--first-start 3: needs --published-starts"),
    (["--published-starts", "--first-start", "499", "--n-starts", "5"], "--first-start: expected 0 <= K <= 495"),
    # --n-starts' default (10; 2 with --quick) counts: K = 495 passed and failed at the first case, after training
    (["--published-starts", "--first-start", "495"], "--first-start: expected 0 <= K <= 490 (500 published "
                                                     "starts, --n-starts 10 of them, its default), got 495"),
    (["--published-starts", "--first-start", "499", "--quick"], "--first-start: expected 0 <= K <= 498"),
    (["--layout", "sideways"], "--layout: unknown switches ['sideways']"),
    (["--sgan-layout", "group_norm"], "--sgan-layout: unknown switches ['group_norm']"),
    (["--precision", "float16"], "invalid choice"),
    # --device and --cuda-graphs failed at the first case (a traceback after the prior's training)
    (["--device", "gpu"], "--device: device must be"),
    (["--device", "cpu", "--cuda-graphs"], "--cuda-graphs: CUDA graphs need a CUDA device; --device cpu is cpu"),
])
def test_reproduce_paper_bad_options_stop_before_training(script, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        script.main(args + ["--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2                      # argparse's usage error, nothing trained
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_more_drawn_starts_than_published_ones_are_not_a_first_start_error(script):
    """--n-starts 600 without --published-starts draws its starts: it was refused as "--first-start: expected
    0 <= K <= -100", a check of the published starts' range."""
    args = script.parse_args(["--n-starts", "600", "--test-models", str(BENCH)])
    assert args.n_starts == 600 and args.first_start == 0


@pytest.mark.parametrize("cases", ["", ",", " , "])
def test_reproduce_paper_no_cases_is_a_usage_error(script, tiny, tmp_path, capsys, cases):
    """--cases naming no case used to train a prior (here: load one) and then run nothing (exit 0)."""
    root, _, _ = tiny
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--cases", cases, "--ti", str(root / "ti.npy"), "--prior", str(root / "prior"),
                     "--test-models", str(root / "test_models"),
                     "--no-nonlinear", "--device", "cpu", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "--cases: expected a comma-separated list of" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # without --no-nonlinear, no linear case is the nonlinear case alone (the command of its CPU record)
    args = script.parse_args(["--cases", cases, "--ti", str(root / "ti.npy"), "--prior", str(root / "prior"),
                              "--out", str(tmp_path / "o")])
    assert args.cases == [] and not args.no_nonlinear


def test_reproduce_paper_an_absent_test_models_folder_given_is_a_usage_error(script, tiny, tmp_path, capsys):
    """A --test-models folder that is not there was taken silently ('mc1-mc3 not checked')."""
    root, _, _ = tiny
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--test-models", str(tmp_path / "absent_dir"), "--ti", str(root / "ti.npy"), "--prior",
                     str(root / "prior"), "--cases", "VSbrd", "--n-starts", "1", "--epochs", "1",
                     "--no-nonlinear", "--device", "cpu", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--test-models: no directory" in err and "absent_dir" in err
    assert not (tmp_path / "o").exists()


def test_reproduce_paper_a_saved_model_of_the_wrong_kind_is_a_usage_error(script, tiny, tmp_path, capsys):
    """--sgan given a VAEPrior's folder (or --prior a folder without a saved VAEPrior) stopped with a
    traceback from SGANPrior.load / VAEPrior.load, after the prior's training."""
    root, _, _ = tiny
    (tmp_path / "empty").mkdir()
    for args, says in ((["--sgan", str(root / "prior"), "--prior", str(root / "prior")],
                        "--sgan: expected a directory written by SGANPrior.save"),
                       (["--prior", str(tmp_path / "empty")], "--prior: expected a directory written by VAEPrior.save")):
        with pytest.raises(SystemExit) as exit_info:
            script.main(args + ["--ti", str(root / "ti.npy"), "--test-models", str(root / "test_models"),
                                "--cases", "VSbrd", "--n-starts", "1", "--epochs", "1", "--no-nonlinear",
                                "--device", "cpu", "--out", str(tmp_path / "o")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert says in err
        assert ("a saved VAEPrior" in err) if args[0] == "--sgan" else ("no config.json" in err)
    assert not (tmp_path / "o").exists()


def test_reproduce_paper_missing_image_is_a_clear_exit(script, tmp_path):
    with pytest.raises(SystemExit, match="training image .* not found"):
        script.main(["--ti", str(tmp_path / "absent.png"), "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("iterations, says", [(12000, "A less trained prior reconstructs less sharply"),
                                               (100_000, "The schedule is the paper's")])
def test_the_threshold_note_follows_the_priors_schedule(iterations, says):
    """A prior trained at the paper's schedule is not called less trained."""
    report = _load("paper_report")
    record = {"truth_names": ["mc1", "mc2"], "mv_source": "published", "cases": {}, "args": {"exclusion": "paper"},
              "table2": {"model_rmse": [0.10, 0.15], "threshold": [0.7, 1.0]},
              "prior": {"description": "a saved prior", "iterations": iterations}}
    lines = report.differences(record)
    assert says in lines[0] and ("less trained" in lines[0]) == (iterations < 100_000)


def _stand_in_result(data_rmse, models):
    """What a stand-in for LatentInverter's invert returns: the fields the script reads, the convergence
    check's as from a stationary fit (no step lowers the selected RMSE)."""
    best = np.nanargmin(data_rmse, axis=1)
    return type("Res", (), dict(data_rmse=data_rmse, models=models, n_surveys=len(data_rmse), best_start=best,
                                descent_rmse=data_rmse[np.arange(len(best)), best],
                                stationary=np.ones(len(best), bool)))


def test_summarize_counts_a_tie_as_accepted_and_means_over_starts(script):
    """Tables 3-4 of one case by hand: a start exactly at the threshold is accepted, Table 4 is the mean
    over starts (not the median), the best is the least, and each model is compared with its own truth."""
    class Res:
        data_rmse = np.array([[1.0, 2.0, 6.0], [0.25, 0.5, 1.5]])
        models = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])

    truths = np.array([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    cell = script.summarize(Res(), truths, np.array([2.0, 0.5]))
    assert cell["accepted"] == [2, 2]
    assert cell["mean_rmse"] == pytest.approx([3.0, 0.75], rel=1e-12)     # medians: 2.0, 0.5
    assert cell["best_rmse"] == [1.0, 0.25]
    assert cell["model_rmse"] == pytest.approx([np.sqrt(0.5), 0.0], abs=1e-12)


def test_the_noisy_column_inverts_the_published_noise_and_table2_is_each_truths_own(script, tiny, monkeypatch):
    """VSbrd's clean column inverts the clean data, its noisy column the same plus 0.25 ns x the published
    realization (one for every truth); Table 2's model RMSE and homogeneous baseline are each truth's own,
    from the clean data."""
    from latentinv.baselines import homogeneous_fit

    root, ti, windows = tiny
    seen = []
    real = script.LatentInverter

    class Spy(real):
        def fit(self, X, y=None):
            seen.append(np.array(X))
            return super().fit(X, y)

    monkeypatch.setattr(script, "LatentInverter", Spy)
    monkeypatch.setattr(script, "save_figures", lambda *a, **k: [])
    out = root / "o_noise"
    script.main(["--ti", str(root / "ti.npy"), "--prior", str(root / "prior"),
                 "--test-models", str(root / "test_models"), "--published-noise", "--cases", "VSbrd",
                 "--n-starts", "1", "--epochs", "1", "--no-nonlinear", "--device", "cpu", "--out", str(out)])
    record = json.loads((out / "reproduce_paper.json").read_text())
    mc, recon = _mc_truths_and_recon(root, windows, ti)
    op = StraightRayOperator(Grid2D.paper(), CrossholeSurvey.paper(0.01, 6.49), boundary_rays="upper_left")
    clean = op.response(paper_slowness(mc))
    noise = 0.25 * np.load(root / "test_models" / "noiserealz.npy")
    assert len(seen) == 2 and seen[0].shape == seen[1].shape == (6, 625)
    np.testing.assert_allclose(seen[0][:3], clean, rtol=1e-12)
    np.testing.assert_allclose(seen[1] - seen[0], np.tile(noise, (6, 1)), atol=1e-9)
    np.testing.assert_allclose(record["table2"]["model_rmse"][:3], np.sqrt(np.mean((recon - mc) ** 2, axis=1)),
                               rtol=1e-6)
    np.testing.assert_allclose(record["table2"]["homogeneous_data_rmse"][:3], homogeneous_fit(op, clean)[1],
                               rtol=1e-9)


def test_the_nonlinear_numbers_are_the_3_node_thresholds_and_the_runs_own(script, tiny, monkeypatch):
    """Fig. 10's numbers: data simulated with 2 secondary nodes (plus the published noise in the noisy run),
    the threshold the 3-node operator's encode-decode misfit (+ 0.25 ns with noise), the best RMSE the least
    over starts, the model RMSE against the truths. The inverter is a stand-in whose misfits are set by hand
    around the threshold."""
    from latentinv.operators import ShortestPathOperator

    root, ti, windows = tiny
    mc, recon = _mc_truths_and_recon(root, windows, ti)
    grid = Grid2D.paper()
    d_mc = ShortestPathOperator(grid, CrossholeSurvey.paper(0.0, 6.5), n_secondary_nodes=2).response(
        paper_slowness(mc))
    thr = np.sqrt(np.mean((ShortestPathOperator(grid, CrossholeSurvey.paper(0.0, 6.5), n_secondary_nodes=3)
                           .response(paper_slowness(recon)) - d_mc) ** 2, axis=1))
    seen = []

    class Inverter:
        n_iterations_ = 25

        def __init__(self, prior, operator, **kwargs):
            pass

        def fit(self, X):
            return self

        def invert(self, X):
            # start 0 between the threshold and the threshold + 0.25 ns, start 1 above both
            rm = np.tile([0.1, 0.4], (len(X), 1))
            rm[:3] += thr[:, None]
            res = _stand_in_result(rm, np.full((len(X), 129 * 65), 0.25 * (1 + len(seen))))
            seen.append((np.array(X), res))
            return res

    monkeypatch.setattr(script, "LatentInverter", Inverter)
    monkeypatch.setattr(script, "save_figures", lambda *a, **k: [])
    out = root / "o_nl"
    script.main(["--ti", str(root / "ti.npy"), "--prior", str(root / "prior"),
                 "--test-models", str(root / "test_models"), "--published-noise", "--cases", "SAnnn",
                 "--nonlinear-starts", "2", "--device", "cpu", "--out", str(out)])
    nl = json.loads((out / "reproduce_paper.json").read_text())["nonlinear"]
    (x_clean, r_clean), (x_noisy, r_noisy) = seen
    np.testing.assert_allclose(x_clean[:3], d_mc, rtol=1e-12)
    np.testing.assert_allclose(x_noisy - x_clean, np.tile(0.25 * np.load(root / "test_models" / "noiserealz.npy"),
                                                          (6, 1)), atol=1e-9)
    # the truths' encode-decode in a batch of 6 there, of 3 here: float32 kernels of some CPUs (AVX2) round
    # by batch size
    np.testing.assert_allclose(nl["threshold"][:3], thr, rtol=1e-6)
    assert nl["accepted"]["false"][:3] == [0, 0, 0] and nl["accepted"]["true"][:3] == [1, 1, 1]
    np.testing.assert_allclose(nl["best_rmse"]["false"][:3], thr + 0.1, rtol=1e-12)
    for key, res in (("false", r_clean), ("true", r_noisy)):
        np.testing.assert_allclose(nl["model_rmse"][key][:3], np.sqrt(np.mean((res.models[:3] - mc) ** 2, axis=1)),
                                   rtol=1e-9)


def _hand_record(**changes):
    """A hand-made run record of two truths (mc1, mv1) for paper_report, with ``changes`` over its keys."""
    record = {"args": {"boundary_rays": "upper_left", "published_starts": True, "published_noise": True,
                       "seed": 0, "exclusion": "paper"},
              "truth_names": ["mc1", "mv1"], "command": "c", "truth_windows": [], "mc_check": "checked",
              "mv_source": "published", "exclusion_text": "x", "iterations_linear": 25, "total_s": 60.0,
              "prior": {"description": "p", "training_s": 0.0, "iterations": 100_000}, "n_starts": 10,
              "device": "cpu", "machine": {"processor_name": "cpu", "cpu_count": 2, "cuda": None},
              "skipped": {}, "figures": []}
    record.update(changes)
    return record


def test_the_report_puts_each_number_beside_the_papers_own():
    """The report of a hand-made record: each noisy cell holds the noisy run's number beside the paper's noisy
    one, Table 4's threshold column the thresholds, Fig. 10's noise columns the noisy run's; the
    differences' ratios and percentages are ours over the paper's, of every start of every truth."""
    report = _load("paper_report")
    p3, p4, p2 = report.PAPER_TABLE3, report.PAPER_TABLE4, report.PAPER_TABLE2
    record = _hand_record(
        table2={"threshold": [0.5, 0.6], "model_rmse": [0.052, 0.114], "constant_model_rmse": [0.4, 0.3],
                "homogeneous_data_rmse": [2.0, 3.0]},
        case_columns=[("VSbnn", False), ("VSbrd", False), ("VSbrd", True)],
        cases={"VSbnn": {"accepted": [7, 9], "mean_rmse": [1.25, 1.5]},
               "VSbrd": {"accepted": [8, 6], "mean_rmse": [0.75, 0.5]},
               "VSbrd_noise": {"accepted": [3, 4], "mean_rmse": [1.0, 2.0]}},
        nonlinear={"threshold": [1.0, 2.0], "n_starts": 1, "iterations": 750, "lam": 1.0, "time_s": 1.0,
                   "best_rmse": {False: [1.5, 2.5], True: [1.75, 2.75]},
                   "accepted": {False: [1, 0], True: [0, 1]}, "model_rmse": {False: [0.2, 0.3]}})
    record["differences"] = report.differences(record)
    md = report.markdown_report(record)
    assert f"| mc1 | 7 \\| {p3[('VSbnn', False)]['mc1']} | 8 \\| 100 | 3 \\| 100 |" in md
    assert (f"| mv1 | 1.500 \\| {p4[('VSbnn', False)]['mv1']:.3f} | 0.500 \\| {p4[('VSbrd', False)]['mv1']:.3f} | "
            f"0.600 \\| {p2['threshold']['mv1']:.3f} | 2.000 \\| {p4[('VSbrd', True)]['mv1']:.3f} |") in md
    assert "| mc1 | 1.000 | 1.500 | 1 of 1 | 1.750 | 0 of 1 | 0.200 |" in md
    thr = [0.5 / p2["threshold"]["mc1"], 0.6 / p2["threshold"]["mv1"]]
    model = [0.052 / p2["model_rmse"]["mc1"], 0.114 / p2["model_rmse"]["mv1"]]     # 0.50 and 2.00
    assert f"model RMSE is {min(model):.2f}-{max(model):.2f} times" in md
    assert f"thresholds {min(thr):.2f}-{max(thr):.2f} times" in md
    noisy_paper = (p4[("VSbrd", True)]["mc1"] + p4[("VSbrd", True)]["mv1"]) / 2
    assert f"**VSbrd with noise (Table 4).** Mean over truths of the mean data RMSE: 1.500 ns against the paper's {noisy_paper:.3f}" in md
    assert f"**VSbnn (Table 3).** 80.0 % of starts accepted against the paper's {(35 + 75) / 2:.1f} %" in md


def test_epochs_shorten_every_case_to_the_same_iterations(script):
    """--epochs E: a mini-batch case runs E epochs of 25 batches, a full-batch case (VSnnn, SAnnn) 25 E epochs
    of one: 25 E iterations either way, at Table 1's step sizes; without it, Table 1's own settings."""
    assert script.case_settings("VSbrd", 2)["n_epochs"] == 2
    assert script.case_settings("SAnnn", 2)["n_epochs"] == script.case_settings("VSnnn", 2)["n_epochs"] == 50
    assert script.case_settings("SAnnn", None) == PAPER_CASES["SAnnn"]
    assert dict(script.case_settings("VSnnn", 2), n_epochs=3000) == PAPER_CASES["VSnnn"]


def test_reproduce_paper_with_the_shipped_prior(script, tmp_path):
    """--prior shipped inverts with VAEPrior.pretrained() (nothing trained) and the bundled image: the
    record says so, and its Table 2 thresholds of mc1-mc3 are those of the shipped prior's encode-decode
    with the published kernel's boundary rays, recomputed here."""
    from latentinv.datasets import PAPER_TRUTH_WINDOWS, load_channels_ti

    out = tmp_path / "out"
    (tmp_path / "none").mkdir()                             # no published test models: mc crops not checked
    script.main(["--prior", "shipped", "--cases", "VSbrd", "--n-starts", "1", "--epochs", "1", "--no-nonlinear",
                 "--test-models", str(tmp_path / "none"), "--device", "cpu", "--out", str(out)])
    record = json.loads((out / "reproduce_paper.json").read_text())
    assert "VAEPrior.pretrained()" in record["prior"]["description"] and record["prior"]["training_s"] == 0.0
    assert record["exclusion_text"].startswith("every crop overlapping the mc1-mc3 windows (the paper's protocol), "
                                               "and rows 2200-2499")
    with pytest.raises(SystemExit):              # the shipped prior was not trained with the notebook's windows
        script.parse_args(["--prior", "shipped", "--exclusion", "notebook"])
    assert not (out / "prior").exists()                     # nothing trained, nothing saved
    ti = load_channels_ti()
    mc = np.stack([ti[r:r + h, c:c + w].reshape(-1) for r, c, h, w in PAPER_TRUTH_WINDOWS.values()])
    prior = VAEPrior.pretrained(device="cpu")
    op = StraightRayOperator(Grid2D.paper(), CrossholeSurvey.paper(0.01, 6.49), boundary_rays="upper_left")
    expected = np.sqrt(np.mean((op.response(paper_slowness(prior.decode(prior.encode(mc))))
                                - op.response(paper_slowness(mc))) ** 2, axis=1))
    np.testing.assert_allclose(record["table2"]["threshold"][:3], expected, rtol=1e-5)
    np.testing.assert_allclose(expected, [0.70, 1.02, 2.23], atol=0.01)     # the README's numbers


def test_the_report_carries_the_baseline_warnings_beside_the_tables(script, tiny, tmp_path):
    """The run prints that its prior's encode-decode is no better than a constant or homogeneous model
    (so its thresholds, and every acceptance of Table 3, say little); reproduction.md, the file a reader
    keeps, left that out and showed the acceptances alone."""
    root, _, _ = tiny
    out = tmp_path / "o"
    script.main(["--ti", str(root / "ti.npy"), "--prior", str(root / "prior"), "--test-models",
                 str(root / "test_models"), "--cases", "VSbrd", "--n-starts", "1", "--epochs", "1",
                 "--no-nonlinear", "--device", "cpu", "--out", str(out)])
    record = json.loads((out / "reproduce_paper.json").read_text())
    assert record["baseline_warnings"]              # the tiny prior has learned nothing
    md = (out / "reproduction.md").read_text()
    table2, table3 = md.index("## Table 2"), md.index("## Table 3")
    for warning in record["baseline_warnings"]:
        assert warning in md[table2:table3]
    # and a report rendered again from the JSON (paper_report.py) keeps them
    again = tmp_path / "again.md"
    _load("paper_report").main([str(out / "reproduce_paper.json"), "--report", str(again)])
    assert all(w in again.read_text() for w in record["baseline_warnings"])


def test_a_loaded_prior_is_not_said_to_exclude_what_this_run_cannot_know(script, tiny, tmp_path):
    """--exclusion chooses the crops of a prior trained here. With --prior DIR nothing says which crops that
    prior was trained on, yet the report stated 'Training crops exclude every crop overlapping the mc1-mc3
    windows (the paper's protocol)', the option's default; it says so only when the user states it."""
    root, _, _ = tiny
    common = ["--ti", str(root / "ti.npy"), "--prior", str(root / "prior"), "--test-models",
              str(root / "test_models"), "--cases", "VSbrd", "--n-starts", "1", "--epochs", "1",
              "--no-nonlinear", "--device", "cpu"]
    script.main(common + ["--out", str(tmp_path / "a")])
    md = (tmp_path / "a" / "reproduction.md").read_text()
    assert "the paper's protocol" not in md and "overlapping mc1-mc3" not in md
    assert "not recorded with the loaded prior" in md
    script.main(common + ["--exclusion", "notebook", "--out", str(tmp_path / "b")])
    md = (tmp_path / "b" / "reproduction.md").read_text()
    assert "published notebook's windows" in md and "as stated with --exclusion" in md
    # a prior trained here still follows --exclusion, the paper's by default
    assert script.parse_args(["--iterations", "5"]).exclusion == "paper"


def test_the_record_names_the_code_that_ran(script, tiny, tmp_path):
    """The record named the machine and torch but not the latentinv that ran (its folder and commit):
    a run from a second checkout beside an editable install runs the installed tree, without a word."""
    import subprocess

    import latentinv

    root, _, _ = tiny
    out = tmp_path / "o"
    script.main(["--ti", str(root / "ti.npy"), "--prior", str(root / "prior"), "--test-models",
                 str(root / "test_models"), "--cases", "VSbrd", "--n-starts", "1", "--epochs", "1",
                 "--no-nonlinear", "--device", "cpu", "--out", str(out)])
    code = json.loads((out / "reproduce_paper.json").read_text())["machine"]["latentinv"]
    assert code["file"] == latentinv.__file__ and code["version"] == latentinv.__version__
    head = subprocess.run(["git", "-C", str(Path(latentinv.__file__).parent), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    assert code["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert f"latentinv {latentinv.__version__} from {latentinv.__file__}" in (out / "reproduction.md").read_text()


def test_a_start_without_a_finite_misfit_is_counted_and_said_under_table4(script):
    """Table 4's mean was np.nanmean: a start whose misfit is NaN dropped out of the mean without a word (the
    mean of the others shown as the mean of all), while Table 3 counted it rejected."""
    class Res:
        data_rmse = np.array([[1.0, np.nan, 3.0], [0.25, 0.5, 1.5]])
        models = np.zeros((2, 4))

    cell = script.summarize(Res(), np.zeros((2, 4)), np.array([2.0, 0.5]))
    assert cell["non_finite"] == [1, 0]
    assert cell["accepted"] == [1, 2]
    report = _load("paper_report")
    record = _hand_record(
        args={"boundary_rays": "split", "published_starts": False, "published_noise": False, "seed": 0,
              "exclusion": "paper"}, total_s=1.0, n_starts=3,
        table2={"threshold": [2.0, 0.5], "model_rmse": [0.1, 0.1], "constant_model_rmse": [0.4, 0.3],
                "homogeneous_data_rmse": [5.0, 5.0]},
        case_columns=[("VSbrd", False)], cases={"VSbrd": cell}, differences=[])
    md = report.markdown_report(record)
    t4 = md[md.index("## Table 4"):]
    assert "VSbrd: mc1: 1 of 3 starts ended without a finite data RMSE" in t4
    assert "mean of the other 2" in t4


def test_an_infinite_data_rmse_is_left_out_of_table4s_mean_as_a_nan_is():
    """A start whose data RMSE is +inf (a misfit that overflowed) is non-finite, as a NaN one: rejected in
    Table 3, counted, and left out of Table 4's mean. np.nanmean left the NaN out but kept the inf: the cell
    was inf, under a note saying it was the mean of the other starts. Hand values."""
    report = _load("paper_report")
    cell = report.start_summary([[1.0, np.inf, 3.0], [np.nan, 0.5, np.inf]], [2.0, 0.5])
    assert cell["non_finite"] == [1, 2] and cell["accepted"] == [1, 1]
    assert cell["mean_rmse"] == [2.0, 0.5] and cell["best_rmse"] == [1.0, 0.5]


def test_a_joined_records_report_lists_each_run_with_its_start_range_and_minutes():
    """A record joined by merge_reproductions.py: the set-up lists each run with its published starts
    [first, first + n), its command, code, machine and wall time in minutes (hand values); a machine
    whose process could run on fewer CPUs than the host's says so (it said the host's, os.cpu_count())."""
    report = _load("paper_report")
    runs = [dict(first_start=0, n_starts=5, command="python r.py --n-starts 5", total_s=90.0,
                 machine={"processor_name": "cpuA", "cpu_count": 2,
                          "latentinv": {"version": "0.1", "commit": "a" * 40, "dirty": False}}),
            dict(first_start=5, n_starts=5, command="python r.py --n-starts 5 --first-start 5", total_s=1500.0,
                 machine={"processor_name": "cpuB", "cpu_count": 16, "cpus_available": 4,
                          "latentinv": {"version": "0.2", "commit": "b" * 40, "dirty": True}})]
    cell = report.start_summary([[1.0, 3.0], [0.25, 0.5]], [2.0, 0.5])
    record = _hand_record(
        table2={"threshold": [2.0, 0.5], "model_rmse": [0.1, 0.1], "constant_model_rmse": [0.4, 0.3],
                "homogeneous_data_rmse": [5.0, 5.0]},
        case_columns=[("VSbrd", False)], cases={"VSbrd": cell}, differences=[], merged_from=runs)
    md = report.markdown_report(record)
    assert "Joined from 2 runs of the same experiment" in md
    assert ("- starts [0, 5): `python r.py --n-starts 5`; latentinv 0.1, commit aaaaaaaaaaaa; cpuA (2 cores); "
            "1.5 min.") in md
    assert ("- starts [5, 10): `python r.py --n-starts 5 --first-start 5`; latentinv 0.2, commit bbbbbbbbbbbb "
            "with uncommitted changes; cpuB (4 cores available of the host's 16); 25.0 min.") in md


def test_published_starts_reach_the_nonlinear_case_too(script, tiny, monkeypatch):
    """--published-starts: the nonlinear VSbrd runs (Fig. 10) start from the first --nonlinear-starts published
    latents as well (the published notebook's single start is zinitVAE500[0]), whatever --n-starts; the
    record says where its starts came from. Before, the nonlinear runs drew their starts from --seed while the
    report said 'the first N published initial latents'."""
    root, _, _ = tiny
    seen = []

    class Inverter:
        n_iterations_ = 25

        def __init__(self, prior, operator, initial_latents=None, **kwargs):
            seen.append(None if initial_latents is None else np.array(initial_latents))
            self.n_starts = kwargs["n_starts"]

        def fit(self, X):
            return self

        def invert(self, X):
            rm = np.ones((len(X), self.n_starts))
            return _stand_in_result(rm, np.zeros((len(X), 129 * 65)))

    monkeypatch.setattr(script, "LatentInverter", Inverter)
    monkeypatch.setattr(script, "save_figures", lambda *a, **k: [])
    out = root / "o_nl_starts"
    script.main(["--ti", str(root / "ti.npy"), "--prior", str(root / "prior"),
                 "--test-models", str(root / "test_models"), "--published-starts", "--cases", "",
                 "--n-starts", "1", "--nonlinear-starts", "2", "--device", "cpu", "--out", str(out)])
    z = np.load(root / "test_models" / "zinitVAE500.npy")
    assert len(seen) == 2 and all(s is not None and np.array_equal(s, z[:2]) for s in seen)
    nl = json.loads((out / "reproduce_paper.json").read_text())["nonlinear"]
    assert nl["starts"] == "zinitVAE500.npy[:2]"
    # a run of the nonlinear case alone has no Tables 3 and 4 (they were empty tables, with "None iterations")
    md = (out / "reproduction.md").read_text()
    assert "No case of Table 1 ran" in md and "## Table 3" not in md and "None iterations" not in md
    assert "(zinitVAE500.npy[:2])" in md
    # --first-start K moves the linear cases' starts, not the nonlinear case's (the notebook's zinitVAE500[0] on)
    seen.clear()
    script.main(["--ti", str(root / "ti.npy"), "--prior", str(root / "prior"),
                 "--test-models", str(root / "test_models"), "--published-starts", "--first-start", "3",
                 "--cases", "", "--n-starts", "1", "--nonlinear-starts", "2", "--device", "cpu", "--out", str(out)])
    assert len(seen) == 2 and all(s is not None and np.array_equal(s, z[:2]) for s in seen)
    assert json.loads((out / "reproduce_paper.json").read_text())["nonlinear"]["starts"] == "zinitVAE500.npy[:2]"
    # without --published-starts the nonlinear starts are drawn, and the record says so
    seen.clear()
    script.main(["--ti", str(root / "ti.npy"), "--prior", str(root / "prior"),
                 "--test-models", str(root / "test_models"), "--cases", "",
                 "--nonlinear-starts", "1", "--device", "cpu", "--out", str(out)])
    assert seen == [None, None]
    assert json.loads((out / "reproduce_paper.json").read_text())["nonlinear"]["starts"].startswith("drawn")


def test_the_convergence_section_gives_each_cases_falls_and_warnings():
    """The report's convergence table from a hand record: a case of a record written before the check (no
    ``convergence``) left out, the nonlinear case's noisy column under its JSON key "true", a truth that is
    not stationary marked, the count of ConvergenceWarnings, the largest fall over all the cells."""
    report = _load("paper_report")

    def conv(fall, stationary, n_warnings):
        return dict(drop=0.1, fall=fall, stationary=stationary, warnings=["w"] * n_warnings)

    record = {"truth_names": ["mc1", "mc2"],
              "cases": {"VSbnn": {"accepted": [1, 2]},
                        "VSbrd": {"convergence": conv([0.02, 0.15], [True, False], 1)},
                        "VSbrd_noise": {"convergence": conv([-0.001, 0.03], [True, True], 0)}},
              "nonlinear": {"convergence": {False: conv([0.5, 0.2], [True, True], 0),
                                            "true": conv([0.05, 0.01], [True, True], 0)}}}
    lines = report._convergence(record)
    assert lines[0] == "## The convergence check"
    assert "lowers the data RMSE by more than 10 %" in lines[2] and "(largest here: 50.00 %;" in lines[2]
    assert lines[4].split("\n") == [
        "| case | mc1 | mc2 | ConvergenceWarnings |", "|---|---|---|---|",
        "| VSbrd | 2.00 % | 15.00 % (not stationary) | 1 |",
        "| VSbrd (noise) | -0.10 % | 3.00 % | 0 |",
        "| nonlinear VSbrd | 50.00 % | 20.00 % | 0 |",
        "| nonlinear VSbrd (noise) | 5.00 % | 1.00 % | 0 |"]
    assert report._convergence({"truth_names": ["mc1"], "cases": {"VSbnn": {}}}) == []


def test_a_cases_warnings_are_recorded_and_still_shown(script):
    """shown_and_recorded_warnings: the block's warnings in ``caught`` (each ConvergenceWarning, the same
    one twice too), and shown after the block as without it."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with pytest.warns(Warning) as shown:
        with script.shown_and_recorded_warnings() as caught:
            for _ in range(2):
                warnings.warn("not minima of the data misfit", ConvergenceWarning)
            warnings.warn("another", UserWarning)
        assert [(w.category, str(w.message)) for w in caught] == [
            (ConvergenceWarning, "not minima of the data misfit")] * 2 + [(UserWarning, "another")]
    assert [(w.category, str(w.message)) for w in shown] == [(w.category, str(w.message)) for w in caught]
