"""Training images and training-patch sampling for generative priors.

* :func:`make_channel_image` -- a seedable procedural generator of binary
  channel training images (sinuous, branching channels; no file needed);
* :func:`load_channels_ti` -- the paper's training image (bundled), which the
  default prior was trained on; :func:`load_paper_truth` (mc1-mc3) and
  :func:`load_held_out_crop` (:data:`HELD_OUT_WINDOW`): crops of it that
  prior never saw;
* :func:`make_straight_channels` -- a simple family of models (one straight
  horizontal channel at a random depth), for tests;
* :func:`load_image` -- PNG (Pillow, thresholded to {0, 1}) and NPY loaders;
* :class:`PatchSampler` -- fresh random crops of a given shape from one or
  more large training images, never overlapping held-out windows, as the
  paper's training (Lopez-Alvis et al., 2021, following Laloy et al., 2018).

Images are arrays of shape ``(n_rows, n_cols)``, row 0 at the top
(shallowest), values in {0, 1} with 1 = channel.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
from scipy import ndimage

from ._checks import caller_stacklevel
from ._checks import is_int as _is_int

__all__ = ["make_channel_image", "make_straight_channels", "load_image", "PatchSampler",
           "layered_channel_slowness", "PRETRAINED_IMAGE_SETTINGS", "load_channels_ti",
           "load_paper_truth", "PAPER_TRUTH_WINDOWS", "HELD_OUT_WINDOW", "DEFAULT_PRIOR_EXCLUDED_WINDOWS",
           "held_out_corner", "load_held_out_crop", "MAX_CHANNELS"]

#: Windows ``(row0, col0, n_rows, n_cols)`` of the paper's cropped truths mc1-mc3 in the training image
#: of :func:`load_channels_ti` (the paper's published test models are exact crops of them). The paper's
#: protocol keeps every training crop that overlaps them out of the prior's training
#: (``PatchSampler(load_channels_ti(), (129, 65), exclude=list(PAPER_TRUTH_WINDOWS.values()))``).
PAPER_TRUTH_WINDOWS = MappingProxyType({"mc1": (1135, 1658, 129, 65), "mc2": (1502, 1958, 129, 65),
                                        "mc3": (582, 503, 129, 65)})
#: Window ``(row0, col0, n_rows, n_cols)`` of :func:`load_channels_ti` kept out of the training of the
#: shipped default prior (``VAEPrior.pretrained()``, ``scripts/train_default_prior.py``): rows 2200-2499,
#: every column. No training crop overlapped it (nor the windows of mc1-mc3), so any crop inside it is a
#: truth that prior never saw (:func:`held_out_corner`, :func:`load_held_out_crop`).
HELD_OUT_WINDOW = (2200, 0, 300, 2500)
#: Every window of :func:`load_channels_ti` kept out of the default prior's training, mc1-mc3 and the
#: held-out band: ``PatchSampler(load_channels_ti(), (129, 65), exclude=DEFAULT_PRIOR_EXCLUDED_WINDOWS)``
#: draws only crops that prior may have seen.
DEFAULT_PRIOR_EXCLUDED_WINDOWS = (*PAPER_TRUTH_WINDOWS.values(), HELD_OUT_WINDOW)
#: SHA-256 of the bundled PNG (checked at every load: a damaged or replaced file raises)
_CHANNELS_TI_SHA256 = "a138be025008c65e4bbf236ca4c520c0823e37cd67bbcbb367d4e8c8b1dccf47"

#: Arguments of :func:`make_channel_image` for the images the procedural shipped prior
#: (``VAEPrior.pretrained(image="procedural")``, the earlier default;
#: ``scripts/train_default_prior.py --image procedural``) was trained on: a model meant for
#: that prior should come from the same family, e.g.
#: ``make_channel_image(**PRETRAINED_IMAGE_SETTINGS, random_state=seed)`` with an unused seed.
PRETRAINED_IMAGE_SETTINGS = MappingProxyType(dict(shape=(600, 600), density=0.26, width=9.0,
                                                 sinuosity=0.35, branching=0.4))   # read-only


#: Most channels :func:`make_channel_image` draws: the limit of ``n_channels`` and of the channels
#: drawn to reach ``density``.
MAX_CHANNELS = 1000


def warn_unused_sampler_seed(sampler, owner):
    """The UserWarning of a prior's ``fit`` given a seeded :class:`PatchSampler`: fit draws the crops from
    the prior's own ``random_state``, so the sampler's seed (taken to act otherwise) does not."""
    if sampler.random_state is not None:
        warnings.warn(f"{owner}: the PatchSampler's random_state={sampler.random_state!r} is not used: fit draws "
                      f"the crops from the prior's own random_state, with the rest of the training's draws (the "
                      f"sampler's seeds its sample() calls only).", UserWarning, stacklevel=caller_stacklevel())


def _rng(random_state, owner):
    """A :class:`numpy.random.Generator` from None, an int >= 0, a Generator or a RandomState."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    if random_state is not None and not (_is_int(random_state) and random_state >= 0):
        raise ValueError(f"{owner}: random_state must be None, an int >= 0, a numpy Generator or a numpy "
                         f"RandomState; got {random_state!r}.")
    return np.random.default_rng(None if random_state is None else int(random_state))


def _check_int(value, name, owner, minimum=None, maximum=None, note=""):
    """``value`` as an int, refused (naming ``name``) if not an integer or outside [minimum, maximum]."""
    if not (_is_int(value) and (minimum is None or value >= minimum)
            and (maximum is None or value <= maximum)):
        bounds = ("" if minimum is None and maximum is None
                  else f" in [{minimum}, {maximum}]" if minimum is not None and maximum is not None
                  else f" >= {minimum}" if minimum is not None else f" <= {maximum}")
        raise ValueError(f"{owner}: {name} must be an integer{bounds}{note}; got {value!r}.")
    return int(value)


def _check_real(value, name, owner, expected, ok):
    """``value`` as a float, refused (naming ``name``, saying ``expected``) unless it is a finite real
    number (not a bool) for which ``ok(value)`` holds."""
    real = (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)))
    try:
        x = float(value) if real else math.nan
    except OverflowError:        # an int beyond the float range
        x = math.inf
    if not (math.isfinite(x) and ok(x)):
        raise ValueError(f"{owner}: {name} must be {expected}; got {value!r}.")
    return x


def _check_shape(shape, name, owner):
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 2:
        raise ValueError(f"{owner}: {name} must be a pair (n_rows, n_cols); got {shape!r}.")
    if not all(_is_int(s) and s >= 1 for s in shape):
        raise ValueError(f"{owner}: {name} must be a pair of positive ints (n_rows, n_cols); got {shape!r}.")
    return tuple(int(s) for s in shape)


def _centreline(rng, length, step, sinuosity, wavelength):
    """Lateral offset of a sinuous line sampled every ``step`` along ``length``."""
    s = np.arange(0.0, length + step, step)
    amplitude = sinuosity * wavelength / 4.0
    phase = rng.uniform(0, 2 * np.pi)
    lam = wavelength * rng.uniform(0.7, 1.3)
    offset = amplitude * rng.uniform(0.5, 1.5) * np.sin(2 * np.pi * s / lam + phase)
    # smooth random meandering on top of the periodic part
    noise = rng.standard_normal(s.size)
    sigma = max(1.0, wavelength / (4 * step))
    wander = ndimage.gaussian_filter1d(np.cumsum(noise), sigma) * step * 0.15 * sinuosity
    return s, offset + wander - wander[0]


def _gap_points(points, gap, step, n_rows, n_cols):
    """Points every ``step`` along the polyline's segments longer than ``gap``, inside the image.

    A very sinuous centreline, sampled every ``step`` along its mean direction, has segments far
    longer than a channel width: stamped as they are, the channel would be dotted. Each such segment
    is clipped to the image first, so that the work stays bounded by the image's size however far a
    meander swings outside it.
    """
    p, v = points[:-1], np.diff(points, axis=0)
    d = np.hypot(v[:, 0], v[:, 1])
    long = np.flatnonzero(d > gap)
    p, v, d = p[long], v[long], d[long]
    enter, leave = np.zeros(len(p)), np.ones(len(p))
    for k, hi in ((0, n_cols - 0.5), (1, n_rows - 0.5)):    # clip to the image's box (Liang-Barsky)
        vk, pk = v[:, k], p[:, k]
        moving = vk != 0
        safe = np.where(moving, vk, 1.0)
        ta, tb = (-0.5 - pk) / safe, (hi - pk) / safe
        inside = (pk >= -0.5) & (pk <= hi)
        enter = np.maximum(enter, np.where(moving, np.minimum(ta, tb), np.where(inside, -np.inf, np.inf)))
        leave = np.minimum(leave, np.where(moving, np.maximum(ta, tb), np.where(inside, np.inf, -np.inf)))
    count = np.where(leave >= enter, np.floor((leave - enter) * d / step).astype(np.int64) + 1, 0)
    seg = np.repeat(np.arange(len(p)), count)
    j = np.arange(seg.size) - np.repeat(np.cumsum(count) - count, count)   # 0, 1, ... within a segment
    t = enter[seg] + j * step / d[seg]
    return p[seg] + t[:, None] * v[seg]


def make_channel_image(shape=(500, 500), n_channels=None, density=0.25, width=8.0,
                       orientation=0.0, sinuosity=0.5, wavelength=None, branching=0.3,
                       random_state=None):
    """Procedural binary training image of sinuous, branching channels.

    Each channel is a centreline crossing the whole image along
    ``orientation``, with a periodic meander of amplitude
    ``sinuosity * wavelength / 4`` plus a smooth random wander; with
    probability ``branching`` it spawns a branch (30 deg +- 15 deg off its
    direction, also sinuous) from a random point of it. The branch's own
    meander shifts its start across by up to its amplitude, so a branch
    may stand apart from its parent rather than join it. Centrelines are
    dilated to ``width`` cells; at any sinuosity they are stamped densely
    enough to stay continuous.
    Channels are added until the channel fraction reaches ``density`` (or
    ``n_channels`` channels are drawn).

    Parameters
    ----------
    shape : tuple of int, default=(500, 500)
        ``(n_rows, n_cols)`` in cells (positive ints).
    n_channels : int or None, default=None
        Exact number of channels, from 1 to :data:`MAX_CHANNELS` (1000);
        None: as many as ``density`` needs (at most :data:`MAX_CHANNELS`:
        the fraction may then stay below ``density``).
    density : float, default=0.25
        Target channel fraction in (0, 1) when ``n_channels`` is None
        (the paper's image has 0.26).
    width : float, default=8.0
        Channel width in cells, finite, > 0 and at most 10 times the
        image's diagonal ``hypot(n_rows, n_cols)``: the cells within
        ``width / 2`` of a centreline cell. Across a straight horizontal
        or vertical channel that is ``2 * floor(width / 2) + 1`` cells, an
        odd number: ``width`` for an odd integer, ``width + 1`` for an even
        one (the default 8 gives 9).
    orientation : float, default=0.0
        Mean channel direction in degrees, counter-clockwise from the
        column (x) axis; 0 gives horizontal channels. Finite.
    sinuosity : float, default=0.5
        Meander amplitude relative to a quarter wavelength, finite, >= 0;
        0: straight.
    wavelength : float or None, default=None
        Meander wavelength in cells, finite, > 0 and at most 10 times the
        image's diagonal; None: ``max(shape) / 3``.
    branching : float, default=0.3
        Probability in [0, 1] that a channel has a branch.
    random_state : int >= 0, numpy Generator/RandomState or None
        Seed; the same seed gives the same image.

    Returns
    -------
    image : ndarray of shape (n_rows, n_cols), dtype float64
        1 inside channels, 0 elsewhere.

    Raises
    ------
    ValueError
        Naming the parameter, for a value outside the ranges above (integers
        must be ints, not floats or bools; numbers must be real and finite).
    """
    owner = "make_channel_image"
    n_rows, n_cols = _check_shape(shape, "shape", owner)
    diag = float(np.hypot(n_rows, n_cols))
    if n_channels is not None:
        n_channels = _check_int(n_channels, "n_channels", owner, minimum=1, maximum=MAX_CHANNELS,
                                note=" (MAX_CHANNELS) or None")
    else:
        density = _check_real(density, "density", owner, "a number in (0, 1)", lambda v: 0 < v < 1)
    width = _check_real(width, "width", owner, f"a finite number of cells in (0, {10 * diag:.6g}] (10 times "
                        f"the image's diagonal)", lambda v: 0 < v <= 10 * diag)
    orientation = _check_real(orientation, "orientation", owner, "a finite angle in degrees",
                              lambda v: True)
    sinuosity = _check_real(sinuosity, "sinuosity", owner, "a finite number >= 0", lambda v: v >= 0)
    if wavelength is not None:
        wavelength = _check_real(wavelength, "wavelength", owner,
                                 f"None or a finite number of cells in (0, {10 * diag:.6g}] (10 times the "
                                 f"image's diagonal)", lambda v: 0 < v <= 10 * diag)
    branching = _check_real(branching, "branching", owner, "a probability in [0, 1]", lambda v: 0 <= v <= 1)
    rng = _rng(random_state, owner)
    wavelength = wavelength if wavelength is not None else max(n_rows, n_cols) / 3.0
    theta = np.deg2rad(orientation)
    # unit vectors along and across the channel direction in (col=x, row=-y) coordinates
    along = np.array([np.cos(theta), -np.sin(theta)])  # (dx, drow)
    across = np.array([np.sin(theta), np.cos(theta)])
    centre = np.array([(n_cols - 1) / 2.0, (n_rows - 1) / 2.0])
    step = 0.5
    centreline = np.zeros((n_rows, n_cols), dtype=bool)
    radius = width / 2.0

    n_lines = 0     # centrelines stamped (channels and branches)

    def stamp(points):
        nonlocal n_lines
        n_lines += 1
        points = np.concatenate([points, _gap_points(points, max(step, radius), step, n_rows, n_cols)])
        cols = np.rint(points[:, 0]).astype(np.int64)
        rows = np.rint(points[:, 1]).astype(np.int64)
        ok = (rows >= 0) & (rows < n_rows) & (cols >= 0) & (cols < n_cols)
        centreline[rows[ok], cols[ok]] = True

    def channel_fraction():
        if not centreline.any():
            return 0.0
        return float((ndimage.distance_transform_edt(~centreline) <= radius).mean())

    max_channels = n_channels if n_channels is not None else MAX_CHANNELS
    drawn = 0
    while drawn < max_channels:
        s, offset = _centreline(rng, diag + 2 * width, step, sinuosity, wavelength)
        start = centre - along * (diag / 2 + width) + across * rng.uniform(-diag / 2, diag / 2)
        points = start + s[:, None] * along + offset[:, None] * across
        stamp(points)
        if rng.uniform() < branching:
            i0 = rng.integers(0, s.size)
            sign = rng.choice([-1.0, 1.0])
            phi = theta + sign * np.deg2rad(rng.uniform(15.0, 45.0))
            b_along = np.array([np.cos(phi), -np.sin(phi)])
            b_across = np.array([np.sin(phi), np.cos(phi)])
            sb, ob = _centreline(rng, rng.uniform(0.3, 0.8) * diag, step, sinuosity, wavelength)
            # the branch's own meander starts it up to one amplitude across from the parent (kept:
            # the shipped procedural prior and its record are tied to this family of images)
            stamp(points[i0] + sb[:, None] * b_along + ob[:, None] * b_across)
        drawn += 1
        # a cheap bound on the channel cells before the exact distance transform: a band of width + 1
        # cells across (a symmetric dilation about a cell is an odd number of cells across) per cell of
        # length, at least 1 / sqrt(2) centreline cells per cell of length (a diagonal), plus a disk at
        # each end of a line. (Centreline cells x width was no bound below 1 cell nor along a diagonal:
        # the exact check was skipped, and channels added, past the density: 0.83 for 0.25 at width 0.3.)
        if (n_channels is None
                and (centreline.sum() * math.sqrt(2.0) * (width + 1.0)
                     + 2 * n_lines * math.pi * (radius + 1.0) ** 2) >= density * n_rows * n_cols
                and channel_fraction() >= density):
            break
    if n_channels is None and drawn == MAX_CHANNELS and (reached := channel_fraction()) < density:
        warnings.warn(f"{owner}: {MAX_CHANNELS} channels (MAX_CHANNELS) reach a channel fraction of "
                      f"{reached:.3g}, below density={density}; use wider channels or a lower density",
                      UserWarning, stacklevel=2)
    if not centreline.any():
        return np.zeros((n_rows, n_cols))
    return (ndimage.distance_transform_edt(~centreline) <= radius).astype(np.float64)


def make_straight_channels(n_samples, shape=(16, 16), width=3, random_state=None):
    """Models with one straight horizontal channel at a random depth.

    Parameters
    ----------
    n_samples : int
        Number of models (>= 0).
    shape : tuple of int, default=(16, 16)
        ``(n_rows, n_cols)`` in cells.
    width : int, default=3
        Channel thickness in rows (cells), in [1, n_rows].
    random_state : int >= 0, numpy Generator/RandomState or None

    Returns
    -------
    images : ndarray of shape (n_samples, n_rows, n_cols), dtype float64
        1 in the rows ``top .. top + width - 1``, with ``top`` uniform in
        ``0 .. n_rows - width``; the channel fraction of every model is
        exactly ``width / n_rows``.
    """
    owner = "make_straight_channels"
    n_rows, n_cols = _check_shape(shape, "shape", owner)
    if not (_is_int(width) and 1 <= width <= n_rows):
        raise ValueError(f"{owner}: width must be an integer in [1, n_rows={n_rows}] rows; got {width!r}.")
    width = int(width)
    n_samples = _check_int(n_samples, "n_samples", owner, minimum=0)
    rng = _rng(random_state, owner)
    tops = rng.integers(0, n_rows - width + 1, size=n_samples)
    rows = np.arange(n_rows)
    inside = (rows[None, :] >= tops[:, None]) & (rows[None, :] < tops[:, None] + width)
    return np.repeat(inside[:, :, None], n_cols, axis=2).astype(np.float64)


def load_image(path, threshold=0.5):
    """Load a training image from a PNG (or any Pillow format) or an NPY file.

    Parameters
    ----------
    path : str or path-like
        ``.npy`` files are read with ``numpy.load(allow_pickle=False)`` (no
        code execution) and returned as float64; other files are opened with
        Pillow, converted to grey levels in [0, 1] and thresholded.
    threshold : float or None, default=0.5
        Grey level in [0, 1] (the 0-255 levels / 255) at or above which a
        pixel is channel (1); other values raise a ValueError. A threshold
        that leaves every pixel of a non-uniform image 0 (or every pixel 1)
        warns: a 0/1 mask saved as 8-bit levels 0 and 1 needs
        ``threshold=1/255``. None keeps grey levels. Images only: a
        ``.npy`` array is returned as stored.

    Returns
    -------
    image : ndarray of shape (n_rows, n_cols), dtype float64
    """
    path = os.fspath(path)
    if threshold is not None:
        threshold = _check_real(threshold, "threshold", "load_image",
                                "None or a grey level in [0, 1] (0-255 levels / 255)", lambda v: 0 <= v <= 1)
    if path.lower().endswith(".npy"):
        image = np.load(path, allow_pickle=False)
        image = np.asarray(image, dtype=np.float64)
    else:
        from PIL import Image

        with Image.open(path) as img:
            image = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
        if threshold is not None:
            grey, image = image, (image >= threshold).astype(np.float64)
            if image.size and grey.min() < grey.max() and image.min() == image.max():
                warnings.warn(f"load_image: thresholded at {threshold:g}, every pixel of {path!r} is "
                              f"{image.flat[0]:g} (grey levels {grey.min():.4g} to {grey.max():.4g}); a 0/1 "
                              f"mask saved as 8-bit grey levels 0 and 1? Pass threshold=1/255 (or a grey level "
                              f"between the image's), or threshold=None for its grey levels", UserWarning,
                              stacklevel=2)
    if image.ndim != 2:
        raise ValueError(f"load_image: expected a 2-D image in {path!r}; got shape {image.shape}.")
    return image


def _channels_ti_path():
    from importlib.resources import files
    return files("latentinv") / "data" / "channels_ti" / "channels_ti.png"


def load_channels_ti():
    """The paper's training image: 2500 x 2500 binary braided channels (1 = channel).

    The image of Laloy et al. (2018) and Lopez-Alvis et al. (2021), from the paper's public code
    (jlalvis/VAE_SGD, VAE/ti/ti.png; MIT license, copyright Jorge Lopez-Alvis 2020, the license text
    is bundled beside the file). One pixel is one 0.1 m x 0.1 m cell of the crosshole test case.
    Its SHA-256 is checked at every load.

    Returns
    -------
    image : ndarray of shape (2500, 2500), dtype float64, values 0 and 1

    Raises
    ------
    ValueError
        If the bundled file is damaged or was replaced (checksum mismatch).
    """
    import hashlib
    import io

    from PIL import Image

    data = _channels_ti_path().read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != _CHANNELS_TI_SHA256:
        raise ValueError(f"load_channels_ti: the bundled training image is damaged or was replaced "
                         f"(SHA-256 {digest}, expected {_CHANNELS_TI_SHA256}); reinstall latentinv")
    with Image.open(io.BytesIO(data)) as img:
        image = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    return (image >= 0.5).astype(np.float64)


def load_paper_truth(name):
    """One of the paper's cropped truths, ``"mc1"``, ``"mc2"`` or ``"mc3"``: a (129, 65) float64 0/1
    model (1 = channel), the crop of :func:`load_channels_ti` at ``PAPER_TRUTH_WINDOWS[name]``.

    Parameters
    ----------
    name : {"mc1", "mc2", "mc3"}

    Returns
    -------
    model : ndarray of shape (129, 65), dtype float64, values 0 and 1
        An image (row 0 at the top); ``model.ravel()`` is the flat model.

    Raises
    ------
    ValueError
        For another ``name``, or a damaged training image (:func:`load_channels_ti`).
    """
    if name not in PAPER_TRUTH_WINDOWS:
        raise ValueError(f"load_paper_truth: name must be one of {sorted(PAPER_TRUTH_WINDOWS)}, got {name!r}")
    r0, c0, h, w = PAPER_TRUTH_WINDOWS[name]
    return load_channels_ti()[r0:r0 + h, c0:c0 + w].copy()


def _held_out_corners(shape, owner):
    """The crop shape (checked) and the ranges of admissible top-left rows and columns in HELD_OUT_WINDOW."""
    h, w = _check_shape(shape, "shape", owner)
    r0, c0, n_rows, n_cols = HELD_OUT_WINDOW
    if h > n_rows or w > n_cols:
        raise ValueError(f"{owner}: shape must fit in the held-out window of {n_rows} x {n_cols} cells "
                         f"(HELD_OUT_WINDOW = {HELD_OUT_WINDOW}); got {(h, w)}.")
    return (h, w), (r0, r0 + n_rows - h), (c0, c0 + n_cols - w)


def held_out_corner(random_state=None, shape=(129, 65)):
    """Top-left corner of a crop of the paper's training image that the default prior never saw.

    Drawn uniformly among the crops of ``shape`` that lie wholly inside :data:`HELD_OUT_WINDOW`.

    Parameters
    ----------
    random_state : int >= 0, numpy Generator/RandomState or None
    shape : tuple of int, default=(129, 65)
        ``(n_rows, n_cols)`` of the crop (the paper's model: 129 x 65 cells).

    Returns
    -------
    row0, col0 : int
        For :func:`load_held_out_crop`.
    """
    _, (r_lo, r_hi), (c_lo, c_hi) = _held_out_corners(shape, "held_out_corner")
    rng = _rng(random_state, "held_out_corner")
    return int(rng.integers(r_lo, r_hi + 1)), int(rng.integers(c_lo, c_hi + 1))


def load_held_out_crop(row0, col0, shape=(129, 65)):
    """A crop of :func:`load_channels_ti` inside :data:`HELD_OUT_WINDOW`: a truth for the default prior.

    Parameters
    ----------
    row0, col0 : int
        Top-left corner in the whole image (e.g. from :func:`held_out_corner`).
    shape : tuple of int, default=(129, 65)

    Returns
    -------
    crop : ndarray of shape ``shape``, dtype float64, values 0 and 1 (1 = channel)

    Raises
    ------
    ValueError
        If the crop does not lie wholly inside the held-out window (it could overlap the prior's
        training crops) or a corner is not an integer.
    """
    owner = "load_held_out_crop"
    (h, w), (r_lo, r_hi), (c_lo, c_hi) = _held_out_corners(shape, owner)
    corner = []
    for name, value, lo, hi in (("row0", row0, r_lo, r_hi), ("col0", col0, c_lo, c_hi)):
        if not _is_int(value):
            raise ValueError(f"{owner}: {name} must be an integer; got {value!r}.")
        if not lo <= value <= hi:
            raise ValueError(f"{owner}: {name} must be in [{lo}, {hi}] so that the {h} x {w} crop lies "
                             f"inside the held-out window {HELD_OUT_WINDOW} (row0, col0, n_rows, n_cols); "
                             f"got {value}.")
        corner.append(int(value))
    r, c = corner
    return load_channels_ti()[r:r + h, c:c + w].copy()


def _is_window(w):
    """True for a 1-D numeric sequence (a window of any length; its length is checked later)."""
    if isinstance(w, (str, bytes)):
        return False
    try:
        a = np.asarray(w)
    except Exception:  # ragged nested lists
        return False
    return a.ndim == 1 and a.size > 0 and (np.issubdtype(a.dtype, np.number) or a.dtype == bool)


def _windows(exclude):
    """Windows given as a mapping (e.g. :data:`PAPER_TRUTH_WINDOWS`: its values) or any iterable, as a list
    (an array stays an array; None stays None)."""
    if exclude is None or isinstance(exclude, np.ndarray):
        return exclude
    if isinstance(exclude, Mapping):
        return list(exclude.values())
    return list(exclude)


def _check_window(window, image_shape, image, owner):
    """``(row0, col0, n_rows, n_cols)`` as ints, entirely inside an image of ``image_shape``.

    ``image`` names the image in the errors (e.g. "image 0").
    """
    values = np.asarray(window).tolist()
    if len(values) != 4:
        raise ValueError(f"{owner}: each exclusion window must have 4 entries (row0, col0, n_rows, "
                         f"n_cols); got {window!r} with {len(values)} for {image}.")
    if any(isinstance(v, bool) or not math.isfinite(float(v)) or float(v) != int(v) for v in values):
        raise ValueError(f"{owner}: exclusion window entries must be integers (cells); got {window!r} "
                         f"for {image}.")
    r0, c0, hw, ww = (int(v) for v in values)
    if hw < 1 or ww < 1:
        raise ValueError(f"{owner}: exclusion window sizes must be >= 1; got {(r0, c0, hw, ww)} for "
                         f"{image}.")
    n_rows, n_cols = image_shape
    if r0 < 0 or c0 < 0 or r0 + hw > n_rows or c0 + ww > n_cols:
        raise ValueError(f"{owner}: exclusion window {(r0, c0, hw, ww)} (row0, col0, n_rows, n_cols) lies "
                         f"outside {image} of shape {(n_rows, n_cols)}; expected "
                         f"0 <= row0, row0 + n_rows <= {n_rows}, 0 <= col0, col0 + n_cols <= {n_cols}.")
    return r0, c0, hw, ww


class PatchSampler:
    """Fresh random crops from large training images, avoiding held-out windows.

    Every call of :meth:`sample` draws new crop corners uniformly among all
    crops of ``patch_shape`` that fit in an image and do not overlap any
    exclusion window (the held-out test models), as the paper's training loop
    does at every iteration.

    Parameters
    ----------
    images : array-like of shape (n_rows, n_cols) or sequence of them
        Training image(s), e.g. from :func:`make_channel_image` or
        :func:`load_image`.
    patch_shape : tuple of int
        ``(n_rows, n_cols)`` of the crops, in cells (the paper: (129, 65)).
    exclude : sequence, default=None
        Exclusion windows ``(row0, col0, n_rows, n_cols)`` (top-left corner
        and size, integer cells, entirely inside the image: a window of the
        wrong length, with non-integer entries, a size below 1 or reaching
        outside the image raises a ValueError). Either a flat sequence of
        windows applied to every image, or one sequence of windows per image;
        a mapping (e.g. :data:`PAPER_TRUTH_WINDOWS`) stands for its values.
    random_state : int >= 0, numpy Generator/RandomState or None
        Seeds the sampler's own generator (used when :meth:`sample` gets no
        ``random_state``). A prior's ``fit`` does not use it: the crops it
        trains on come from the prior's own ``random_state``, with the rest of
        its training's draws (a seeded sampler given to ``fit`` gets a
        UserWarning that says so).

    Attributes
    ----------
    n_features : int
        ``patch_shape[0] * patch_shape[1]``.
    n_valid : ndarray of int
        Number of admissible crop corners per image.

    Notes
    -----
    A crop with top-left corner ``(r, c)`` covers rows ``r .. r + h - 1`` and
    columns ``c .. c + w - 1``; it overlaps window ``(r0, c0, hw, ww)`` iff
    ``r < r0 + hw and r0 < r + h and c < c0 + ww and c0 < c + w``.
    """

    def __init__(self, images, patch_shape, exclude=None, random_state=None):
        owner = "PatchSampler"
        if isinstance(images, np.ndarray) and images.ndim == 2:
            images = [images]
        elif isinstance(images, np.ndarray) and images.ndim == 3:
            images = list(images)
        elif isinstance(images, np.ndarray):    # iterating would give its rows or values, one "image" each
            raise ValueError(f"{owner}: images must be a 2-D array (n_rows, n_cols), a stack (n_images, n_rows, "
                             f"n_cols) or a list of 2-D arrays; got an array of shape {images.shape}.")
        images = [np.array(im, dtype=np.float32) for im in images]      # its own copy: checked once, kept
        if not images or any(im.ndim != 2 for im in images):
            bad = [i for i, im in enumerate(images) if im.ndim != 2]
            raise ValueError(f"{owner}: images must be 2-D arrays (n_rows, n_cols); got "
                             + (f"{len(bad)} of {len(images)} that are not, the first (image {bad[0]}) of shape "
                                f"{images[bad[0]].shape}." if images else "no image."))
        if any(not np.isfinite(im).all() for im in images):
            raise ValueError(f"{owner}: images contain NaN or infinity.")
        self.images = images
        self.patch_shape = _check_shape(patch_shape, "patch_shape", owner)
        h, w = self.patch_shape
        for i, im in enumerate(images):
            if im.shape[0] < h or im.shape[1] < w:
                raise ValueError(f"{owner}: patch_shape {self.patch_shape} larger than image {i} "
                                 f"of shape {im.shape}.")
        exclude = _windows(exclude)
        if exclude is None or len(exclude) == 0:
            per_image = [[] for _ in images]
        elif all(_is_window(e) for e in exclude):
            per_image = [list(exclude) for _ in images]
        else:
            if len(exclude) != len(images):
                raise ValueError(f"{owner}: exclude must be a list of windows (row0, col0, n_rows, "
                                 f"n_cols) or one list of windows per image ({len(images)}); got "
                                 f"{len(exclude)} entries.")
            per_image = [_windows(e) if e is not None else [] for e in exclude]
            for e in per_image:
                if not all(_is_window(x) for x in e):
                    raise ValueError(f"{owner}: each exclusion window must be (row0, col0, n_rows, "
                                     f"n_cols); got {e!r}.")
        self.exclude = [[_check_window(win, im.shape, f"image {i}", owner) for win in e]
                        for i, (im, e) in enumerate(zip(images, per_image))]
        self._corners = []
        for im, windows in zip(images, self.exclude):
            mask = np.ones((im.shape[0] - h + 1, im.shape[1] - w + 1), dtype=bool)
            for r0, c0, hw, ww in windows:
                # corners (r, c) with r < r0 + hw, r0 < r + h (same for columns) overlap the window
                mask[max(0, r0 - h + 1):r0 + hw, max(0, c0 - w + 1):c0 + ww] = False
            self._corners.append(np.flatnonzero(mask).astype(np.int64))
        self.n_valid = np.array([c.size for c in self._corners])
        if self.n_valid.sum() == 0:
            raise ValueError(f"{owner}: no crop of shape {self.patch_shape} avoids the exclusion windows.")
        self.n_features = h * w
        self.random_state = random_state
        self._rng = _rng(random_state, owner)

    def admissible_corners(self, image_index=0):
        """All admissible top-left corners of crops of image ``image_index``.

        Parameters
        ----------
        image_index : int, default=0
            Index of the image, in [0, n_images).

        Returns
        -------
        rows, cols : ndarray of int64
            Row-major order; every crop at these corners fits in the image and overlaps no
            exclusion window, and every other crop of the image overlaps one.

        Raises
        ------
        ValueError
            For an ``image_index`` out of range.
        """
        i = image_index
        if not (_is_int(i) and 0 <= i < len(self.images)):
            raise ValueError(f"PatchSampler: image_index must be in [0, {len(self.images)}); got "
                             f"{image_index!r}.")
        i = int(i)
        return np.divmod(self._corners[i], self.images[i].shape[1] - self.patch_shape[1] + 1)

    def sample_corners(self, n_samples, random_state=None):
        """Draw crop positions: arrays ``(image_index, row0, col0)``, each of shape (n_samples,).

        Parameters
        ----------
        n_samples : int
            Number of crops, >= 0 (0: empty arrays).
        random_state : int >= 0, numpy Generator/RandomState or None
            As in :meth:`sample`.

        Returns
        -------
        which, rows, cols : ndarray of int64 of shape (n_samples,)
            Image index and top-left corner (cells) of each crop; :meth:`cut_tensor` cuts them.
        """
        owner = "PatchSampler"
        n_samples = _check_int(n_samples, "n_samples", owner, minimum=0)
        rng = self._rng if random_state is None else _rng(random_state, owner)
        p = self.n_valid / self.n_valid.sum()
        which = rng.choice(len(self.images), size=n_samples, p=p)
        rows = np.empty(n_samples, dtype=np.int64)
        cols = np.empty(n_samples, dtype=np.int64)
        h, w = self.patch_shape
        for i in np.unique(which):
            sel = which == i
            flat = self._corners[i][rng.integers(0, self.n_valid[i], size=int(sel.sum()))]
            rows[sel], cols[sel] = np.divmod(flat, self.images[i].shape[1] - w + 1)
        return which, rows, cols

    def sample(self, n_samples, random_state=None):
        """Draw ``n_samples`` fresh crops.

        Parameters
        ----------
        n_samples : int
            Number of crops, >= 0 (0: an empty array of shape (0, n_rows, n_cols)).
        random_state : int >= 0, numpy Generator/RandomState or None
            None uses the sampler's own generator (advancing it).

        Returns
        -------
        patches : ndarray of shape (n_samples, n_rows, n_cols), dtype float32
        """
        which, rows, cols = self.sample_corners(n_samples, random_state)
        h, w = self.patch_shape
        out = np.empty((len(which), h, w), dtype=np.float32)
        for k, (i, r, c) in enumerate(zip(which, rows, cols)):
            out[k] = self.images[i][r:r + h, c:c + w]
        return out

    def sample_tensor(self, n_samples, random_state=None, device="cpu"):
        """:meth:`sample` as a float32 torch tensor cut on ``device`` from copies of the images kept
        there (made once per device): the same crops for the same ``random_state``, without cutting
        each batch on the host and copying it over (a GPU's training loop reads the image where it
        computes).

        Parameters
        ----------
        n_samples : int
            Number of crops, >= 0.
        random_state : int >= 0, numpy Generator/RandomState or None
            As in :meth:`sample`.
        device : str or torch.device, default="cpu"

        Returns
        -------
        patches : torch.Tensor of shape (n_samples, n_rows, n_cols), float32, on ``device``
        """
        return self.cut_tensor(*self.sample_corners(n_samples, random_state), device=device)

    def cut_tensor(self, which, rows, cols, device="cpu"):
        """The crops at corners ``(which, rows, cols)`` (:meth:`sample_corners`' arrays) as a float32
        tensor ``(n, n_rows, n_cols)`` cut on ``device`` (see :meth:`sample_tensor`).

        Parameters
        ----------
        which, rows, cols : ndarray of int of shape (n,)
            Image index and top-left corner (cells) of each crop, which must fit in its image (not
            checked here).
        device : str or torch.device, default="cpu"

        Returns
        -------
        patches : torch.Tensor of shape (n, n_rows, n_cols), float32, on ``device``
        """
        import torch

        device = torch.device(device)
        cache = self.__dict__.setdefault("_device_images", {})
        if str(device) not in cache:
            cache[str(device)] = [torch.as_tensor(im, dtype=torch.float32).to(device) for im in self.images]
        images = cache[str(device)]
        h, w = self.patch_shape
        out = torch.empty((len(which), h, w), dtype=torch.float32, device=device)
        dr, dc = torch.arange(h, device=device), torch.arange(w, device=device)
        for i in np.unique(which):
            sel = np.flatnonzero(which == i)
            r = torch.as_tensor(rows[sel], device=device)[:, None, None] + dr[None, :, None]
            c = torch.as_tensor(cols[sel], device=device)[:, None, None] + dc[None, None, :]
            out[torch.as_tensor(sel, device=device)] = images[i][r, c]
        return out

    def __repr__(self):
        return (f"PatchSampler(n_images={len(self.images)}, patch_shape={self.patch_shape}, "
                f"n_exclude={sum(len(e) for e in self.exclude)})")


def layered_channel_slowness(grid, seed=0):
    """A heterogeneous test model for raytracing: slowness (ns/m) per cell of ``grid``.

    Two layers (0.1 and 0.07 m/ns), a sinuous slow channel (0.06 m/ns) and 3 % multiplicative noise;
    the model of the raytracer tests and of ``benchmarks/bench_raytrace.py``.

    Parameters
    ----------
    grid : Grid2D
    seed : int, numpy Generator or None, default=0
        Seeds the noise (``numpy.random.default_rng(seed)``).

    Returns
    -------
    slowness : ndarray of shape (n_cells,), float64
        In ns/m, flat in the package's cell order; each cell's slowness times a factor in [1, 1.03).
    """
    rng = np.random.default_rng(seed)
    x, z = grid.cell_centers.T
    s = np.where(z > grid.origin[1] + 0.4 * grid.height, 1 / 0.07, 1 / 0.1)
    channel = np.abs(z - (grid.origin[1] + 0.3 * grid.height + 0.1 * grid.height * np.sin(x))) < 0.1 * grid.height
    s = np.where(channel, 1 / 0.06, s)
    return s * (1 + 0.03 * rng.random(grid.n_cells))
