"""benchmarks/reproduce_paper.py end to end on tiny settings (a tiny saved prior, one epoch)."""
import importlib.util
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from latentinv.datasets import PatchSampler, make_channel_image
from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.inversion import paper_slowness
from latentinv.operators import StraightRayOperator
from latentinv.prior import VAEPrior

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_paper.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_paper_tiny_run(script, tmp_path):
    # a binary "training image" large enough for the three test windows (corners up to 900)
    ti = (np.random.default_rng(3).random((1040, 980)) < 0.3).astype(np.float64)
    np.save(tmp_path / "ti.npy", ti)
    prior = VAEPrior(n_components=4, channels=(2, 2, 2, 2), hidden_size=4, batch_size=2,
                     n_iterations=2, random_state=0, device="cpu")
    prior.fit(PatchSampler(make_channel_image((160, 90), random_state=1), (129, 65), random_state=0))
    prior.save(tmp_path / "prior")
    out = tmp_path / "out"
    script.main(["--ti", str(tmp_path / "ti.npy"), "--prior", str(tmp_path / "prior"),
                 "--cases", "VSbrd,SAnnn", "--n-starts", "2", "--epochs", "1",
                 "--epochs-nonlinear", "1", "--nonlinear-starts", "1", "--device", "cpu",
                 "--out", str(out)])
    report = json.loads((out / "reproduce_paper.json").read_text())
    assert report["complete"] is True

    # Table 2 thresholds: data RMSE of the truth vs its encode-decode, recomputed here
    truths = np.stack([ti[r:r + h, c:c + w].reshape(-1) for r, c, h, w in script.TEST_WINDOWS])
    op = StraightRayOperator(Grid2D.paper(), CrossholeSurvey.paper(0.01, 6.49))
    loaded = VAEPrior.load(tmp_path / "prior")
    recon = loaded.decode(loaded.encode(truths))
    expected = np.sqrt(np.mean((op.response(paper_slowness(recon))
                                - op.response(paper_slowness(truths))) ** 2, axis=1))
    np.testing.assert_allclose(report["thresholds_linear"], expected, rtol=1e-6)

    rows = report["rows"]
    assert {(r["case"], r["noise"], r["truth"]) for r in rows} == {
        ("VSbrd", noisy, t) for noisy in (False, True) for t in (1, 2, 3)}
    for r in rows:
        assert 0.0 <= r["accepted"] <= 1.0 and r["iterations"] == 25
        # the noisy threshold is the clean one plus the noise level
        assert r["threshold"] == pytest.approx(expected[r["truth"] - 1] + 0.25 * r["noise"])
    assert "SAnnn" in report["skipped"] and "SGAN" in report["skipped"]["SAnnn"]
    assert report["reference_code"]["threshold_linear"]["2"] == 0.998
    assert len(report["nonlinear"]["thresholds"]) == 3 and report["nonlinear"]["iterations"] == 25
    for name in ("models_truth1.png", "histories_VSbrd_truth3_noisy.png", "fig10_nonlinear.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reproduce_paper_missing_image_is_a_clear_exit(script, tmp_path):
    with pytest.raises(SystemExit, match="training image .* not found"):
        script.main(["--ti", str(tmp_path / "absent.png"), "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("args, message", [
    (["--cases", "VSbrd,VSxyz"], "unknown cases"),
    (["--n-starts", "0"], "integer >= 1"),
    (["--nonlinear-starts", "-2"], "integer >= 1"),
    (["--iterations", "many"], "integer >= 1"),
    (["--sgan-module", "absent_sgan.py"], "--sgan-module: no file"),
    (["--prior", "absent_prior_dir"], "--prior: no directory"),
])
def test_reproduce_paper_bad_options_stop_before_training(script, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        script.main(args + ["--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2                      # argparse's usage error, nothing trained
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
