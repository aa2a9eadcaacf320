"""Figures return the data they were given, in the package's cell order and metric extent."""
import io
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from latentinv import plotting, toys
from latentinv.geometry import Grid2D, paper_crosshole


class LinearPrior:
    """A stand-in prior: decode(Z) = sigmoid(Z @ B) with a fixed matrix, so outputs are known."""

    def __init__(self, shape=(9, 5), n_components=4, seed=0):
        self.image_shape = shape
        self.n_components = n_components
        self.B = np.random.default_rng(seed).standard_normal((n_components, shape[0] * shape[1]))

    def decode(self, Z):
        return 1.0 / (1.0 + np.exp(-np.asarray(Z, dtype=float) @ self.B))

    def sample(self, n, random_state=None):
        Z = np.random.RandomState(random_state).standard_normal((n, self.n_components))
        return self.decode(Z)


def _image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def _png_ok(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    data = buf.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    Image.open(io.BytesIO(data)).verify()


def test_plot_model_image_is_model_in_cell_order_with_metric_extent():
    grid = Grid2D(7, 4, cell_size=(0.5, 0.25), origin=(1.0, 2.0))
    model = np.arange(grid.n_cells, dtype=float) / grid.n_cells
    fig = plotting.plot_model(model, grid)
    assert isinstance(fig, Figure)
    (ax,) = _image_axes(fig)
    img = ax.images[0]
    np.testing.assert_array_equal(np.asarray(img.get_array()), grid.to_image(model))
    # row 0 on top: the depth axis grows downwards, x from origin to origin + width
    assert img.get_extent() == [1.0, 3.0, 3.75, 2.0]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]
    assert ax.get_aspect() == 1.0
    _png_ok(fig)


def test_plot_model_sensors_and_rays_match_survey():
    grid, survey = paper_crosshole()
    model = np.zeros(grid.n_cells)
    fig = plotting.plot_model(model, grid, survey=survey, rays=True, colorbar=False)
    (ax,) = fig.axes
    (rays,) = ax.collections
    segs = np.array(rays.get_segments())
    assert segs.shape == (survey.n_data, 2, 2)
    np.testing.assert_allclose(segs[:, 0], survey.source_positions)
    np.testing.assert_allclose(segs[:, 1], survey.receiver_positions)
    src_line = [ln for ln in ax.lines if ln.get_label() == "sources"][0]
    np.testing.assert_allclose(src_line.get_xydata(), survey.sources)


def test_plot_model_into_given_axes_returns_its_figure():
    grid = Grid2D(3, 2)
    fig = Figure()
    ax = fig.add_subplot()
    out = plotting.plot_model(np.ones(6), grid, ax=ax, colorbar=False)
    assert out is fig


def test_plot_model_rejects_wrong_length_and_rays_without_survey():
    grid = Grid2D(3, 2)
    with pytest.raises(ValueError, match="last axis of length 6"):
        plotting.plot_model(np.ones(5), grid)
    with pytest.raises(ValueError, match="needs a survey"):
        plotting.plot_model(np.ones(6), grid, rays=True)


@pytest.mark.parametrize("n, ncols, rows", [(3, None, 1), (5, 2, 3), (7, 3, 3)])
def test_plot_models_one_axes_per_model_in_order(n, ncols, rows):
    grid = Grid2D(6, 3)
    models = np.random.default_rng(n).random((n, grid.n_cells))
    titles = [f"m{i}" for i in range(n)]
    fig = plotting.plot_models(models, grid, titles=titles, ncols=ncols)
    axes = _image_axes(fig)
    assert len(axes) == n
    for ax, m, t in zip(axes, models, titles):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), grid.to_image(m))
        assert ax.get_title() == t
    with pytest.raises(ValueError, match="2 titles for 3 models"):
        plotting.plot_models(models[:3], grid, titles=["a", "b"])


def test_plot_histories_lines_and_threshold():
    rmse = [np.linspace(5, 1, 30), np.linspace(4, 2, 30)]
    znorm = [np.linspace(0, 4, 30), np.linspace(1, 4.4, 30)]
    fig = plotting.plot_histories(rmse, znorm, threshold=1.5, n_components=20)
    assert len(fig.axes) == 2
    ax_r, ax_z = fig.axes
    curves = [ln for ln in ax_r.lines if len(ln.get_xdata()) == 30]
    assert len(curves) == 2
    np.testing.assert_array_equal(curves[1].get_ydata(), rmse[1])
    np.testing.assert_array_equal(curves[0].get_xdata(), np.arange(1, 31))
    thr = [ln for ln in ax_r.lines if ln.get_label().startswith("threshold")]
    assert thr and np.allclose(thr[0].get_ydata(), 1.5)
    # ring radius of a 20-D standard normal: E[chi_20] = sqrt(2) Gamma(10.5) / Gamma(10)
    (ring,) = [ln for ln in ax_z.lines if ln.get_linestyle() == ":"]
    from math import gamma, sqrt
    assert np.allclose(ring.get_ydata(), sqrt(2) * gamma(10.5) / gamma(10))
    # one flat history and no ||z|| -> one axes
    fig1 = plotting.plot_histories(list(np.linspace(3, 1, 10)))
    assert len(fig1.axes) == 1 and len(fig1.axes[0].lines) == 1
    with pytest.raises(ValueError, match="2 RMSE histories but 1"):
        plotting.plot_histories(rmse, znorm[:1])


def test_plot_samples_shows_prior_samples():
    prior = LinearPrior()
    fig = plotting.plot_samples(prior, n=5, random_state=3, ncols=3)
    axes = _image_axes(fig)
    assert len(axes) == 5
    expected = prior.sample(5, random_state=3).reshape(5, 9, 5)
    for ax, e in zip(axes, expected):
        np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), e)


def test_plot_latent_traversal_moves_one_dimension_per_row():
    prior = LinearPrior()
    fig = plotting.plot_latent_traversal(prior, dims=(1, 3), steps=5, span=2.0)
    axes = _image_axes(fig)
    assert len(axes) == 10
    # panel (row 1, step 4): z = 2 e_3
    z = np.zeros(4)
    z[3] = 2.0
    np.testing.assert_allclose(np.asarray(axes[9].images[0].get_array()),
                               prior.decode(z[None])[0].reshape(9, 5))
    # the middle column is the origin for every row
    np.testing.assert_allclose(np.asarray(axes[2].images[0].get_array()),
                               np.full((9, 5), 0.5))
    with pytest.raises(ValueError, match="out of range"):
        plotting.plot_latent_traversal(prior, dims=(4,))


def test_make_eight_manifold_lies_on_lemniscate():
    X = toys.make_eight_manifold(500, noise=0.0, scale=2.0, random_state=1)
    x, y = X.T
    # lemniscate of Bernoulli: (x^2 + y^2)^2 = a^2 (x^2 - y^2) with a = scale
    np.testing.assert_allclose((x ** 2 + y ** 2) ** 2, 4.0 * (x ** 2 - y ** 2), atol=1e-12)
    assert np.abs(x).max() <= 2.0 + 1e-12
    assert np.allclose(toys.make_eight_manifold(10, random_state=4),
                       toys.make_eight_manifold(10, random_state=4))


def test_toy_vae_autoencoder_reconstructs_and_is_deterministic():
    X = toys.make_eight_manifold(300, noise=0.05, random_state=0)
    a = toys.fit_toy_vae(X, alpha=0.0, beta=0.0, hidden_size=32, n_iterations=150,
                        learning_rate=1e-2, random_state=0)
    b = toys.fit_toy_vae(X, alpha=0.0, beta=0.0, hidden_size=32, n_iterations=150,
                        learning_rate=1e-2, random_state=0)
    assert a.history_["loss"] == b.history_["loss"]
    rec = a.decode(a.encode(X))
    # a 2-D latent autoencoder (no KL, no noise) should reproduce 2-D data far better than the mean
    assert np.mean((rec - X) ** 2) < 0.1 * np.mean((X - X.mean(0)) ** 2)


def test_plot_manifold_deformation_panels():
    X = toys.make_eight_manifold(200, random_state=0)
    fig = plotting.plot_manifold_deformation(settings=((1.0, 1.0), (0.0, 0.0)), X=X,
                                             n_iterations=20, grid_lines=4)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        np.testing.assert_array_equal(ax.collections[0].get_offsets(), X)
        assert len(ax.lines) == 2 * 4


def test_sgd_toy_ring_gradient_and_paths():
    problem = toys.ToyLatentProblem()
    assert problem.misfit(problem.z_true) == pytest.approx(0.0, abs=1e-12)
    paths = toys.sgd_toy_paths(problem, [[0.3, 0.2]], regularization="ring", lam=1.0, lr=0.01,
                               batch_size=None, n_epochs=3)
    assert paths.shape == (1, 4, 2)
    # full-batch step 1 equals a hand-computed gradient step
    import torch
    z = torch.tensor([0.3, 0.2], dtype=torch.float64, requires_grad=True)
    W, b, G, d = problem._torch()
    loss = ((G @ torch.tanh(W @ z + b) - d) ** 2).sum() / problem.n_data \
        + (torch.linalg.norm(z) - toys.ring_radius(2)) ** 2
    (g,) = torch.autograd.grad(loss, z)
    np.testing.assert_allclose(paths[0, 1], [0.3, 0.2] - 0.01 * g.numpy(), rtol=1e-12)
    fig = plotting.plot_sgd_toy(problem, regularizations=("none", "ring"), n_starts=3, n_epochs=2,
                                resolution=21)
    assert len(fig.axes) == 3  # two panels + colour bar


def _summary(**kwargs):
    grid, survey = paper_crosshole()
    rng = np.random.default_rng(0)
    truth = (rng.random(grid.n_cells) < 0.2).astype(float)
    models = {"straight": rng.random(grid.n_cells), "shortest-path": rng.random(grid.n_cells)}
    rmse = {"straight": [np.linspace(3, 1, 20)], "shortest-path": [np.linspace(3, 1, 20)] * 2}
    zn = {"straight": [np.linspace(0, 4, 20)], "shortest-path": [np.linspace(0, 4, 20)] * 2}
    fig = plotting.plot_inversion_summary(truth, models, grid, rmse, zn,
                                          {"straight": 1.0, "shortest-path": 0.5}, survey=survey,
                                          n_components=20, **kwargs)
    return fig, grid, survey, truth, models


def _colorbar_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_plot_inversion_summary_layout_in_model_values():
    fig, grid, survey, truth, models = _summary(velocities=None)
    axes = _image_axes(fig)
    assert len(axes) == 3
    np.testing.assert_array_equal(np.asarray(axes[0].images[0].get_array()), grid.to_image(truth))
    np.testing.assert_array_equal(np.asarray(axes[2].images[0].get_array()),
                                  grid.to_image(models["shortest-path"]))
    (cbar,) = _colorbar_axes(fig)
    assert cbar.get_ylabel() == "model value (1 = channel)"
    _png_ok(fig)


def test_plot_inversion_summary_shows_velocity_in_m_per_ns():
    # the paper's map: model value 1 = slow channel 0.06 m/ns, 0 = background 0.08 m/ns
    fig, grid, survey, truth, models = _summary()
    axes = _image_axes(fig)
    assert len(axes) == 3
    truth_panel = np.asarray(axes[0].images[0].get_array())
    assert set(np.unique(truth_panel)) == {0.06, 0.08}
    np.testing.assert_allclose(truth_panel[grid.to_image(truth) == 1.0], 0.06)
    np.testing.assert_allclose(np.asarray(axes[1].images[0].get_array()),
                               0.08 - 0.02 * grid.to_image(models["straight"]), rtol=1e-12)
    assert axes[1].images[0].get_clim() == (0.06, 0.08)
    (cbar,) = _colorbar_axes(fig)
    assert cbar.get_ylabel() == "velocity (m/ns)"
    assert cbar.get_ylim() == pytest.approx((0.06, 0.08))
    _png_ok(fig)


def test_plot_inversion_summary_draws_boreholes_and_every_sensor():
    fig, grid, survey, truth, models = _summary()
    for ax in _image_axes(fig):
        (src,) = [ln for ln in ax.lines if ln.get_label() == "sources"]
        (rec,) = [ln for ln in ax.lines if ln.get_label() == "receivers"]
        assert len(src.get_xdata()) == 25 and len(rec.get_xdata()) == 25      # the paper's survey
        np.testing.assert_allclose(src.get_xydata(), survey.sources)
        np.testing.assert_allclose(rec.get_xydata(), survey.receivers)
        holes = [ln for ln in ax.lines if ln.get_linestyle() == "-" and np.ptp(ln.get_xdata()) == 0]
        assert sorted(ln.get_xdata()[0] for ln in holes) == [0.0, 6.5]      # two boreholes
    # one legend for the sensors, below the models
    (legend,) = [lg for sf in fig.subfigs for lg in sf.legends]
    assert [t.get_text() for t in legend.get_texts()] == ["boreholes", "sources", "receivers"]


def test_plot_inversion_summary_draws_no_borehole_through_surface_sensors():
    """Surface sources (one sensor per x) and a receiver borehole: one borehole line, at the receivers."""
    from latentinv.geometry import CrossholeSurvey
    grid = Grid2D(30, 60, 0.2)
    survey = CrossholeSurvey(np.column_stack([np.arange(1.0, 11.0), np.zeros(10)]),
                             np.column_stack([np.full(6, 12.0), np.arange(0.5, 6.0)]))
    model = np.random.default_rng(0).random(grid.n_cells)
    fig = plotting.plot_inversion_summary(None, {"a": model}, grid, {"a": [np.ones(3)]}, survey=survey)
    (ax,) = _image_axes(fig)
    holes = [ln for ln in ax.lines if ln.get_linestyle() == "-" and np.ptp(ln.get_xdata()) == 0]
    assert [ln.get_xdata()[0] for ln in holes] == [12.0]
    (src,) = [ln for ln in ax.lines if ln.get_label() == "sources"]
    np.testing.assert_allclose(src.get_xydata(), survey.sources)      # the sources are still drawn


def test_plot_inversion_summary_writes_each_models_rmse_on_its_panel():
    fig, grid, survey, truth, models = _summary()
    axes = _image_axes(fig)
    assert not [t for t in axes[0].texts if t.get_gid() == "model_rmse"]      # not on the truth
    for ax, name in zip(axes[1:], models):
        (text,) = [t.get_text() for t in ax.texts if t.get_gid() == "model_rmse"]
        # uniform random values against a 0/1 truth: expected RMSE sqrt(1/3), computed here
        rmse = float(np.sqrt(np.mean((models[name] - truth) ** 2)))
        assert abs(rmse - np.sqrt(1 / 3)) < 0.01
        assert text == f"model RMSE {rmse:.3f}\n({0.02 * rmse:.4f} m/ns)"


def test_plot_inversion_summary_labels_mu_chi_and_thresholds():
    fig, *_ = _summary()
    ax_rmse, ax_z = [ax for ax in fig.axes if ax.get_xlabel() == "iteration"]
    (mu,) = [ln for ln in ax_z.lines if ln.get_linestyle() == ":"]
    from math import gamma, sqrt
    assert np.allclose(mu.get_ydata(), sqrt(2) * gamma(10.5) / gamma(10))    # E||z||, z ~ N(0, I_20)
    assert mu.get_label().startswith(r"$\mu_\chi$ = 4.42")
    assert "20-D standard normal" in mu.get_label()
    assert ax_z.get_legend() is not None
    labels = [t.get_text() for t in ax_rmse.get_legend().get_texts()]
    assert "straight threshold 1 ns" in labels and "shortest-path threshold 0.5 ns" in labels


def test_plot_inversion_summary_rejects_bad_velocities():
    with pytest.raises(ValueError, match=r"velocities must be \(v_channel, v_background\).*got 0.06"):
        _summary(velocities=0.06)
    with pytest.raises(ValueError, match="two different positive numbers"):
        _summary(velocities=(0.06, -0.08))


def _posterior_result():
    """A 4 x 3 grid, the generator that drew them, and a stand-in LatentSampler result of 2 surveys x 3
    chains with random maps and 5 model samples per survey."""
    from types import SimpleNamespace

    grid = Grid2D(4, 3, 1.0)
    rng = np.random.default_rng(0)
    # the std of a model value in [0, 1] is at most 0.5, the std panel's scale
    maps = {k: rng.uniform(0, hi, (2, grid.n_cells))
            for k, hi in (("mean", 1.0), ("std", 0.5), ("channel_probability", 1.0))}
    result = SimpleNamespace(**maps, model_samples=rng.uniform(0, 1, (2, 5, grid.n_cells)), method="pcn",
                             n_chains=3, samples=np.zeros((2, 3, 7, 2)),
                             acceptance_rate=np.array([[0.2, 0.3, 0.25], [0.1, 0.2, 0.3]]))
    return grid, rng, result


def test_plot_posterior_panels_are_the_result_maps():
    grid, rng, result = _posterior_result()
    truth = rng.uniform(0, 1, grid.n_cells)
    fig = plotting.plot_posterior(result, grid, survey=1, truth=truth, n_samples=2)
    images = [ax.images[0] for ax in _image_axes(fig)]
    expected = [truth, result.mean[1], result.std[1], result.channel_probability[1],
                *result.model_samples[1][:2]]
    assert len(images) == len(expected)
    for img, model in zip(images, expected):
        np.testing.assert_array_equal(np.asarray(img.get_array()), grid.to_image(model))
    assert "acceptance 0.10-0.30" in fig._suptitle.get_text()
    _png_ok(fig)
    with pytest.raises(ValueError, match=r"plot_posterior: survey must be an int in \[0, 2\), got 2"):
        plotting.plot_posterior(result, grid, survey=2)


# ------------------------------------------------------------ the trial of 2026-12-01 (plotting, toys)
def test_plot_model_refuses_swapped_equal_or_nan_colour_limits():
    """vmin=1, vmax=0 drew a colour bar from -0.1 to 1 (vmin NaN: -0.1 to 0.1) without a word."""
    grid = Grid2D(3, 2)
    for vmin, vmax in ((1.0, 0.0), (0.5, 0.5), (np.nan, 1.0), (0.0, np.inf)):
        with pytest.raises(ValueError, match=r"plot_model: vmin and vmax must be finite with vmin < vmax"):
            plotting.plot_model(np.ones(6), grid, vmin=vmin, vmax=vmax)
        with pytest.raises(ValueError, match=r"plot_models: vmin and vmax must be finite with vmin < vmax"):
            plotting.plot_models(np.ones((2, 6)), grid, vmin=vmin, vmax=vmax)
    fig = plotting.plot_model(np.ones(6), grid, vmin=-1.0, vmax=2.0)
    assert fig.axes[0].images[0].get_clim() == (-1.0, 2.0)


def test_a_model_as_an_image_of_the_grid_is_drawn_and_a_transposed_one_is_named():
    """A non-square grid with an origin and unequal cells; one marked cell at row 4, col 1. Before,
    an image of the grid's shape failed with Grid2D's 'last axis of length 24' (no function named)."""
    grid = Grid2D(6, 4, cell_size=(0.5, 0.25), origin=(1.0, 2.0))
    flat = np.zeros(grid.n_cells)
    flat[4 * grid.n_cols + 1] = 1.0
    image = grid.to_image(flat)
    for model in (flat, image):
        ax = plotting.plot_model(model, grid).axes[0]
        img = ax.images[0]
        a = np.asarray(img.get_array())
        x0, x1, z1, z0 = img.get_extent()
        ((i, j),) = np.argwhere(a == 1.0)
        # the marked cell's centre, read from the figure, is the grid's centre of that cell
        centre = (x0 + (j + 0.5) * (x1 - x0) / a.shape[1], z0 + (i + 0.5) * (z1 - z0) / a.shape[0])
        np.testing.assert_allclose(centre, grid.cell_centers[4 * grid.n_cols + 1])
        np.testing.assert_allclose(centre, (1.75, 3.125))
    with pytest.raises(ValueError, match=r"plot_model: model must be .* 24 cells .* \(6, 4\).* got shape "
                                         r"\(4, 6\).*transposed"):
        plotting.plot_model(image.T, grid)
    # a stack of images, and one image, to plot_models
    fig = plotting.plot_models(np.stack([image, 1 - image]), grid)
    arrays = [np.asarray(ax.images[0].get_array()) for ax in _image_axes(fig)]
    assert len(arrays) == 2
    np.testing.assert_array_equal(arrays[1], 1 - image)
    assert len(_image_axes(plotting.plot_models(image, grid))) == 1
    with pytest.raises(ValueError, match=r"plot_models: models must be .* got shape \(2, 4, 6\)"):
        plotting.plot_models(np.stack([image.T, image.T]), grid)


def test_plot_models_refuses_bad_ncols_and_a_string_of_titles():
    """ncols=0 and ncols=-3 gave one column without a word; 'abc' gave the titles 'a', 'b', 'c'."""
    grid = Grid2D(3, 2)
    models = np.ones((3, 6))
    for ncols in (0, -3, "a", 1.5, True):
        with pytest.raises(ValueError, match=r"plot_models: ncols must be an int >= 1 or None, got"):
            plotting.plot_models(models, grid, ncols=ncols)
    with pytest.raises(ValueError, match=r"plot_models: titles must be a sequence of 3 str"):
        plotting.plot_models(models, grid, titles="abc")
    # more columns than models: one row of n
    fig = plotting.plot_models(models, grid, ncols=10)
    assert fig.axes[0].get_gridspec().get_geometry() == (1, 3)


def test_prior_panels_refuse_a_grid_of_another_shape_than_the_prior():
    """A VAE of (129, 65) models drawn on Grid2D(65, 129) (the same number of cells) was reshaped to
    65 x 129 without a word: every panel a scramble of the model."""
    prior = LinearPrior(shape=(9, 5))
    for grid in (Grid2D(5, 9), Grid2D(3, 3)):
        with pytest.raises(ValueError, match=r"plot_samples: grid.shape .* the prior's models are \(9, 5\)"):
            plotting.plot_samples(prior, n=2, grid=grid)
        with pytest.raises(ValueError, match=r"plot_latent_traversal: grid.shape .* the prior's models are "
                                             r"\(9, 5\)"):
            plotting.plot_latent_traversal(prior, dims=(0,), grid=grid)
    fig = plotting.plot_samples(prior, n=2, grid=Grid2D(9, 5, 0.5, origin=(1.0, 2.0)), ncols=2)
    assert fig.axes[0].images[0].get_extent() == [1.0, 3.5, 6.5, 2.0]
    for ncols in (0, -1):
        with pytest.raises(ValueError, match=r"plot_samples: ncols must be an int >= 1, got"):
            plotting.plot_samples(prior, n=2, ncols=ncols)
    with pytest.raises(ValueError, match=r"plot_latent_traversal: z0 must have shape \(4,\).*got shape \(3,\)"):
        plotting.plot_latent_traversal(prior, z0=np.zeros(3))
    with pytest.raises(ValueError, match=r"plot_latent_traversal: dims must name at least one"):
        plotting.plot_latent_traversal(prior, dims=())
    with pytest.raises(ValueError, match=r"plot_latent_traversal: span must be a finite number"):
        plotting.plot_latent_traversal(prior, span=np.nan)


class UniformPrior(LinearPrior):
    """An SGAN-like stand-in: latents uniform in [-1, 1], decode records the latents it is given."""
    latent_distribution = "uniform"

    def decode(self, Z):
        self.last_Z = np.asarray(Z, dtype=float)
        return super().decode(Z)


def test_latent_traversal_of_a_uniform_prior_stays_in_its_box():
    """The default span=3 walked an SGAN's latents to +-3, three times outside the box [-1, 1] the
    prior draws from, under the label 'prior standard deviations'."""
    prior = UniformPrior()
    fig = plotting.plot_latent_traversal(prior, dims=(0, 2), steps=5)
    assert prior.last_Z.min() == -1.0 and prior.last_Z.max() == 1.0
    assert [ax.get_title() for ax in _image_axes(fig)][:5] == ["z0=-1.0", "z0=-0.5", "z0=+0.0", "z0=+0.5",
                                                               "z0=+1.0"]
    with pytest.raises(ValueError, match=r"plot_latent_traversal: span=3.0 .* outside .*\[-1, 1\]"):
        plotting.plot_latent_traversal(prior, span=3.0)
    with pytest.raises(ValueError, match=r"plot_latent_traversal: .*z0.* outside .*\[-1, 1\]"):
        plotting.plot_latent_traversal(prior, span=0.5, z0=np.full(4, 0.8))
    # a normal prior keeps the default of 3 standard deviations
    normal = LinearPrior()
    plotting.plot_latent_traversal(normal, dims=(0,), steps=3)
    fig = plotting.plot_latent_traversal(normal, dims=(0,), steps=3)
    assert [ax.get_title() for ax in _image_axes(fig)] == ["z0=-3.0", "z0=+0.0", "z0=+3.0"]


def _uniform_mean_norm(d):
    """E||z|| for z uniform in [-1, 1]^d, independently of latentinv: closed forms for d = 1 (E|u| = 1/2)
    and d = 2 (the mean distance from a square's centre, (sqrt(2) + asinh(1)) / 3), else a Monte Carlo
    mean of 200000 draws (standard error below 6e-4 for d = 20) and its tolerance."""
    if d == 1:
        return 0.5, 1e-9
    if d == 2:
        return (np.sqrt(2) + np.arcsinh(1)) / 3, 1e-9
    z = np.random.default_rng(0).uniform(-1, 1, (200_000, d))
    return float(np.linalg.norm(z, axis=1).mean()), 3e-3


@pytest.mark.parametrize("d", [1, 2, 20])
def test_the_latent_norm_line_is_the_mean_norm_of_the_priors_latents(d):
    """The line was E[chi_d], a standard normal's, for every prior: sqrt(20) ~ 4.4 where an SGAN's uniform
    latents in [-1, 1]^20 have ||z|| near sqrt(20 / 3) ~ 2.58."""
    from math import gamma, sqrt
    h = [np.linspace(0.5, 3.0, 5)]
    grid = Grid2D(4, 3, 1.0)
    m = np.random.default_rng(0).random(grid.n_cells)
    expected = {"normal": (sqrt(2) * gamma((d + 1) / 2) / gamma(d / 2), 1e-12), "uniform": _uniform_mean_norm(d)}
    for dist, (value, tol) in expected.items():
        figures = [plotting.plot_histories(h, h, n_components=d, latent_distribution=dist),
                   plotting.plot_inversion_summary(None, {"a": m}, grid, {"a": h}, {"a": h}, n_components=d,
                                                   latent_distribution=dist)]
        for fig in figures:
            ax_z = [ax for ax in fig.axes if ax.get_ylabel() == "||z||"][0]
            (line,) = [ln for ln in ax_z.lines if ln.get_linestyle() == ":"]
            assert np.allclose(line.get_ydata(), value, rtol=0, atol=tol), (dist, fig)
            kind = "standard normal" if dist == "normal" else "uniform in $[-1, 1]^{" + str(d) + "}$"
            assert line.get_label().endswith(f"mean $\\|z\\|$ of a {d}-D {kind}")
    if d == 20:      # Jensen: E||z|| < sqrt(E||z||^2) = sqrt(d / 3), by ~ Var(||z||) / (2 sqrt(d / 3)) = 0.013
        assert 0.005 < sqrt(d / 3) - expected["uniform"][0] < 0.02
    with pytest.raises(ValueError, match=r"plot_histories: latent_distribution must be 'normal' \(a VAE's "
                                         r"latents\) or 'uniform' \(an SGAN's, in \[-1, 1\]\), got 'gaussian'"):
        plotting.plot_histories(h, h, n_components=d, latent_distribution="gaussian")
    # without the line too (a misspelt value passed until n_components was given)
    with pytest.raises(ValueError, match=r"plot_histories: latent_distribution must be .* got 'Uniform'"):
        plotting.plot_histories(h, h, latent_distribution="Uniform")
    with pytest.raises(ValueError, match=r"plot_inversion_summary: latent_distribution must be .* got 'sgan'"):
        plotting.plot_inversion_summary(None, {"a": np.zeros(12)}, Grid2D(4, 3, 1.0), {"a": [h]}, {"a": [h]},
                                        latent_distribution="sgan")


def test_plot_histories_refuses_3d_histories_and_draws_one_threshold_per_history():
    """A (2, 3, 4) array was drawn as two histories of 12 iterations; a threshold per survey was a
    bare TypeError; a NaN threshold drew 'threshold nan ns'."""
    with pytest.raises(ValueError, match=r"plot_histories: rmse_histories must be 1-D .* or 2-D .*"
                                         r"got an array of shape \(2, 3, 4\)"):
        plotting.plot_histories(np.ones((2, 3, 4)))
    h = np.array([[5.0, 4.0, 3.0, 2.0], [6.0, 5.0, np.nan, np.nan]])       # a stopped start, NaN-padded
    fig = plotting.plot_histories(h, threshold=[2.5, 3.0], labels=["a", "b"])
    ax = fig.axes[0]
    curves = [ln for ln in ax.lines if not ln.get_label().startswith("threshold")]
    thr = [ln for ln in ax.lines if ln.get_label().startswith("threshold")]
    assert [ln.get_ydata()[0] for ln in thr] == [2.5, 3.0]
    assert [ln.get_color() for ln in thr] == [ln.get_color() for ln in curves]
    assert [ln.get_label() for ln in thr] == ["threshold a 2.5 ns", "threshold b 3 ns"]
    for bad in (np.nan, [1.0, 2.0, 3.0], "a", -1.0):
        with pytest.raises(ValueError, match=r"plot_histories: threshold must be"):
            plotting.plot_histories(h, threshold=bad)
    for bad in (0, -1, 2.5, "3"):
        with pytest.raises(ValueError, match=r"n_components must be an int >= 1"):
            plotting.plot_histories(h, h, n_components=bad)


def test_plot_posterior_refuses_a_bool_survey_and_a_truth_of_another_shape():
    """survey=True was taken as survey 1 (then failed as 'expected one model ... (1, 2, 24)');
    a truth of two surveys, or one cell short, got Grid2D's message naming no function."""
    grid, rng, result = _posterior_result()
    with pytest.raises(ValueError, match=r"plot_posterior: survey must be an int in \[0, 2\), got True"):
        plotting.plot_posterior(result, grid, survey=True)
    for truth in (np.ones(11), np.ones((2, 12))):
        with pytest.raises(ValueError, match=r"plot_posterior: truth must be .* 12 cells"):
            plotting.plot_posterior(result, grid, truth=truth)
    with pytest.raises(ValueError, match=r"plot_posterior: n_samples must be an int >= 0, got -1"):
        plotting.plot_posterior(result, grid, n_samples=-1)
    fig = plotting.plot_posterior(result, grid, truth=grid.to_image(np.ones(12)))
    labels = [ax.get_xlabel() for ax in _colorbar_axes(fig)]
    assert labels == ["std of the model value", "P(model value > 0.5)"]


def test_plot_inversion_summary_refuses_bad_models_and_thresholds():
    """models as an array was an AttributeError ('no attribute items'); a NaN threshold drew a line
    labelled 'nan ns'; a truth one cell short got Grid2D's message."""
    grid = Grid2D(4, 3, 1.0)
    m = np.random.default_rng(0).random(grid.n_cells)
    with pytest.raises(ValueError, match=r"plot_inversion_summary: models must be a dict of name -> model"):
        plotting.plot_inversion_summary(None, np.stack([m, m]), grid)
    with pytest.raises(ValueError, match=r"plot_inversion_summary: nothing to draw"):
        plotting.plot_inversion_summary(None, {}, grid)
    with pytest.raises(ValueError, match=r"plot_inversion_summary: truth must be .* 12 cells"):
        plotting.plot_inversion_summary(m[:-1], {"a": m}, grid)
    with pytest.raises(ValueError, match=r"plot_inversion_summary: models\['a'\] must be .* 12 cells"):
        plotting.plot_inversion_summary(m, {"a": m[:-1]}, grid)
    for bad in (np.nan, [1.0, 2.0], -1.0):
        with pytest.raises(ValueError, match=r"plot_inversion_summary: thresholds\['a'\] must be"):
            plotting.plot_inversion_summary(m, {"a": m}, grid, {"a": [np.ones(3)]}, thresholds={"a": bad})


def test_summary_and_histories_refuse_what_they_would_have_ignored():
    """znorm_histories without rmse_histories, a threshold or a ||z|| history for a name with no RMSE
    history, and n_components without znorm_histories were ignored without a word."""
    grid = Grid2D(4, 3, 1.0)
    m, h = np.random.default_rng(0).random(grid.n_cells), [np.linspace(3.0, 1.0, 5)]
    summary = plotting.plot_inversion_summary
    with pytest.raises(ValueError, match=r"plot_inversion_summary: znorm_histories needs rmse_histories \(the "
                                         r"\|\|z\|\| panel is drawn beside the RMSE panel\), got "
                                         r"znorm_histories for \['a'\] and rmse_histories=None"):
        summary(None, {"a": m}, grid, None, {"a": h})
    with pytest.raises(ValueError, match=r"plot_inversion_summary: znorm_histories needs rmse_histories .* got "
                                         r"znorm_histories for \['a'\] and rmse_histories=\{\}"):
        summary(None, {"a": m}, grid, {}, {"a": h})               # empty: no RMSE panel either
    with pytest.raises(ValueError, match=r"plot_inversion_summary: thresholds must be for names of rmse_histories "
                                         r"\(\['a'\]\), got thresholds for \['b', 'c'\], which have no RMSE history"):
        summary(None, {"a": m}, grid, {"a": h}, thresholds={"a": 1.0, "b": 2.0, "c": None})
    with pytest.raises(ValueError, match=r"plot_inversion_summary: thresholds must be for names of rmse_histories "
                                         r"\(none\), got thresholds for \['a'\]"):
        summary(None, {"a": m}, grid, thresholds={"a": 1.0})
    with pytest.raises(ValueError, match=r"plot_inversion_summary: znorm_histories must be for names of "
                                         r"rmse_histories \(\['a'\]\), got znorm_histories for \['b'\], which have "
                                         r"no RMSE history"):
        summary(None, {"a": m}, grid, {"a": h}, {"a": h, "b": h})   # drawn in black under no name
    with pytest.raises(ValueError, match=r"plot_inversion_summary: n_components needs znorm_histories \(its line "
                                         r"is drawn on the \|\|z\|\| panel\), got n_components=4 and no znorm_histories"):
        summary(None, {"a": m}, grid, {"a": h}, n_components=4)
    with pytest.raises(ValueError, match=r"plot_histories: n_components needs znorm_histories \(its line is drawn "
                                         r"on the \|\|z\|\| panel\), got n_components=4 and no znorm_histories"):
        plotting.plot_histories(h, n_components=4)


@pytest.mark.parametrize("cell_size", [0.001, 0.1, 2.0])
def test_summary_pads_the_x_axis_in_proportion_to_the_grid(cell_size):
    """A survey widened the x-axis by a fixed 0.15 m on each side: 1.5 widths of a millimetre grid."""
    from latentinv.geometry import CrossholeSurvey
    grid = Grid2D(20, 10, cell_size, origin=(3 * cell_size, 0.0))
    x0, width, height = grid.origin[0], grid.width, grid.height
    survey = CrossholeSurvey(np.column_stack([np.full(3, x0), np.linspace(0.1, 0.9, 3) * height]),
                             np.column_stack([np.full(3, x0 + width), np.linspace(0.1, 0.9, 3) * height]))
    model = np.random.default_rng(0).random(grid.n_cells)
    fig = plotting.plot_inversion_summary(None, {"a": model}, grid, survey=survey)
    (ax,) = _image_axes(fig)
    margin = 0.025 * width                            # a fortieth of the grid's width on each side
    assert ax.get_xlim() == pytest.approx((x0 - margin, x0 + width + margin), rel=1e-12)
    assert ax.get_ylim() == pytest.approx((height, 0.0))


def test_nan_cells_are_drawn_blank_with_a_warning_that_counts_them():
    """NaN (and infinite) cells were drawn transparent (blank) and the summary's model RMSE read "nan",
    without a word."""
    import warnings
    grid = Grid2D(4, 3, 1.0)
    m = np.random.default_rng(0).random(grid.n_cells)
    m[[1, 5]], m[7] = np.nan, np.inf
    with pytest.warns(RuntimeWarning, match=r"^plot_model: model has 3 NaN or infinite cells of 12: drawn "
                                            r"blank") as caught:
        plotting.plot_model(m, grid)
    assert [w.filename for w in caught] == [__file__]         # the warning points at the caller's line
    with pytest.warns(RuntimeWarning, match=r"^plot_models: models\[1\] has 3 NaN or infinite cells of 12") as caught:
        plotting.plot_models([np.zeros(12), m], grid)
    assert len(caught) == 1
    with pytest.warns(RuntimeWarning, match=r"^plot_inversion_summary: models\['a'\] has 3 NaN or infinite cells of "
                                            r"12: drawn blank \(transparent\); numbers computed from it \(its model "
                                            r"RMSE\) are not finite") as caught:
        fig = plotting.plot_inversion_summary(np.zeros(12), {"a": m, "b": np.ones(12)}, grid)
    assert len(caught) == 1                                   # not for the truth nor for "b"
    with pytest.warns(RuntimeWarning, match=r"^plot_inversion_summary: models\['a'\] has 3 NaN") as caught:
        plotting.plot_inversion_summary(None, {"a": m}, grid)     # no truth: the first panel is a model's
    assert len(caught) == 1
    texts = [t.get_text() for ax in _image_axes(fig) for t in ax.texts if t.get_gid() == "model_rmse"]
    assert texts[0].startswith("model RMSE nan") and texts[1].startswith("model RMSE 1.000")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plotting.plot_model(np.zeros(12), grid)               # no NaN, no warning


def test_colour_bar_of_plot_model_and_plot_models_names_what_is_drawn():
    """A slowness model (ns/m) drawn with vmin/vmax had a colour bar labelled 'model value'."""
    grid = Grid2D(3, 2)
    slowness = np.full(6, 14.0)
    fig = plotting.plot_model(slowness, grid, vmin=12.5, vmax=16.7, colorbar_label="slowness (ns/m)")
    (cbar,) = _colorbar_axes(fig)
    assert cbar.get_ylabel() == "slowness (ns/m)"
    fig = plotting.plot_models(np.stack([slowness] * 2), grid, vmin=12.5, vmax=16.7,
                               colorbar_label="slowness (ns/m)")
    (cbar,) = _colorbar_axes(fig)
    assert cbar.get_ylabel() == "slowness (ns/m)"
    # the default still says model value
    (cbar,) = _colorbar_axes(plotting.plot_model(np.ones(6), grid))
    assert cbar.get_ylabel() == "model value"


def test_toy_figures_name_their_bad_parameters():
    """regularizations="ring" ran 'r', 'i', 'n', 'g' and failed at 'r'; an empty one, or settings=(),
    was matplotlib's 'Number of columns must be a positive integer, not 0'; resolution=1 contourf's
    '(2, 2) shaped array'; span=0 drew with singular limits; grid_lines=0 drew no grid; settings=(1, 1)
    was "'int' object is not iterable"; 3-D data were drawn as their first two coordinates."""
    problem = toys.ToyLatentProblem()
    fig = plotting.plot_sgd_toy(problem, regularizations="ring", n_starts=2, n_epochs=1, resolution=11)
    assert [ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>"] == ["regularisation: ring"]
    for kw, match in ((dict(regularizations=()), r"plot_sgd_toy: regularizations must name at least one"),
                      (dict(resolution=1), r"plot_sgd_toy: resolution must be an int >= 2, got 1"),
                      (dict(span=0.0), r"plot_sgd_toy: span must be a finite number > 0, got 0.0"),
                      (dict(n_starts=0), r"plot_sgd_toy: n_starts must be an int >= 1, got 0")):
        with pytest.raises(ValueError, match=match):
            plotting.plot_sgd_toy(problem, **{"n_epochs": 1, "resolution": 11, **kw})
    X = toys.make_eight_manifold(50, random_state=0)
    for kw, match in ((dict(settings=()), r"plot_manifold_deformation: settings must be .* got \(\)"),
                      (dict(settings=(1, 1)), r"plot_manifold_deformation: settings must be .* got \(1, 1\)"),
                      (dict(grid_lines=0), r"plot_manifold_deformation: grid_lines must be an int >= 2"),
                      (dict(span=-1.0), r"plot_manifold_deformation: span must be a finite number > 0"),
                      (dict(X=np.ones((50, 3))), r"plot_manifold_deformation: X must have shape \(n_samples, 2\)")):
        with pytest.raises(ValueError, match=match):
            plotting.plot_manifold_deformation(**{"settings": ((1.0, 1.0),), "X": X, "n_iterations": 2, **kw})


def test_cells_outside_the_colour_scale_are_counted_in_a_warning():
    """imshow draws values beyond [vmin, vmax] in the limits' colours without a word: slownesses (12.5-16.7
    ns/m) passed as model values drew a uniform bright model."""
    grid = Grid2D(3, 2)
    slowness = 1 / np.array([0.06, 0.08, 0.06, 0.07, 0.08, 0.06])
    with pytest.warns(RuntimeWarning, match=r"plot_model: model has 6 cells of 6 outside the colour scale "
                                            r"\[vmin, vmax\] = \[0, 1\] \(values 12.5 to 16.67\)"):
        plotting.plot_model(slowness, grid)
    with pytest.warns(RuntimeWarning, match=r"plot_model: model has 2 cells of 6 outside the colour scale "
                                            r"\[vmin, vmax\] = \[0.06, 0.07\] \(values 0.06 to 0.08\)"):
        plotting.plot_model(1 / slowness, grid, vmin=0.06, vmax=0.07)    # the two 0.08s
    with pytest.warns(RuntimeWarning, match=r"plot_models: models\[1\] has 2 cells of 6 outside"):
        plotting.plot_models([np.full(6, 0.5), [0.5, -0.2, 0.5, 1.3, 0.5, 0.5]], grid)
    # one cell 1e-4 beyond the top counts (the slack is 1e-6 of the scale); the values named are the finite
    # ones (a NaN cell has its own warning); both warnings point at the caller's line
    with pytest.warns(RuntimeWarning, match=r"plot_model: model has 1 NaN or infinite cells of 6"), \
            pytest.warns(RuntimeWarning, match=r"plot_model: model has 1 cells of 6 outside the colour scale "
                                               r"\[vmin, vmax\] = \[0, 1\] \(values 0 to 1\)") as caught:   # 1.0001 to 4 digits
        plotting.plot_model(np.array([0.0, 1.0001, np.nan, 0.5, 0.5, 0.5]), grid)
    assert len(caught) == 2 and [w.filename for w in caught] == [__file__, __file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plotting.plot_model(np.array([0.0, 1.0, 1 + 1e-7, -1e-7, 0.5, 0.5]), grid)   # rounding at the limits
        plotting.plot_model(1 / slowness, grid, vmin=0.06, vmax=0.08)
        # the slack scales with the colour scale: velocities (m/s) in float32 round by 2.4e-4 at 3000
        plotting.plot_model(np.float32([1000, 3000.0002, 2000, 2000, 2000, 2000]), grid, vmin=1000, vmax=3000)


def test_the_colour_scale_warning_names_vmin_and_vmax_only_where_they_can_be_passed():
    """plot_inversion_summary and plot_posterior draw on a fixed colour scale: the warning told their callers
    to "pass vmin and vmax", which neither takes."""
    grid = Grid2D(3, 2)
    with pytest.warns(RuntimeWarning, match=r"plot_inversion_summary: models\['a'\] has 1 cells of 6 outside the "
                                            r"colour scale .*plot_inversion_summary's colour scale is fixed "
                                            r"\(plot_model takes vmin and vmax\)$"):
        plotting.plot_inversion_summary(None, {"a": np.array([0.0, 1.5, 0.5, 0.5, 0.5, 0.5])}, grid, velocities=None,
                                        show_model_rmse=False)
    with pytest.warns(RuntimeWarning, match=r"for values in other units pass vmin and vmax$"):
        plotting.plot_model(np.array([0.0, 1.5, 0.5, 0.5, 0.5, 0.5]), grid)
