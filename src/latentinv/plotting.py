"""Figures: models with sensors and rays, inversion histories, prior samples and the 2-D toy problems.

Every function returns a :class:`matplotlib.figure.Figure` and never calls ``show()``. Figures are
built with :class:`matplotlib.figure.Figure` directly (no pyplot state, no GUI backend needed); save
them with ``fig.savefig(path)``.

Models are flat vectors in the package's cell order (see :mod:`latentinv.geometry`), or their images
``(n_rows, n_cols)`` (row 0 at the top; a transposed image is refused), shown as images
with depth growing downwards (row 0 at the top), axes in metres and equal aspect. Values are the
prior's model values in [0, 1] (1 = channel) unless ``vmin``/``vmax`` say otherwise, or shown as
velocity (m/ns) where a function takes ``velocities=(v_channel, v_background)``: model value ``x``
is drawn as ``v_channel * x + v_background * (1 - x)``, the paper's map
(:func:`latentinv.inversion.paper_slowness` with :data:`PAPER_VELOCITIES`: 1 = slow channel,
0.06 m/ns; 0 = background, 0.08 m/ns).
"""
from __future__ import annotations

import warnings

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from ._checks import caller_stacklevel, check_int, check_real, is_int

__all__ = ["plot_model", "plot_models", "plot_histories", "plot_samples", "plot_latent_traversal",
           "plot_manifold_deformation", "plot_sgd_toy", "plot_inversion_summary", "plot_posterior",
           "PAPER_VELOCITIES"]

MODEL_CMAP = "viridis"
#: Velocities (m/ns) of model value 1 (channel) and 0 (background) in the paper's test case.
PAPER_VELOCITIES = (0.06, 0.08)
#: Colour map of velocity panels: reversed, so that slow channels look as in the model-value panels.
VELOCITY_CMAP = "viridis_r"
#: x-axis margin on each side of a model panel that shows a survey, as a fraction of the grid's width:
#: sensors on the grid's edges are drawn whole (0.16 m on the paper's 6.5 m grid)
SURVEY_MARGIN = 0.025


def _check_velocities(velocities):
    if velocities is None:
        return None
    try:
        v = tuple(float(x) for x in velocities)
    except (TypeError, ValueError):
        v = ()
    if len(v) != 2 or not all(np.isfinite(v)) or min(v) <= 0 or v[0] == v[1]:
        raise ValueError("plotting: velocities must be (v_channel, v_background), two different "
                         f"positive numbers in m/ns, got {velocities!r}")
    return v


def _check_limits(vmin, vmax, owner):
    try:
        lo, hi = float(vmin), float(vmax)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"{owner}: vmin and vmax must be finite with vmin < vmax (the colour scale), "
                         f"got vmin={vmin!r}, vmax={vmax!r}")
    return lo, hi


def _check_ncols(ncols, owner, allow_none=True):
    if (ncols is None and allow_none) or (is_int(ncols, 1)):
        return ncols
    raise ValueError(f"{owner}: ncols must be an int >= 1{' or None' if allow_none else ''}, got {ncols!r}")


def _as_models(models, grid, owner, name, single=False):
    """Models as float rows ``(n, n_cells)`` (one row when ``single``): flat vectors in the package's
    cell order, or images ``(n_rows, n_cols)`` of the grid (row 0 at the top)."""
    a = np.asarray(models, dtype=float)
    n, shape = grid.n_cells, tuple(grid.shape)
    if a.shape == (n,) or a.shape == shape:
        return a.reshape(1, n)
    if not single:
        if a.ndim == 2 and a.shape[1] == n:
            return a
        if a.ndim == 3 and a.shape[1:] == shape:
            return a.reshape(len(a), n)
    what = ("a flat model" if single else "flat models (n_models, n_cells) or one flat model")
    images = "an image" if single else "images (n_models, n_rows, n_cols) or one image"
    hint = ""
    if a.ndim >= 2 and a.shape[-2:] == shape[::-1] and shape[0] != shape[1]:
        hint = ": an image of shape (n_cols, n_rows) is transposed; pass its .T"
    raise ValueError(f"{owner}: {name} must be {what} of {n} cells (a last axis of length {n}, the cell "
                     f"order of latentinv.geometry) or {images} of the grid's shape {shape} "
                     f"(n_rows = depth, n_cols = x; row 0 at the top); got shape {a.shape}{hint}")


def _check_threshold(value, owner, name):
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"{owner}: {name} must be a finite positive data RMSE in ns, got {value!r}")
    return t


def _to_velocity(model, velocities):
    v_channel, v_background = velocities
    x = np.asarray(model, dtype=float)
    with np.errstate(invalid="ignore"):      # an infinite cell (inf - inf: NaN) is counted by _draw_model
        return v_channel * x + v_background * (1.0 - x)


def _check_line_needs_znorm(n_components, has_znorm, owner):
    if n_components is not None and not has_znorm:
        raise ValueError(f"{owner}: n_components needs znorm_histories (its line is drawn on the ||z|| panel), "
                         f"got n_components={n_components!r} and no znorm_histories")


def _uniform_mean_norm(d):
    """``E||z||`` for ``z`` uniform in ``[-1, 1]^d``, exactly (to quadrature precision): with
    ``sqrt(y) = (1 / sqrt(pi)) int_0^inf (1 - exp(-s^2 y)) / s^2 ds`` and ``E exp(-s^2 u^2) = sqrt(pi) erf(s)
    / (2 s)`` for ``u ~ U(-1, 1)``, ``E||z|| = (1 / sqrt(pi)) int_0^inf (1 - (sqrt(pi) erf(s) / (2 s))^d) / s^2
    ds``. Just below ``sqrt(d / 3) = sqrt(E||z||^2)`` (by about ``1 / (30 sqrt(d / 3))``)."""
    from scipy.integrate import quad
    from scipy.special import erf

    def integrand(s):
        return d / 3.0 if s < 1e-8 else (1.0 - (np.sqrt(np.pi) * erf(s) / (2.0 * s)) ** d) / s ** 2

    return quad(integrand, 0.0, np.inf, epsabs=1e-12, limit=200)[0] / np.sqrt(np.pi)


def _check_latent_distribution(latent_distribution, owner):
    # checked whether or not a line is drawn: a misspelt value would otherwise pass until n_components is given
    if not (isinstance(latent_distribution, str) and latent_distribution in ("normal", "uniform")):
        raise ValueError(f"{owner}: latent_distribution must be 'normal' (a VAE's latents) or 'uniform' (an "
                         f"SGAN's, in [-1, 1]), got {latent_distribution!r}")


def _latent_norm_line(n_components, latent_distribution, owner):
    """Where ``||z||`` of the prior's latents concentrates, and its legend label: their mean norm,
    ``mu_chi = E[chi_d]`` for standard normal latents (a VAE's), the exact ``E||z||`` for latents uniform
    in ``[-1, 1]^d`` (an SGAN's; :func:`_uniform_mean_norm`)."""
    from .toys import ring_radius

    value, d = ring_radius(n_components, owner=owner), int(n_components)     # ring_radius checks it
    if latent_distribution == "normal":
        return value, rf"$\mu_\chi$ = {value:.2f}: mean $\|z\|$ of a {d}-D standard normal"
    value = _uniform_mean_norm(d)
    return value, rf"{value:.2f}: mean $\|z\|$ of a {d}-D uniform in $[-1, 1]^{{{d}}}$"


def _new_figure(n_rows, n_cols, panel_size=(2.2, 3.6), **kwargs):
    fig = Figure(figsize=(panel_size[0] * n_cols, panel_size[1] * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False, **kwargs)
    return fig, axes


def _extent(grid):
    x0, z0 = grid.origin
    return [x0, x0 + grid.width, z0 + grid.height, z0]


def _draw_model(ax, model, grid, cmap=MODEL_CMAP, vmin=0.0, vmax=1.0, title=None, labels=True,
                owner="plotting", name="model"):
    """Draws one model; NaN and infinite cells are drawn blank, and cells outside [vmin, vmax] in the
    limits' colours, each with a RuntimeWarning that counts them."""
    image = grid.to_image(_as_models(model, grid, owner, name, single=True)[0])
    n_bad = int((~np.isfinite(image)).sum())
    if n_bad:
        warnings.warn(f"{owner}: {name} has {n_bad} NaN or infinite cells of {image.size}: drawn blank "
                      "(transparent); numbers computed from it (its model RMSE) are not finite", RuntimeWarning,
                      stacklevel=caller_stacklevel())
    finite = image[np.isfinite(image)]
    slack = 1e-6 * (vmax - vmin)            # float rounding of a map onto [vmin, vmax] is not a unit error
    n_out = int(((finite < vmin - slack) | (finite > vmax + slack)).sum())
    if n_out:   # imshow clips them without a word: a model in other units (velocities) looks uniform
        warnings.warn(f"{owner}: {name} has {n_out} cells of {image.size} outside the colour scale "
                      f"[vmin, vmax] = [{vmin:g}, {vmax:g}] (values {finite.min():.4g} to {finite.max():.4g}): "
                      "drawn in the limits' colours. Model values are in [0, 1] (1 = channel); "
                      + ("for values in other units pass vmin and vmax" if owner in ("plot_model", "plot_models")
                         else f"{owner}'s colour scale is fixed (plot_model takes vmin and vmax)"),
                      RuntimeWarning, stacklevel=caller_stacklevel())
    im = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, extent=_extent(grid), origin="upper",
                   interpolation="nearest")
    ax.set_aspect("equal")
    if labels:
        ax.set_xlabel("x (m)")
        ax.set_ylabel("depth (m)")
    if title is not None:
        ax.set_title(title, fontsize="medium")
    return im


def _draw_survey(ax, survey, rays=False, boreholes=False):
    if rays:
        segments = np.stack([survey.source_positions, survey.receiver_positions], axis=1)
        ax.add_collection(LineCollection(segments, colors="white", linewidths=0.3, alpha=0.5))
    if boreholes:
        # one vertical line per borehole, over the grid's depth: an x that holds sensors at two depths
        # or more (a lone sensor at its x, e.g. a source on the surface, gets none)
        sensors = np.unique(np.round(np.vstack([survey.sources, survey.receivers]), 9), axis=0)
        xs, counts = np.unique(sensors[:, 0], return_counts=True)
        xs = xs[counts >= 2]
        for k, x in enumerate(xs):
            ax.axvline(x, color="0.15", lw=1.6, ls="-", label="boreholes" if k == 0 else None,
                       zorder=2.5)
    ax.plot(survey.sources[:, 0], survey.sources[:, 1], "v", color="red", markersize=4,
            label="sources", clip_on=False, zorder=3)
    ax.plot(survey.receivers[:, 0], survey.receivers[:, 1], "s", color="orange", markersize=3,
            label="receivers", clip_on=False, zorder=3)


def plot_model(model, grid, survey=None, rays=False, ax=None, cmap=MODEL_CMAP, vmin=0.0, vmax=1.0,
               title=None, colorbar=True, colorbar_label="model value"):
    """One model on its grid, optionally with the survey's sensors and straight rays.

    Parameters
    ----------
    model : array-like of shape (n_cells,) or (n_rows, n_cols)
        Flat model in the package's cell order, or its image (row 0 at the top; values in
        [vmin, vmax]).
    grid : Grid2D
    survey : CrossholeSurvey, default=None
        Sources (red triangles) and receivers (orange squares) in (x, depth) m.
    rays : bool, default=False
        Draw the straight source-receiver ray of every datum (needs ``survey``).
    ax : matplotlib Axes, default=None
        Draw into this axes; ``None`` makes a new figure.
    cmap : str, default="viridis"
    vmin, vmax : float, default=0, 1
        Limits of the colour scale, finite with ``vmin < vmax``.
    title : str, default=None
    colorbar : bool, default=True
    colorbar_label : str, default="model value"
        What the colours are (with its unit), e.g. ``"slowness (ns/m)"`` for a model drawn with
        other limits than the prior's [0, 1].

    Returns
    -------
    matplotlib.figure.Figure
    """
    if rays and survey is None:
        raise ValueError("plot_model: rays=True needs a survey")
    vmin, vmax = _check_limits(vmin, vmax, "plot_model")
    model = _as_models(model, grid, "plot_model", "model", single=True)[0]
    if ax is None:
        fig, axes = _new_figure(1, 1, panel_size=(3.2, 5.0))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    im = _draw_model(ax, model, grid, cmap, vmin, vmax, title, owner="plot_model")
    if survey is not None:
        _draw_survey(ax, survey, rays)
        x0, z0 = grid.origin
        ax.set_xlim(x0, x0 + grid.width)
        ax.set_ylim(z0 + grid.height, z0)
    if colorbar:
        fig.colorbar(im, ax=ax, shrink=0.6, label=colorbar_label)
    return fig


def plot_models(models, grid, titles=None, ncols=None, survey=None, cmap=MODEL_CMAP, vmin=0.0,
                vmax=1.0, suptitle=None, colorbar_label="model value"):
    """A grid of models, e.g. truth / encode-decode / inverted.

    Parameters
    ----------
    models : array-like of shape (n_models, n_cells) or (n_models, n_rows, n_cols)
        Flat models in the package's cell order, or their images (row 0 at the top); one model
        (flat or image) gives one panel.
    grid : Grid2D
    titles : sequence of str, default=None
        One per model.
    ncols : int >= 1, default=None
        Panels per row (at most ``n_models``); ``None`` puts all models in one row (at most 6 per
        row).
    survey : CrossholeSurvey, default=None
        Adds the sensors to every panel.
    cmap, vmin, vmax
        As for :func:`plot_model`.
    suptitle : str, default=None
    colorbar_label : str, default="model value"
        As for :func:`plot_model`.

    Returns
    -------
    matplotlib.figure.Figure
        One image axes per model, in order (empty panels of the last row are removed), plus one
        colour bar.
    """
    vmin, vmax = _check_limits(vmin, vmax, "plot_models")
    ncols = _check_ncols(ncols, "plot_models")
    models = _as_models(models, grid, "plot_models", "models")
    n = len(models)
    if n == 0:
        raise ValueError("plot_models: no models to plot")
    if titles is not None and (isinstance(titles, (str, bytes)) or len(titles) != n):
        if isinstance(titles, (str, bytes)):
            raise ValueError(f"plot_models: titles must be a sequence of {n} str (one per model), "
                             f"got the string {titles!r}")
        raise ValueError(f"plot_models: got {len(titles)} titles for {n} models")
    ncols = min(n, 6) if ncols is None else min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = _new_figure(nrows, ncols)
    flat = axes.ravel()
    im = None
    for i, ax in enumerate(flat):
        if i >= n:
            fig.delaxes(ax)
            continue
        im = _draw_model(ax, models[i], grid, cmap, vmin, vmax,
                         None if titles is None else titles[i], labels=(i % ncols == 0),
                         owner="plot_models", name=f"models[{i}]")
        if i % ncols != 0:
            ax.set_xlabel("x (m)")
        if survey is not None:
            _draw_survey(ax, survey)
            ax.set_xlim(grid.origin[0], grid.origin[0] + grid.width)
            ax.set_ylim(grid.origin[1] + grid.height, grid.origin[1])
    fig.colorbar(im, ax=list(flat[:n]), shrink=0.6, label=colorbar_label)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def _as_histories(h, name, owner="plot_histories"):
    if h is None:
        return []
    if isinstance(h, np.ndarray) and h.ndim not in (1, 2):
        raise ValueError(f"{owner}: {name} must be 1-D (one history) or 2-D (n_starts, n_iterations; "
                         f"NaN-padded after a stopped start), or a sequence of 1-D histories; got an array of "
                         f"shape {h.shape}")
    if isinstance(h, np.ndarray) and h.ndim == 1:
        return [h.astype(float)]
    if isinstance(h, np.ndarray) and h.ndim == 2:
        return [row.astype(float) for row in h]
    out = list(h)
    if out and np.ndim(out[0]) == 0:  # one flat list of numbers
        return [np.asarray(out, dtype=float)]
    res = [np.asarray(r, dtype=float) for r in out]
    bad = [np.shape(r) for r in res if np.ndim(r) != 1]
    if bad:
        raise ValueError(f"{owner}: {name} must be a sequence of 1-D histories, got one of shape {bad[0]}")
    if not res:
        raise ValueError(f"{owner}: {name} is empty")
    return res


def plot_histories(rmse_histories, znorm_histories=None, threshold=None, labels=None,
                   n_components=None, title=None, latent_distribution="normal"):
    """Data RMSE and latent norm ``||z||`` per iteration, one line per start.

    Parameters
    ----------
    rmse_histories : array-like of shape (n_iterations,) or sequence of them
        Data RMSE (ns) per iteration, for one or several starts.
    znorm_histories : same form, default=None
        ``||z||`` per iteration; ``None`` draws only the RMSE panel.
    threshold : float or sequence of float, default=None
        Acceptance threshold (ns), drawn as a dashed horizontal line on the RMSE panel; a sequence
        gives one per history (e.g. per survey), drawn in its history's colour.
    labels : sequence of str, default=None
        One per history (legend).
    n_components : int, default=None
        Draws the mean norm ``E||z||`` of the prior's latents (where ``||z||`` of a prior sample
        concentrates), dotted, on the ``||z||`` panel; needs ``znorm_histories``.
    title : str, default=None
    latent_distribution : {"normal", "uniform"}, default="normal"
        The prior's latents (its ``latent_distribution``): ``"normal"`` (a VAE's) draws
        ``E[chi_d] = sqrt(2) G((d+1)/2) / G(d/2)`` (the ring radius, Eq. 23); ``"uniform"`` (an SGAN's,
        in ``[-1, 1]^d``) draws their exact ``E||z||``, computed by quadrature, just below
        ``sqrt(d / 3) = sqrt(E||z||^2)``.

    Returns
    -------
    matplotlib.figure.Figure
        One axes (RMSE) or two (RMSE, ``||z||``).
    """
    rmse = _as_histories(rmse_histories, "rmse_histories")
    znorm = _as_histories(znorm_histories, "znorm_histories")
    _check_line_needs_znorm(n_components, bool(znorm), "plot_histories")
    _check_latent_distribution(latent_distribution, "plot_histories")
    if znorm and len(znorm) != len(rmse):
        raise ValueError(f"plot_histories: {len(rmse)} RMSE histories but {len(znorm)} ||z|| histories")
    if labels is not None and len(labels) != len(rmse):
        raise ValueError(f"plot_histories: {len(labels)} labels for {len(rmse)} histories")
    thresholds = None
    if threshold is not None:
        if np.ndim(threshold) == 0:
            thresholds = [_check_threshold(threshold, "plot_histories", "threshold")]
        elif np.ndim(threshold) == 1 and len(threshold) == len(rmse) and not isinstance(threshold, str):
            thresholds = [_check_threshold(t, "plot_histories", f"threshold[{i}]") for i, t in enumerate(threshold)]
        else:
            raise ValueError(f"plot_histories: threshold must be one number (ns) or one per history "
                             f"({len(rmse)}), got {threshold!r}")
    line = None if n_components is None else _latent_norm_line(n_components, latent_distribution, "plot_histories")
    ncols = 2 if znorm else 1
    fig = Figure(figsize=(4.2 * ncols, 3.4), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    curves = []
    for i, h in enumerate(rmse):
        curves += axes[0].plot(np.arange(1, len(h) + 1), h, lw=1.0,
                               label=None if labels is None else labels[i])
    axes[0].set_yscale("log")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("data RMSE (ns)")
    if thresholds is not None and np.ndim(threshold) == 0:
        axes[0].axhline(thresholds[0], color="k", ls="--", lw=1.0,
                        label=f"threshold {thresholds[0]:.3g} ns")
    elif thresholds is not None:
        for i, (t, curve) in enumerate(zip(thresholds, curves)):
            name = f"{labels[i]} " if labels is not None else f"{i} "
            axes[0].axhline(t, color=curve.get_color(), ls="--", lw=1.0, label=f"threshold {name}{t:.3g} ns")
    if labels is not None or threshold is not None:
        axes[0].legend(fontsize="small")
    if znorm:
        for i, h in enumerate(znorm):
            axes[1].plot(np.arange(1, len(h) + 1), h, lw=1.0)
        if line is not None:
            axes[1].axhline(line[0], color="k", ls=":", lw=1.0, label=line[1])
            axes[1].legend(fontsize="small")
        axes[1].set_xlabel("iteration")
        axes[1].set_ylabel("||z||")
    if title:
        fig.suptitle(title)
    return fig


def _image_shape(prior, grid, owner="plotting"):
    shape = getattr(prior, "image_shape_", None) or getattr(prior, "image_shape", None)
    if grid is not None:
        if shape is not None and tuple(grid.shape) != tuple(int(k) for k in shape):
            raise ValueError(f"{owner}: grid.shape {tuple(grid.shape)} (n_rows, n_cols) but the prior's models "
                             f"are {tuple(int(k) for k in shape)} (its image_shape): pass the grid of the "
                             "prior's models")
        return grid.shape
    if shape is None:
        raise ValueError(f"{owner}: the prior has no image_shape; pass grid=Grid2D(...)")
    return tuple(shape)


def _is_uniform(prior):
    return getattr(prior, "latent_distribution", "normal") == "uniform"


def _n_components(prior):
    n = getattr(prior, "n_components_", None) or getattr(prior, "n_components", None)
    if n is None:
        raise ValueError("plotting: the prior has no n_components")
    return int(n)


def _image_panels(images, ncols, titles=None, cmap=MODEL_CMAP, extent=None):
    n = len(images)
    nrows = -(-n // ncols)
    fig, axes = _new_figure(nrows, ncols, panel_size=(1.6, 2.8))
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            fig.delaxes(ax)
            continue
        ax.imshow(images[i], cmap=cmap, vmin=0.0, vmax=1.0, origin="upper", extent=extent,
                  interpolation="nearest")
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize="small")
    return fig


def plot_samples(prior, n=8, random_state=None, grid=None, ncols=4, cmap=MODEL_CMAP):
    """Models drawn from the prior (``prior.sample(n, random_state=...)``).

    Parameters
    ----------
    prior : VAEPrior (fitted) or any object with ``sample(n, random_state=...)`` returning
        ``(n, n_cells)`` models
    n : int, default=8
    random_state : int or None, default=None
    grid : Grid2D, default=None
        Gives the metric extent; its shape must be the prior's ``image_shape`` (when the prior has
        one). ``None`` uses the prior's fitted ``image_shape_`` (else its ``image_shape``).
    ncols : int >= 1, default=4
    cmap : str or matplotlib Colormap, default="viridis"
        Colour map of the panels, whose colour scale is fixed to [0, 1].

    Returns
    -------
    matplotlib.figure.Figure
        ``n`` image axes, the i-th showing the i-th sample.
    """
    shape = _image_shape(prior, grid, "plot_samples")
    ncols = _check_ncols(ncols, "plot_samples", allow_none=False)
    samples = np.asarray(prior.sample(int(n), random_state=random_state), dtype=float)
    images = samples.reshape((len(samples),) + tuple(shape))
    extent = None if grid is None else _extent(grid)
    fig = _image_panels(images, min(ncols, len(images)), cmap=cmap, extent=extent)
    fig.suptitle(f"{len(images)} prior samples")
    return fig


def plot_latent_traversal(prior, dims=(0, 1, 2), steps=7, span=None, z0=None, grid=None,
                          cmap=MODEL_CMAP):
    """Decoded models along latent axes: row ``i`` moves ``z[dims[i]]`` from ``z0 - span`` to
    ``z0 + span``.

    Parameters
    ----------
    prior : VAEPrior (fitted) or any object with ``decode(Z) -> (n, n_cells)``
    dims : sequence of int, default=(0, 1, 2)
    steps : int, default=7
    span : float, default=None
        Half-range of the traversal in latent units: prior standard deviations for a normal latent
        prior, ``None`` meaning 3; for a prior with uniform latents in [-1, 1]
        (``latent_distribution = "uniform"``, an SGANPrior) ``None`` means 1, and a traversal that
        would leave the box is refused.
    z0 : array-like of shape (n_components,), default=None
        Base latent vector (the origin by default).
    grid : Grid2D, default=None
        Gives the metric extent; its shape must be the prior's ``image_shape``.
    cmap : str or matplotlib Colormap, default="viridis"
        Colour map of the panels, whose colour scale is fixed to [0, 1].

    Returns
    -------
    matplotlib.figure.Figure
        ``len(dims) * steps`` image axes, row-major.
    """
    owner = "plot_latent_traversal"
    d = _n_components(prior)
    dims = [int(k) for k in np.atleast_1d(dims)]
    if not dims:
        raise ValueError(f"{owner}: dims must name at least one latent dimension in [0, {d}), got {dims!r}")
    bad = [k for k in dims if not 0 <= k < d]
    if bad:
        raise ValueError(f"plot_latent_traversal: dims {bad} out of range for {d} latent dimensions")
    steps = int(steps)
    if steps < 2:
        raise ValueError(f"plot_latent_traversal: steps must be >= 2, got {steps}")
    uniform = _is_uniform(prior)
    if span is None:
        span = 1.0 if uniform else 3.0
    try:
        span = float(span)
    except (TypeError, ValueError):
        span = float("nan")
    if not np.isfinite(span):
        raise ValueError(f"{owner}: span must be a finite number (latent units), got {span!r}")
    if z0 is None:
        base = np.zeros(d)
    else:
        base = np.asarray(z0, dtype=float)
        if base.shape != (d,) or not np.all(np.isfinite(base)):
            raise ValueError(f"{owner}: z0 must have shape ({d},) (n_components) with finite values, got "
                             f"shape {base.shape}")
    values = np.linspace(-span, span, steps)
    if uniform:
        walked = base[dims][:, None] + values[None, :]
        if np.any(np.abs(base) > 1.0) or np.any(np.abs(walked) > 1.0 + 1e-12):
            raise ValueError(f"{owner}: span={span} from z0 walks latents outside the prior's uniform box "
                             f"[-1, 1] (latent_distribution='uniform'): the decoder never sees such latents; "
                             f"keep |z0 +- span| <= 1 (span=None walks the whole box from the origin)")
    Z = np.repeat(base[None, :], len(dims) * steps, axis=0)
    titles = []
    for i, k in enumerate(dims):
        Z[i * steps:(i + 1) * steps, k] = base[k] + values
        titles += [f"z{k}={base[k] + v:+.1f}" for v in values]
    shape = _image_shape(prior, grid, owner)
    decoded = np.asarray(prior.decode(Z), dtype=float)
    images = decoded.reshape((len(Z),) + tuple(shape))
    extent = None if grid is None else _extent(grid)
    return _image_panels(images, steps, titles=titles, cmap=cmap, extent=extent)


def plot_manifold_deformation(settings=((1.0, 1.0), (1.0, 100.0), (0.0, 0.0), (0.1, 10.0)),
                              X=None, n_samples=1000, noise=0.1, n_iterations=1500, grid_lines=11,
                              span=3.0, random_state=0):
    """How a regular latent grid deforms when decoded, for VAEs with several ``(alpha, beta)``.

    The paper's Fig. 4: an eight-shaped 1-D manifold in 2-D data; for each ``(alpha, beta)`` a small
    MLP VAE with a 2-D latent space is trained (:func:`latentinv.toys.fit_toy_vae`) and the images
    of the latent lines ``z1 = const`` and ``z2 = const`` over ``[-span, span]^2`` are drawn over
    the training data. Strong KL weight (large ``beta``) pulls the decoded grid onto the manifold;
    ``alpha = 0`` (no sampling noise, an autoencoder) leaves large parts of the latent grid mapped
    off the data.

    Parameters
    ----------
    settings : sequence of (alpha, beta)
    X : array-like of shape (n_samples, 2), default=None
        Training data; ``None`` draws :func:`latentinv.toys.make_eight_manifold`.
    n_samples, noise : passed to ``make_eight_manifold``
    n_iterations : int, default=1500
        Training iterations per VAE.
    grid_lines : int >= 2, default=11
        Latent grid lines per axis.
    span : float > 0, default=3.0
    random_state : int, default=0

    Returns
    -------
    matplotlib.figure.Figure
        One axes per setting; each holds the training data (a scatter) and ``2 * grid_lines``
        decoded grid lines.
    """
    from .toys import fit_toy_vae, make_eight_manifold

    owner = "plot_manifold_deformation"
    given = settings
    try:
        settings = [tuple(float(v) for v in s) for s in settings]
    except (TypeError, ValueError):
        settings = []
    if not settings or any(len(s) != 2 for s in settings):
        raise ValueError(f"{owner}: settings must be a non-empty sequence of (alpha, beta) pairs, got {given!r}")
    grid_lines = check_int(grid_lines, "grid_lines", owner, 2)
    span = check_real(span, "span", owner, 0, strict=True)
    if X is None:
        X = make_eight_manifold(n_samples, noise=noise, random_state=random_state)
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"{owner}: X must have shape (n_samples, 2) (points in the plane), got shape {X.shape}")
    fig, axes = _new_figure(1, len(settings), panel_size=(3.4, 3.0))
    t = np.linspace(-span, span, 101)
    levels = np.linspace(-span, span, int(grid_lines))
    for ax, (alpha, beta) in zip(axes[0], settings):
        vae = fit_toy_vae(X, alpha=alpha, beta=beta, n_components=2, n_iterations=n_iterations,
                          random_state=random_state)
        ax.scatter(X[:, 0], X[:, 1], s=2, color="0.7", label="data")
        for c in levels:
            line1 = vae.decode(np.column_stack([np.full_like(t, c), t]))
            line2 = vae.decode(np.column_stack([t, np.full_like(t, c)]))
            ax.plot(line1[:, 0], line1[:, 1], color="tab:blue", lw=0.6)
            ax.plot(line2[:, 0], line2[:, 1], color="tab:red", lw=0.6)
        ax.set_title(f"alpha={alpha:g}, beta={beta:g}", fontsize="medium")
        ax.set_aspect("equal")
        ax.set_xlim(X[:, 0].min() - 1.0, X[:, 0].max() + 1.0)
        ax.set_ylim(X[:, 1].min() - 1.0, X[:, 1].max() + 1.0)
        ax.set_xlabel("d1")
    axes[0, 0].set_ylabel("d2")
    fig.suptitle("decoded latent grid (blue: z1 = const, red: z2 = const)")
    return fig


def plot_sgd_toy(problem=None, regularizations=("none", "ring"), n_starts=6, lr=0.05, lam=1.0,
                 lam_decay=0.999, lr_decay=0.98, batch_size=6, n_epochs=30, span=3.0, resolution=121,
                 random_state=0):
    """SGD paths on a misfit surface over a 2-D latent space, with and without regularisation.

    The paper's Fig. 6: the data RMSE of a :class:`latentinv.toys.ToyLatentProblem` over
    ``[-span, span]^2`` (contours), and the paths of mini-batch SGD from ``n_starts`` initial latents
    drawn from the standard normal, one panel per regularisation (``"none"``, ``"origin"``,
    ``"ring"``; the ring ``||z|| = E[chi_2]`` is drawn dashed).

    Parameters
    ----------
    problem : ToyLatentProblem, default=None
        ``None`` builds the default one.
    regularizations : str or sequence of str, default=("none", "ring")
        One panel each, of ``"none"``, ``"origin"``, ``"ring"``.
    n_starts : int >= 1, default=6
    lr, lam, lam_decay, lr_decay, batch_size, n_epochs
        Passed to :func:`latentinv.toys.sgd_toy_paths`.
    span : float > 0, default=3.0
        The plane drawn is ``[-span, span]^2``.
    resolution : int >= 2, default=121
        Misfit grid points per axis.
    random_state : int, default=0

    Returns
    -------
    matplotlib.figure.Figure
        One axes per regularisation (plus one colour bar); each holds ``n_starts`` paths.
    """
    from .toys import ToyLatentProblem, ring_radius, sgd_toy_paths

    owner = "plot_sgd_toy"
    if isinstance(regularizations, str):
        regularizations = (regularizations,)
    regularizations = tuple(regularizations)
    if not regularizations:
        raise ValueError(f"{owner}: regularizations must name at least one of 'none', 'origin', 'ring', got ()")
    n_starts = check_int(n_starts, "n_starts", owner, 1)
    resolution = check_int(resolution, "resolution", owner, 2)
    span = check_real(span, "span", owner, 0, strict=True)
    problem = ToyLatentProblem() if problem is None else problem
    rng = np.random.default_rng(random_state)
    z_inits = rng.standard_normal((int(n_starts), 2))
    g = np.linspace(-span, span, int(resolution))
    Z1, Z2 = np.meshgrid(g, g)
    misfit = problem.misfit(np.stack([Z1, Z2], axis=-1))
    fig, axes = _new_figure(1, len(regularizations), panel_size=(3.6, 3.4))
    cs = None
    for ax, reg in zip(axes[0], regularizations):
        cs = ax.contourf(Z1, Z2, np.log10(np.maximum(misfit, 1e-2 * misfit.max())), levels=20,
                         cmap="Greys_r")
        paths = sgd_toy_paths(problem, z_inits, regularization=reg, lam=lam, lam_decay=lam_decay,
                              lr=lr, lr_decay=lr_decay, batch_size=batch_size, n_epochs=n_epochs,
                              random_state=random_state)
        for p in paths:
            ax.plot(p[:, 0], p[:, 1], lw=1.0)
            ax.plot(p[0, 0], p[0, 1], "o", color="k", ms=3)
            ax.plot(p[-1, 0], p[-1, 1], "x", color="r", ms=5)
        ax.plot(*problem.z_true, "*", color="gold", ms=10, mec="k")
        if reg == "ring":
            ax.add_patch(Circle((0, 0), ring_radius(2), fill=False, ls="--", color="tab:blue"))
        ax.set_title(f"regularisation: {reg}", fontsize="medium")
        ax.set_aspect("equal")
        ax.set_xlim(-span, span)
        ax.set_ylim(-span, span)
        ax.set_xlabel("z1")
    axes[0, 0].set_ylabel("z2")
    fig.colorbar(cs, ax=list(axes[0]), shrink=0.8, label="log10 data RMSE")
    return fig


def plot_inversion_summary(truth, models, grid, rmse_histories=None, znorm_histories=None,
                           thresholds=None, survey=None, n_components=None, title=None,
                           velocities=PAPER_VELOCITIES, show_model_rmse=True, latent_distribution="normal"):
    """Truth and inverted models on the top row, data-RMSE and ``||z||`` curves below.

    Parameters
    ----------
    truth : array-like of shape (n_cells,) or (n_rows, n_cols), or None
        Model values in [0, 1] (1 = channel), flat or as an image.
    models : dict of str -> array-like of shape (n_cells,) or (n_rows, n_cols)
        Inverted (or reconstructed) models by name, model values in [0, 1].
    grid : Grid2D
    rmse_histories, znorm_histories : dict of str -> list of 1-D arrays, default=None
        Per name (usually the operator), one history per start; ``znorm_histories`` needs
        ``rmse_histories``, and its names are some of those (drawn in the same colours).
    thresholds : dict of str -> float, default=None
        Acceptance threshold (ns, finite and positive) per name of ``rmse_histories`` (dashed lines).
    survey : CrossholeSurvey, default=None
        Draws the boreholes (vertical lines at each x that holds sensors at two depths or more), the
        sources (red triangles) and the receivers (orange squares) on every model panel, whose x-axis
        then extends by :data:`SURVEY_MARGIN` of the grid's width on each side.
    n_components : int, default=None
        Draws the mean norm ``E||z||`` of the prior's latents of that dimension (where ``||z||`` of a
        prior sample concentrates), dotted and labelled on the ``||z||`` panel; needs
        ``znorm_histories``.
    title : str, default=None
    velocities : (float, float) or None, default=PAPER_VELOCITIES
        ``(v_channel, v_background)`` in m/ns: the panels show velocity (colour bar in m/ns,
        limits the two velocities); ``None`` shows the unitless model value in [0, 1].
    show_model_rmse : bool, default=True
        With a truth, writes each model's RMSE against it (model values in [0, 1], and in m/ns
        when ``velocities`` is given) on its panel.
    latent_distribution : {"normal", "uniform"}, default="normal"
        The prior's latents, as for :func:`plot_histories`: ``mu_chi = E[chi_d]`` for standard normal
        ones (a VAE's), the exact ``E||z||`` for uniform ones in ``[-1, 1]^d`` (an SGAN's).

    Returns
    -------
    matplotlib.figure.Figure
        ``len(models) + (truth is not None)`` image axes, then one RMSE axes and, when
        ``znorm_histories`` is given, one ``||z||`` axes; a legend for the sensors, one per curve
        panel.
    """
    owner = "plot_inversion_summary"
    velocities = _check_velocities(velocities)
    if not hasattr(models, "items"):
        got = type(models).__name__ + (f" of shape {np.shape(models)}" if hasattr(models, "shape") else "")
        raise ValueError(f"{owner}: models must be a dict of name -> model (flat, n_cells), got {got}")
    panels = ([("truth", _as_models(truth, grid, owner, "truth", single=True)[0])] if truth is not None else [])
    panels += [(name, _as_models(m, grid, owner, f"models[{name!r}]", single=True)[0])
               for name, m in models.items()]
    if not panels:
        raise ValueError(f"{owner}: nothing to draw: no truth and no models")
    if znorm_histories and not rmse_histories:
        raise ValueError(f"{owner}: znorm_histories needs rmse_histories (the ||z|| panel is drawn beside the RMSE "
                         f"panel), got znorm_histories for {list(znorm_histories)} and "
                         f"rmse_histories={rmse_histories!r}")
    _check_line_needs_znorm(n_components, bool(znorm_histories), owner)
    _check_latent_distribution(latent_distribution, owner)
    for param, per_name in (("thresholds", thresholds), ("znorm_histories", znorm_histories)):
        orphans = [name for name in (per_name or {}) if name not in (rmse_histories or {})]
        if orphans:     # a threshold would not be drawn, a ||z|| history drawn in black under no name
            raise ValueError(f"{owner}: {param} must be for names of rmse_histories "
                             f"({list(rmse_histories) if rmse_histories else 'none'}), got {param} for {orphans}, "
                             "which have no RMSE history")
    checked_thresholds = {}
    for name, t in (thresholds or {}).items():
        if t is not None:
            checked_thresholds[name] = _check_threshold(t, owner, f"thresholds[{name!r}]")
    n_img = len(panels)
    has_z = bool(znorm_histories)
    n_curves = (1 + has_z) if rmse_histories else 0
    fig = Figure(figsize=(max(2.4 * n_img, 4.5 * max(n_curves, 1)), 5.2 + 3.2 * (n_curves > 0)),
                 layout="constrained")
    if n_curves:
        top, bottom = fig.subfigures(2, 1, height_ratios=[1.7, 1.0])
    else:
        top, bottom = fig, None
    img_axes = top.subplots(1, n_img, squeeze=False)[0]
    im = None
    truth_flat = None if truth is None else panels[0][1]
    for i, (ax, (name, m)) in enumerate(zip(img_axes, panels)):
        where = dict(owner=owner, name="truth" if i == 0 and truth is not None else f"models[{name!r}]")
        if velocities is None:
            im = _draw_model(ax, m, grid, title=name, labels=(ax is img_axes[0]), **where)
        else:
            im = _draw_model(ax, _to_velocity(m, velocities), grid, cmap=VELOCITY_CMAP,
                             vmin=min(velocities), vmax=max(velocities), title=name,
                             labels=(ax is img_axes[0]), **where)
        ax.set_xlabel("x (m)")
        if show_model_rmse and truth_flat is not None and name != "truth":
            m_flat = m
            rmse = float(np.sqrt(np.mean((m_flat - truth_flat) ** 2)))
            text = f"model RMSE {rmse:.3f}"
            if velocities is not None:
                text += f"\n({rmse * abs(velocities[1] - velocities[0]):.4f} m/ns)"
            ax.text(0.5, 0.02, text, transform=ax.transAxes, ha="center", va="bottom",
                    fontsize="x-small", gid="model_rmse",
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.85))
        if survey is not None:
            _draw_survey(ax, survey, boreholes=True)
            margin = SURVEY_MARGIN * grid.width
            ax.set_xlim(grid.origin[0] - margin, grid.origin[0] + grid.width + margin)
            ax.set_ylim(grid.origin[1] + grid.height, grid.origin[1])
    if velocities is None:
        top.colorbar(im, ax=list(img_axes), shrink=0.7, label="model value (1 = channel)")
    else:
        top.colorbar(im, ax=list(img_axes), shrink=0.7, label="velocity (m/ns)")
    if survey is not None:
        handles, labels = img_axes[0].get_legend_handles_labels()
        top.legend(handles, labels, loc="outside lower center", ncols=len(handles),
                   fontsize="small", frameon=False)
    if n_curves:
        cax = bottom.subplots(1, n_curves, squeeze=False)[0]
        colors = {}
        for i, (name, hs) in enumerate(rmse_histories.items()):
            c = f"C{i}"
            colors[name] = c
            for j, h in enumerate(_as_histories(hs, f"rmse_histories[{name!r}]", owner)):
                cax[0].plot(np.arange(1, len(h) + 1), h, color=c, lw=0.8, alpha=0.8,
                            label=name if j == 0 else None)
            if name in checked_thresholds:
                cax[0].axhline(checked_thresholds[name], color=c, ls="--", lw=1.0,
                               label=f"{name} threshold {checked_thresholds[name]:.3g} ns")
        cax[0].set_yscale("log")
        cax[0].set_xlabel("iteration")
        cax[0].set_ylabel("data RMSE (ns)")
        cax[0].legend(fontsize="small")
        if has_z:
            for name, hs in znorm_histories.items():
                for h in _as_histories(hs, f"znorm_histories[{name!r}]", owner):
                    cax[1].plot(np.arange(1, len(h) + 1), h, color=colors[name], lw=0.8, alpha=0.8)
            if n_components is not None:
                value, label = _latent_norm_line(n_components, latent_distribution, owner)
                cax[1].axhline(value, color="k", ls=":", lw=1.2, label=label)
                cax[1].legend(fontsize="small")
            cax[1].set_xlabel("iteration")
            cax[1].set_ylabel("||z||")
    if title:
        fig.suptitle(title)
    return fig


def plot_posterior(result, grid, survey=0, truth=None, n_samples=3):
    """One survey's posterior from :meth:`LatentSampler.sample`: (truth,) mean, standard deviation,
    probability of channel (model value > 0.5) and a few posterior models, one panel each.

    Parameters
    ----------
    result : PosteriorResult
    grid : Grid2D
    survey : int, default=0
        Which survey of the result.
    truth : array-like of shape (n_cells,) or (n_rows, n_cols), default=None
        The true model (flat, or its image), drawn first when given.
    n_samples : int >= 0, default=3
        Posterior models drawn (at most ``result.model_samples.shape[1]``).

    Returns
    -------
    matplotlib.figure.Figure
        Image axes in the order above; the mean, samples and truth share the [0, 1] colour scale,
        the standard deviation has its own ([0, 0.5]) and the probability [0, 1] in grey.
    """
    owner = "plot_posterior"
    n_surveys = result.mean.shape[0]
    if not (is_int(survey) and 0 <= survey < n_surveys):
        raise ValueError(f"plot_posterior: survey must be an int in [0, {n_surveys}), got {survey!r}")
    if not is_int(n_samples, 0):
        raise ValueError(f"{owner}: n_samples must be an int >= 0, got {n_samples!r}")
    samples = result.model_samples[survey][:n_samples]
    panels = ([] if truth is None else
              [("truth", _as_models(truth, grid, owner, "truth", single=True)[0], MODEL_CMAP, 1.0)])
    panels += [("posterior mean", result.mean[survey], MODEL_CMAP, 1.0),
               ("standard deviation", result.std[survey], "magma", 0.5),
               ("P(channel)", result.channel_probability[survey], "Greys", 1.0)]
    panels += [(f"sample {i + 1}", m, MODEL_CMAP, 1.0) for i, m in enumerate(samples)]
    fig, axes = _new_figure(1, len(panels))
    for i, (ax, (title, model, cmap, vmax)) in enumerate(zip(axes[0], panels)):
        im = _draw_model(ax, model, grid, cmap, 0.0, vmax, title, labels=(i == 0), owner=owner,
                         name=title)
        if i:
            ax.set_xlabel("x (m)")
        if title in ("standard deviation", "P(channel)"):
            fig.colorbar(im, ax=ax, shrink=0.6, location="bottom",
                         label={"standard deviation": "std of the model value",
                                "P(channel)": "P(model value > 0.5)"}[title])
    rates = result.acceptance_rate[survey]
    fig.suptitle(f"{result.method}: {result.n_chains} chains x {result.samples.shape[2]} kept draws, "
                 f"acceptance {rates.min():.2f}-{rates.max():.2f}")
    return fig
