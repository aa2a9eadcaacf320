"""Command line: ``latentinv demo | train | invert | sample | bench``.

``latentinv demo``
    The embedded default, end to end: the paper's crosshole geometry, the shipped default prior, a
    truth cropped from the band of the paper's training image that the prior never saw (rows
    2200-2499), traveltimes, and the latent-space SGD inversion with the
    straight-ray (linear) and shortest-path (nonlinear) operators. Writes ``demo.png`` (the figure),
    ``report.json`` (settings, thresholds, baselines, timings) and ``models.npz`` (truth,
    reconstruction, inverted models and the inverted data).
``latentinv train``
    Trains a :class:`~latentinv.prior.VAEPrior` on random crops of a training image (the paper's,
    bundled: ``--image paper``; a PNG/NPY file; or the procedural generator), away from held-out
    windows, and saves it (a directory).
``latentinv invert``
    Traveltimes (one survey per row, or one column) -> models (``models.npy``), ``invert.png`` and
    ``result.json``.
``latentinv sample``
    Traveltimes -> posterior by latent-space MCMC (``posterior.npz``, ``posterior.png``,
    ``posterior.json``).
``latentinv bench``
    Runs the scripts of the repository's ``benchmarks/`` folder.

Geometry file (``--geometry FILE``), JSON::

    {
      "grid": {"n_rows": 129, "n_cols": 65, "cell_size": 0.1, "origin": [0.0, 0.0]},
      "sources":   [[0.0, 0.5], [0.0, 1.0], ...],      # (x, depth) in m
      "receivers": [[6.5, 0.5], [6.5, 1.0], ...],      # (x, depth) in m
      "pairs": [[0, 0], [0, 1], ...]                   # optional: (source, receiver) per datum;
    }                                                  # default: every pair, source-major

``cell_size`` is one number or ``[dx, dz]``; ``origin`` (the top-left corner, m) is optional. The
traveltimes (ns) must follow the order of ``pairs`` (source-major by default, as the paper). With
``--operator shortest-path`` every sensor must sit on a cell corner or on one of the
``--secondary-nodes`` (3 by default) equally spaced nodes of a cell side.

Every summary reports the baselines of :mod:`latentinv.baselines` beside its thresholds and
acceptances (the best constant model, the best homogeneous-velocity model) and prints a warning when
a result is not clearly better than them. Heavy modules (torch, matplotlib, the estimators) are
imported inside the commands, so ``latentinv --help`` stays fast.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import click
import numpy as np

from . import __version__

__all__ = ["main", "load_geometry", "load_traveltimes", "DEMO_TRUTH_SEED"]

#: Base seed of the demo's truth: ``latentinv demo --seed S`` crops the paper's training image at
#: ``latentinv.datasets.held_out_corner(DEMO_TRUTH_SEED + S)``, inside the band no training crop of the
#: shipped prior overlapped (``latentinv.datasets.HELD_OUT_WINDOW``).
DEMO_TRUTH_SEED = 20210001

_PAPER_LINEAR_BOREHOLES = (0.01, 6.49)
_PAPER_NONLINEAR_BOREHOLES = (0.0, 6.5)
#: crops on which `latentinv train` compares its prior's reconstruction with the best constant model
_TRAIN_CHECK_CROPS = 32
#: ``--seed`` of every command: the seeds numpy's legacy generators (and hence scikit-learn and the
#: estimators) accept, so that a bad one is refused by click, naming ``--seed`` and the range
_SEED = click.IntRange(0, 2**32 - 1)
#: dtype kinds of numeric arrays read from files: signed and unsigned integers, floating point
#: (not bool, complex, strings, bytes, objects, structured records, dates)
_REAL_KINDS = "iuf"
#: keys of a geometry file (and of its "grid" object)
_GEOMETRY_KEYS = ("grid", "sources", "receivers", "pairs")
_GRID_KEYS = ("n_rows", "n_cols", "cell_size", "origin")


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def _user_errors(fn):
    """Turn the library's input errors into click errors (a message and exit code 1, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, ImportError,
                json.JSONDecodeError, KeyError) as exc:
            msg = str(exc) if not isinstance(exc, KeyError) else f"missing key {exc}"
            raise click.ClickException(msg) from None
        except (MemoryError, RuntimeError) as exc:
            from ._memory import is_out_of_memory
            if not is_out_of_memory(exc):
                raise
            first_line = str(exc).strip().split("\n")[0] or type(exc).__name__
            raise click.ClickException(
                f"out of memory: {first_line}\nThe sizes asked for do not fit on this machine: lower them "
                f"(e.g. --batch-size, --hidden-size, --channels, --n-starts, --chains) or use a device "
                f"with more memory.") from None

    return wrapper


def _check_device(ctx, param, value):
    """``--device``, checked by the estimators' own parser, so that a bad spec (or CUDA on a machine
    without it) is a usage error naming the option, not the estimator's parameter."""
    from ._common import _resolve_device

    try:
        _resolve_device(value, owner="--device")
    except ValueError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None
    return value


def _check_n_jobs(ctx, param, value):
    if value == 0:
        raise click.BadParameter("expected a non-zero integer (-1: all cores, 1: no parallelism), got 0")
    return value


def _check_out_dir(ctx, param, value):
    """``--out`` / ``--checkpoint``: a folder (created when missing) that can be made and written into,
    checked before any work (a file on its path was a NotADirectoryError traceback, for ``train`` after
    the whole training)."""
    if value is None:
        return value
    path = Path(value)
    for folder in (path, *path.parents):
        if folder.exists():             # the nearest existing folder on the path decides
            if not folder.is_dir():
                raise click.BadParameter(f"{value}: {folder} is a file, not a folder; expected a folder "
                                         "(created when missing)")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise click.BadParameter(f"{value}: cannot write into {folder} (no permission); expected a "
                                         "folder that can be written into")
            break
    return value


def _check_cuda_graphs(device, operator_kind=None):
    """``--cuda-graphs``, checked before any work: a usage error naming it where the library would refuse
    ``cuda_graphs=True`` (no CUDA behind ``--device``; for `invert`, an operator whose step cannot be
    graphed: :func:`latentinv.inversion.graphed.unsupported`'s reason)."""
    from ._common import _resolve_device

    resolved = _resolve_device(device, owner="--device")
    if resolved.type != "cuda":
        raise click.BadParameter(f"CUDA graphs need a CUDA device; --device {device} is {resolved} here "
                                 "(give --device cuda on a machine with a GPU, or leave out --cuda-graphs)",
                                 param_hint="'--cuda-graphs'")
    if operator_kind is not None:
        from .inversion import graphed

        why = graphed.unsupported(operator_kind == "straight", None, None)
        if why is not None:
            raise click.BadParameter(f"cannot run with --operator {operator_kind}: {why}",
                                     param_hint="'--cuda-graphs'")


#: ``--device`` of every command
_DEVICE_OPTION = click.option("--device", default="auto", show_default=True, callback=_check_device,
                              help="auto (CUDA when available), cpu, cuda or cuda:N.")


#: ``--threads``' bound: 4 x the CPUs this process may run on (``latentinv._cpus.available_cpus``: its affinity
#: mask capped by a cgroup CPU quota; ``os.cpu_count()``, the host's, can be many times more in a container).
#: More threads only slow torch down, and tens of thousands exhaust the address space with their stacks
#: (100000 ended in an unrelated error from a library loader).
_MAX_THREADS_PER_CPU = 4


def _max_threads():
    from ._cpus import available_cpus

    return _MAX_THREADS_PER_CPU * available_cpus()


def _check_threads(ctx, param, value):
    if value is not None and value > _max_threads():
        raise click.BadParameter(f"{value} is more than {_max_threads()} ({_MAX_THREADS_PER_CPU} x the "
                                 f"{_max_threads() // _MAX_THREADS_PER_CPU} CPUs this process may run on); more "
                                 f"threads than CPUs only slow torch down")
    return value


def _threads_option(fn):
    """``--threads N`` of the commands that compute: the command runs with torch's CPU thread count
    set to N (from before it loads anything to its end); without it, torch's default."""

    @functools.wraps(fn)
    def wrapper(*args, threads=None, **kwargs):
        from .inversion.runtime import torch_threads     # torch loads with the command, not at start-up
        with torch_threads(threads):
            return fn(*args, threads=threads, **kwargs)

    return click.option(
        "--threads", type=click.IntRange(1), default=None, callback=_check_threads,
        help="torch's CPU threads (torch.set_num_threads) for this command [default: torch's own, from "
             "OMP_NUM_THREADS or the number of cores], at most 4 x the CPUs this process may run on (its "
             "affinity mask, capped by a cgroup CPU quota). "
             "On a shared machine fewer threads can be much faster.")(wrapper)


def _threads_settings(threads):
    """What the reports record of ``--threads``: the option (None: torch's default) and the count used."""
    import torch

    return {"threads": threads, "torch_threads": torch.get_num_threads()}


def _operator_text(op):
    """How the progress lines name an operator: the engine only where the operator has more than one
    (the shortest-path operator: the compiled C++ core or its Python fallback); straight rays have one
    implementation (exact ray lengths in a SciPy sparse matrix), no compiled backend to miss."""
    from .operators import ShortestPathOperator, StraightRayOperator

    name = type(op).__name__
    if isinstance(op, StraightRayOperator):
        return f"{name} (exact ray lengths, NumPy/SciPy)"
    if isinstance(op, ShortestPathOperator):
        return f"{name} ({'C++' if op.backend == 'cpp' else 'Python'} backend)"
    return f"{name} ({op.backend})"


def _report_json(report):
    """A report as standard JSON: NaN and infinities (an R-hat of chains that never moved, a diverged
    start's misfit) become null, which every JSON reader takes; Python's own NaN tokens are not JSON."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (float, np.floating)) and not np.isfinite(v):
            return None
        return v
    return json.dumps(clean(report), indent=1, allow_nan=False)


def _echo(msg, quiet=False):
    if not quiet:
        click.echo(msg, err=True)


def _versions():
    import matplotlib
    import scipy
    import sklearn
    import torch

    from . import __version__

    return {"latentinv": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "torch": torch.__version__,
            "matplotlib": matplotlib.__version__, "platform": platform.platform()}


def _rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


def _json_type(value):
    """The JSON name of a parsed JSON value's type (for error messages)."""
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"),
                       (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return f"{name} ({json.dumps(value)[:60]})"
    return type(value).__name__


def load_geometry(spec, operator="straight"):
    """``"paper"`` or a JSON geometry file (see the module docstring) -> ``(Grid2D, CrossholeSurvey)``.

    For ``"paper"`` the boreholes sit at x = 0.01 / 6.49 m with the straight-ray operator and at
    x = 0 / 6.5 m with the shortest-path one, as in the paper.
    """
    from .geometry import CrossholeSurvey, Grid2D, paper_crosshole

    if spec in (None, "paper"):
        xs = _PAPER_LINEAR_BOREHOLES if operator == "straight" else _PAPER_NONLINEAR_BOREHOLES
        return paper_crosshole(*xs)
    path = Path(spec)
    if not path.is_file():
        raise click.BadParameter(f"geometry file {spec!r} does not exist (or pass 'paper')",
                                 param_hint="--geometry")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{spec}: not valid JSON ({exc})", param_hint="--geometry") from None

    def bad(msg):
        return click.BadParameter(f"{spec}: {msg}", param_hint="--geometry")

    if not isinstance(cfg, dict):
        raise bad(f"expected a JSON object with keys grid, sources, receivers (and optionally pairs), "
                  f"got {_json_type(cfg)}")
    missing = [k for k in ("grid", "sources", "receivers") if k not in cfg]
    if missing:
        raise bad(f"missing {missing} (needs grid, sources, receivers)")
    unknown = sorted(set(cfg) - set(_GEOMETRY_KEYS))
    if unknown:      # a misspelt optional key would otherwise be ignored silently
        raise bad(f"unknown key(s) {unknown}: expected only {list(_GEOMETRY_KEYS)}")
    g = cfg["grid"]
    if not isinstance(g, dict):
        raise bad(f'"grid" must be an object {{"n_rows": ..., "n_cols": ..., "cell_size": ..., '
                  f'"origin": ...}}, got {_json_type(g)}')
    missing = [k for k in ("n_rows", "n_cols") if k not in g]
    if missing:
        raise bad(f'"grid" needs n_rows and n_cols (missing {missing})')
    unknown = sorted(set(g) - set(_GRID_KEYS))
    if unknown:
        raise bad(f'unknown key(s) {unknown} in "grid": expected only {list(_GRID_KEYS)}')
    try:
        grid = Grid2D(g["n_rows"], g["n_cols"], g.get("cell_size", 0.1), g.get("origin", (0.0, 0.0)))
    except (ValueError, TypeError) as exc:
        raise bad(f'"grid": {exc}') from None
    try:
        survey = CrossholeSurvey(cfg["sources"], cfg["receivers"], cfg.get("pairs"))
    except (ValueError, TypeError) as exc:
        raise bad(str(exc)) from None          # names sources, receivers or pairs
    try:
        survey.check_in(grid, owner=f"geometry file {spec}")
    except ValueError as exc:       # a sensor outside the grid: a --geometry error (the owner names the file)
        raise click.BadParameter(str(exc), param_hint="--geometry") from None
    return grid, survey


def _text_header(path, delimiter):
    """Names of a text file's header row (its first line, every field of which is text), or None when
    every field of that line is a number; BadParameter when it mixes both (neither a survey, read
    silently without it, nor a header)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    fields = [t.strip() for t in (first.split(delimiter) if delimiter else first.split())]
    fields = [t for t in fields if t]

    def number(t):
        try:
            float(t)
            return True
        except ValueError:
            return False
    kinds = {number(t) for t in fields}
    if kinds == {True, False}:
        text = [t for t in fields if not number(t)][:3]
        raise click.BadParameter(f"{path}: the first row mixes numbers and text (e.g. {text}): neither a row of "
                                 f"traveltimes nor a header of column names{_separator_hint(Path(path))}",
                                 param_hint="TRAVELTIMES")
    return fields if kinds == {False} else None


def _separator_hint(p):
    """A hint for a text file whose fields are separated otherwise than its suffix says (``;``, or tabs
    in a ``.csv``), or ''."""
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            text = f.read(65536)
    except OSError:
        return ""
    csv = p.suffix.lower() == ".csv"
    found = next((name for sep, name in ((";", "';'"), ("\t", "tabs")) if sep in text and (csv or sep == ";")), None)
    if found is None:
        return ""
    expected = "',' between fields and '.' as the decimal point" if csv else "whitespace between fields"
    return f" (its fields are separated by {found}: a {p.suffix or 'text'} file is read with {expected}; save it so, or as .npy)"


def load_traveltimes(path, n_data):
    """Traveltimes (ns) from ``.npy`` or text: one survey per row, or a single column/row. A text
    file may start with one header row of column names (every field text); it is skipped, and its
    number of names must be the number of columns.

    Returns an array of shape ``(n_surveys, n_data)``.
    """
    p = Path(path)
    if not p.is_file():
        raise click.BadParameter(f"traveltime file {path!r} does not exist", param_hint="TRAVELTIMES")
    try:
        if p.suffix.lower() == ".npy":
            with open(p, "rb") as f:          # NumPy reads anything else as a pickle, and says so
                if f.read(6) != b"\x93NUMPY":
                    raise click.BadParameter(f"{path}: not a .npy array file (it does not start with NumPy's "
                                             "header); a text file of traveltimes is read from a .txt or .csv "
                                             "name", param_hint="TRAVELTIMES")
            a = np.load(p, allow_pickle=False)
        else:   # .csv: commas; any other text file: whitespace
            delimiter = "," if p.suffix.lower() == ".csv" else None
            header = _text_header(p, delimiter)
            a = np.loadtxt(p, ndmin=2, delimiter=delimiter, skiprows=1 if header else 0)
            if a.size == 0:
                raise click.BadParameter(f"{path}: no traveltimes in it{' after its header row' if header else ''}"
                                         f"{_separator_hint(p)}", param_hint="TRAVELTIMES")
            if header and len(header) != a.shape[1]:
                raise click.BadParameter(f"{path}: the header row names {len(header)} columns but the rows hold "
                                         f"{a.shape[1]}", param_hint="TRAVELTIMES")
    except (ValueError, OSError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}{_separator_hint(p)}", param_hint="TRAVELTIMES") from None
    if a.dtype.kind not in _REAL_KINDS:   # before any conversion: True -> 1 ns, 50+1j -> 50 ns, "50" -> 50 ns
        raise click.BadParameter(
            f"{path}: traveltimes (ns) must be real numbers (an integer or floating-point array), got "
            f"dtype {a.dtype}", param_hint="TRAVELTIMES")
    a = np.asarray(a, dtype=float)
    if a.ndim == 1:
        a = a[None, :]
    elif a.ndim == 2 and a.shape[1] == 1 and a.shape[0] != 1:
        a = a.T
    if a.ndim != 2 or a.shape[1] != n_data:
        raise click.BadParameter(
            f"{path}: expected {n_data} traveltimes per survey (one survey per row, or one column), "
            f"got an array of shape {a.shape}", param_hint="TRAVELTIMES")
    if a.shape[0] == 0:
        raise click.BadParameter(f"{path}: holds no survey (an array of shape {a.shape}); expected at least one "
                                 f"row of {n_data} traveltimes", param_hint="TRAVELTIMES")
    if not np.all(np.isfinite(a)):
        raise click.BadParameter(f"{path}: traveltimes hold NaN or inf", param_hint="TRAVELTIMES")
    return a


def _load_training_image(path):
    """``train --image``: :func:`latentinv.datasets.load_image`, its failures as ``--image`` errors.

    A ``.npy`` file must hold a 2-D array of real numbers (bool, integer or floating point: not complex,
    strings or records, which ``load_image`` would convert or fail on); any other file must be an
    image that Pillow reads (PNG, ...). The image must be finite.
    """
    from PIL import Image

    from .datasets import load_image

    def bad(msg):
        return click.BadParameter(f"{path}: {msg}", param_hint="--image")

    if str(path).lower().endswith(".npy"):          # load_image's own test
        try:        # the header only: the dtype, before load_image converts it to float
            dtype = np.load(path, mmap_mode="r", allow_pickle=False).dtype
        except (ValueError, OSError, EOFError) as exc:
            raise bad(f"cannot read it as a .npy array ({exc})") from None
        # bool: a binary image (1 = channel), as a thresholded PNG is
        if dtype.kind not in "b" + _REAL_KINDS:
            raise bad(f"a training image must hold real numbers (a bool, integer or floating-point "
                      f"array), got dtype {dtype}")
    try:
        image = load_image(path)
    except (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError) as exc:
        raise bad(f"cannot read it as a training image (a PNG or another image Pillow reads, or a .npy "
                  f"array): {type(exc).__name__}: {exc}") from None
    if image.ndim != 2:
        raise bad(f"expected a 2-D image, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise bad("the training image holds NaN or inf")
    return image


def _load_prior(spec, device="auto", sgan=False):
    """The prior of ``--prior``: the shipped one, or a saved VAEPrior (or SGANPrior with ``sgan``)."""
    from .prior import VAEPrior

    if spec in (None, "pretrained"):
        pretrained = getattr(VAEPrior, "pretrained", None)
        if pretrained is None:
            raise click.ClickException(
                "no shipped prior in this version of latentinv (VAEPrior.pretrained is missing): "
                "pass --prior DIR (a prior saved by `latentinv train`) or, for `demo`, --train-prior")
        try:
            return pretrained()
        except FileNotFoundError as exc:  # an installation without the package data
            raise click.ClickException(
                f"the shipped prior is missing from this installation ({exc}): pass --prior DIR "
                "(a prior saved by `latentinv train`) or, for `demo`, --train-prior") from None
    path = Path(spec)
    if not path.is_dir():
        raise click.BadParameter(f"prior directory {spec!r} does not exist "
                                 "(a folder written by `latentinv train` / VAEPrior.save)",
                                 param_hint="--prior")
    from ._common import ModelFileError

    device = None if device == "auto" else device
    try:
        return VAEPrior.load(path, device=device)
    except (ModelFileError, FileNotFoundError) as exc:
        if "got 'latentinv.SGANPrior'" not in str(exc):
            raise _damaged_prior(spec, exc) from None
    if not sgan:
        raise click.BadParameter(f"{spec!r} holds a saved SGANPrior, which has no encoder: the demo needs a "
                                 "VAEPrior's encode-decode reconstruction of its truth. `invert` and "
                                 "`sample` take SGAN priors.", param_hint="--prior")
    from .sgan import SGANPrior

    try:
        return SGANPrior.load(path, device=device)
    except (ModelFileError, FileNotFoundError) as exc:
        raise _damaged_prior(spec, exc) from None


def _damaged_prior(spec, exc):
    """The error for a ``--prior`` folder that does not load: not a usage error (exit 1; the folder
    exists and the option is well formed) but named as the option's, with the library's message, which
    names the file and what is wrong with it."""
    return click.ClickException(f"--prior {spec}: the saved prior cannot be loaded: {exc}")


def _is_sgan(prior):
    return getattr(prior, "latent_distribution", "normal") == "uniform"


def _sgd_settings(operator_kind, prior, lam=None):
    """The SGD settings `invert` and `sample` start from: the paper's VSbrd (straight rays) and
    nonlinear settings for a VAE prior, Table 1's SSbnd for an SGAN prior (straight rays only)."""
    from .inversion import NONLINEAR_SETTINGS, PAPER_CASES

    if _is_sgan(prior):
        if operator_kind != "straight":
            raise click.BadParameter(
                "the paper inverts SGAN priors with straight rays only (Table 1's SAnnn and SSbnd), so "
                "there are no shortest-path settings to start from: use --operator straight, or "
                "LatentInverter from Python with settings of your own", param_hint="--operator")
        if lam is not None:
            raise click.BadParameter("the ring regularisation is for a VAE prior's normal latents; an SGAN "
                                     "prior's uniform latents are kept in their box by stochastic clipping "
                                     "(Table 1's SSbnd): drop --lam", param_hint="--lam")
        return dict(PAPER_CASES["SSbnd"])
    if operator_kind == "straight":
        return dict(lr=1e-2, lr_decay=0.95, decay_every=1, regularization="ring", lam=10.0,
                    lam_decay=0.999, n_epochs=120)
    return dict(NONLINEAR_SETTINGS)


def _prior_shape(prior):
    shape = getattr(prior, "image_shape_", None) or getattr(prior, "image_shape", None)
    return None if shape is None else tuple(int(s) for s in shape)


def _make_operator(kind, grid, survey, n_secondary_nodes=3):
    from .operators import ShortestPathOperator, StraightRayOperator

    if kind == "straight":
        return StraightRayOperator(grid, survey)
    try:
        return ShortestPathOperator(grid, survey, n_secondary_nodes=n_secondary_nodes)
    except ValueError as exc:     # its advice "change n_secondary_nodes" is --secondary-nodes here
        if "not on a graph node" not in str(exc):
            raise
        raise click.BadParameter(f"{exc} (on the command line: --secondary-nodes)",
                                 param_hint="--geometry") from None


def _survey_setup(traveltimes, geometry, prior_spec, operator_kind, device, n_secondary_nodes=3):
    """What `invert` and `sample` start from: grid, survey, traveltimes, prior and operator."""
    grid, survey = load_geometry(geometry, operator_kind)
    data = load_traveltimes(traveltimes, survey.n_data)
    prior = _load_prior(prior_spec, device, sgan=True)
    if _prior_shape(prior) is not None and _prior_shape(prior) != grid.shape:
        raise click.ClickException(f"the prior makes models of shape {_prior_shape(prior)} but the "
                                   f"geometry's grid is {grid.shape}")
    return grid, survey, data, prior, _make_operator(operator_kind, grid, survey, n_secondary_nodes)


@contextlib.contextmanager
def _echoed_baseline_warnings(messages, also=()):
    """Collect the :class:`~latentinv.baselines.BaselineWarning` s and
    :class:`~latentinv.inversion.DataScaleWarning` s raised in the block (and those of the categories
    ``also``) into ``messages`` and print each once as ``[warning] ...`` (even with ``--quiet``: they
    say that a verdict means little, or that the data cannot be fitted); other warnings pass through
    unchanged."""
    from .baselines import BaselineWarning
    from .inversion import DataScaleWarning

    echoed = (BaselineWarning, DataScaleWarning, *also)
    with warnings.catch_warnings(record=True) as caught:
        for category in echoed:
            warnings.simplefilter("always", category)
        yield messages
    for w in caught:
        if issubclass(w.category, echoed):
            msg = str(w.message)
            if msg not in messages:
                messages.append(msg)
                click.echo(f"[warning] {msg}", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _baseline_warnings(messages=None, **comparison):
    """:func:`latentinv.baselines.check_against_baselines`, its warnings echoed; returns the list of
    messages (``messages`` extended)."""
    from .baselines import check_against_baselines

    messages = [] if messages is None else messages
    with _echoed_baseline_warnings(messages):
        check_against_baselines(**comparison)
    return messages


def _baseline_ratios():
    from .baselines import DATA_RATIO, MODEL_RATIO

    return MODEL_RATIO, DATA_RATIO


def _finite_histories(hist):
    """``(n_starts, n_iterations)`` with NaN tails -> list of 1-D arrays without the NaNs."""
    return [h[np.isfinite(h)] for h in np.asarray(hist, dtype=float)]


# ---------------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="latentinv", message="%(prog)s %(version)s")
def main():
    """Inversion of crosshole GPR traveltimes with a deep generative (VAE) prior.

    Lopez-Alvis, Laloy, Nguyen & Hermans (2021), Computers & Geosciences.
    """


def _train_demo_prior(iterations, seed, quiet):
    from .datasets import DEFAULT_PRIOR_EXCLUDED_WINDOWS, PatchSampler, load_channels_ti
    from .prior import VAEPrior

    _echo(f"[prior] no shipped prior: training a small fallback VAE ({iterations} iterations on crops "
          "of the paper's training image away from the held-out band and mc1-mc3)", quiet)
    # the shipped prior's exclusions: the demo's truth stays a model the prior never saw
    sampler = PatchSampler(load_channels_ti(), (129, 65), exclude=DEFAULT_PRIOR_EXCLUDED_WINDOWS)
    prior = VAEPrior(channels=(8, 16, 32, 32), hidden_size=64, n_iterations=iterations, batch_size=32,
                     random_state=seed, device="cpu", verbose=int(not quiet))
    return prior.fit(sampler)


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              callback=_check_out_dir, default="latentinv-demo",
              show_default=True,
              help="Output folder (created); receives demo.png, posterior.png (unless --posterior-draws "
                   "0), report.json and models.npz.")
@click.option("--n-starts", type=click.IntRange(1), default=None,
              help="Initial latent vectors of the straight-ray inversion [default: 4, quick: 2].")
@click.option("--n-starts-nonlinear", type=click.IntRange(1), default=1, show_default=True,
              help="Initial latent vectors of the shortest-path inversion (the paper's Fig. 10: 1).")
@click.option("--epochs-linear", type=click.IntRange(1), default=None,
              help="Epochs of 25 rays with the straight-ray operator [default: 120 as the paper, "
                   "quick: 8].")
@click.option("--epochs-nonlinear", type=click.IntRange(1), default=None,
              help="Epochs of 25 rays with the shortest-path operator [default: 30 as the paper, "
                   "quick: 1].")
@click.option("--noise-std", type=click.FloatRange(0.0), default=0.0, show_default=True,
              help="Gaussian noise added to the traveltimes (ns).")
@click.option("--seed", type=_SEED, default=0, show_default=True,
              help="Seed of the truth, the noise and the inversion.")
@click.option("--quick", is_flag=True,
              help="A smaller budget: 2 starts x 8 epochs of straight rays, 1 epoch of shortest "
                   "paths.")
@click.option("--prior", "prior_spec", default="pretrained", show_default=True,
              help="'pretrained' (the shipped prior) or a directory of a saved VAEPrior (`latentinv "
                   "train`, VAEPrior.save); not an SGANPrior, which has no encoder.")
@click.option("--train-prior", is_flag=True,
              help="Train a small fallback prior when no shipped prior exists.")
@click.option("--train-iterations", type=click.IntRange(1), default=1500, show_default=True,
              help="Iterations of the fallback prior (with --train-prior).")
@_DEVICE_OPTION
@click.option("--data-operator", type=click.Choice(["shortest-path", "same"]), default="shortest-path",
              show_default=True,
              help="Simulate the data with the shortest-path operator for both inversions, or each "
                   "inversion's data with its own operator (the paper's linear experiment).")
@click.option("--full-batch", is_flag=True, hidden=True,
              help="All data at every iteration (one iteration per epoch; for tests).")
@click.option("--posterior-draws", type=click.IntRange(0), default=None,
              help="Draws per chain (after as many burn-in iterations) of the posterior of the "
                   "straight-ray case, 8 chains of LatentSampler('de-mala') from its SGD solutions; "
                   "0: no posterior [default: 200, quick: 20].")
@_threads_option
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@_user_errors
def demo(out_dir, n_starts, n_starts_nonlinear, epochs_linear, epochs_nonlinear, noise_std, seed, quick,
         prior_spec, train_prior, train_iterations, device, data_operator, full_batch, posterior_draws,
         threads, quiet):
    """The paper's crosshole test case end to end (truth, data, linear and nonlinear inversions).

    The truth is a 129 x 65 crop of the paper's training image (latentinv.datasets.load_channels_ti)
    inside rows 2200-2499, the band that no training crop of the shipped prior overlapped
    (latentinv.datasets.HELD_OUT_WINDOW); --seed picks the crop (held_out_corner). The inversions
    run the paper's lengths (straight rays: 120 epochs; shortest paths: 30 epochs from one start, as
    its Fig. 10): minutes on a 2-core CPU (the README states the times measured, with the
    machine). By default its traveltimes come from the shortest-path
    (nonlinear) operator and are inverted with both operators (straight rays with boreholes at
    x = 0.01 / 6.49 m, as the paper). The acceptance threshold of each operator is the data RMSE of
    the encode-decode reconstruction of the truth under that operator (the paper's Table 2) plus the
    noise level. Beside each threshold the demo reports the baselines: the model RMSE of the best
    constant model (against the encode-decode reconstruction's) and the data RMSE of the best
    homogeneous-velocity model (against each inversion's), and warns when a result is not clearly
    better (latentinv.baselines).

    A short posterior sampling follows the straight-ray inversion (--posterior-draws; 0: none):
    8 chains of MALA steps mixed with differential-evolution jumps, started from the SGD
    solutions, with the noise and the prior's modelling error of the truth (its encode-decode data
    RMSE) as the likelihood's standard deviation.

    \b
    Writes into OUT:
      demo.png     truth, reconstruction and inverted models (velocity, m/ns), sensors,
                   data-RMSE and ||z|| histories
      posterior.png  the straight-ray posterior: truth, mean, standard deviation, probability
                   of channel, two posterior models (unless --posterior-draws 0)
      report.json  settings, thresholds, baselines, acceptances, model RMSEs, timings, versions
      models.npz   arrays: truth, encode_decode, straight_ray, shortest_path (models in [0, 1],
                   n_cells each, row-major, row 0 at the top) and data_straight_ray,
                   data_shortest_path (the inverted traveltimes, ns)
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import torch

    from .datasets import HELD_OUT_WINDOW, held_out_corner, load_held_out_crop
    from .geometry import CrossholeSurvey, Grid2D
    from .baselines import constant_model_rmse, homogeneous_fit
    from .inversion import NONLINEAR_SETTINGS, LatentInverter, LatentSampler, paper_slowness
    from sklearn.exceptions import ConvergenceWarning
    from .plotting import plot_inversion_summary, plot_posterior

    t_start = time.perf_counter()
    n_starts = n_starts or (2 if quick else 4)
    epochs_linear = epochs_linear or (8 if quick else 120)
    epochs_nonlinear = epochs_nonlinear or (1 if quick else 30)
    posterior_draws = (20 if quick else 200) if posterior_draws is None else posterior_draws
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    # -- prior ---------------------------------------------------------------------------------
    t0 = time.perf_counter()
    try:
        prior = _load_prior(prior_spec, device)
        prior_source = ("pretrained: VAEPrior.pretrained(), trained on the paper's training image"
                        if prior_spec == "pretrained" else str(prior_spec))
    except click.ClickException:
        if not (train_prior and prior_spec == "pretrained"):
            raise
        prior = _train_demo_prior(train_iterations, seed, quiet)
        prior_source = f"trained fallback ({train_iterations} iterations, small architecture)"
    timings["prior_s"] = time.perf_counter() - t0
    grid = Grid2D.paper()
    if _prior_shape(prior) != grid.shape:
        raise click.ClickException(f"the prior makes models of shape {_prior_shape(prior)}, the demo "
                                   f"needs {grid.shape} (the paper's grid)")
    _echo(f"[prior] {prior_source}: {prior.n_components} latent dimensions "
          f"({timings['prior_s']:.1f} s)", quiet)

    # -- truth and its encode-decode reconstruction ----------------------------------------------
    truth_seed = DEMO_TRUTH_SEED + seed
    # a crop of the paper's training image from the band the shipped prior never saw
    r0, c0 = held_out_corner(truth_seed, shape=(129, 65))
    truth = load_held_out_crop(r0, c0, shape=(129, 65)).reshape(-1)
    recon = prior.decode(prior.encode(truth[None, :]))[0]
    recon_model_rmse = _rmse(truth, recon)
    constant_rmse = float(constant_model_rmse(truth))
    _echo(f"[truth] crop ({r0}, {c0}) of the paper's training image, in the rows held out of the shipped "
          f"prior's training (seed {truth_seed}), channel "
          f"fraction {truth.mean():.2f}; encode-decode model RMSE {recon_model_rmse:.3f} (best "
          f"constant model: {constant_rmse:.3f})", quiet)
    warning_messages = _baseline_warnings(
        None, model_rmse=recon_model_rmse, constant_rmse=constant_rmse,
        what="the prior's encode-decode reconstruction of the truth")

    rng = np.random.default_rng(seed)
    cases = {
        "straight-ray": dict(kind="straight", boreholes=_PAPER_LINEAR_BOREHOLES, n_epochs=epochs_linear,
                             n_starts=n_starts,
                             settings=dict(lr=1e-2, lr_decay=0.95, decay_every=1, batch_size=25,
                                           regularization="ring", lam=10.0, lam_decay=0.999)),
        "shortest-path": dict(kind="shortest-path", boreholes=_PAPER_NONLINEAR_BOREHOLES,
                              n_epochs=epochs_nonlinear, n_starts=n_starts_nonlinear,
                              settings={k: v for k, v in NONLINEAR_SETTINGS.items() if k != "n_epochs"}),
    }
    report_cases, models, rmse_h, z_h, thresholds, inverted_data = {}, {}, {}, {}, {}, {}
    device_used = None
    observed = None
    if data_operator == "shortest-path":
        # one set of "field" data: first arrivals of the nonlinear physics, inverted with both operators
        obs_op = _make_operator("shortest-path", grid, CrossholeSurvey.paper(*_PAPER_NONLINEAR_BOREHOLES))
        obs_clean = obs_op.response(paper_slowness(truth))
        observed = (obs_clean, obs_clean + noise_std * rng.standard_normal(obs_clean.shape))
    for name, case in cases.items():
        t0 = time.perf_counter()
        survey = CrossholeSurvey.paper(*case["boreholes"])
        op = _make_operator(case["kind"], grid, survey)
        if observed is not None:
            clean, data = observed
            simulated_with = "ShortestPathOperator (n_secondary_nodes=3, boreholes at x = 0 / 6.5 m)"
        else:
            clean = op.response(paper_slowness(truth))
            data = clean + noise_std * rng.standard_normal(clean.shape)
            simulated_with = f"{type(op).__name__} (the inversion's own operator)"
        # Table 2 threshold: misfit of the encode-decode reconstruction under this inversion operator
        recon_rmse = _rmse(op.response(paper_slowness(recon)), clean)
        threshold = recon_rmse + noise_std
        settings = dict(case["settings"], n_epochs=case["n_epochs"], n_starts=case["n_starts"])
        if full_batch:
            settings["batch_size"] = None
        inv = LatentInverter(prior, op, random_state=seed, device=device, verbose=int(not quiet),
                             **settings)
        _echo(f"[{name}] {_operator_text(op)}, {op.n_data} data, {case['n_starts']} starts x "
              f"{settings['n_epochs']} epochs; threshold {threshold:.3f} ns", quiet)
        with _echoed_baseline_warnings(warning_messages, also=(ConvergenceWarning,)):
            inv.fit(data[None, :])
            res = inv.invert(data[None, :])
            accepted_fraction = float(res.accepted_fraction(threshold)[0])
        device_used = str(inv.device_)
        elapsed = time.perf_counter() - t0
        timings[f"{name}_s"] = elapsed
        homogeneous_slowness, homogeneous_rmse = homogeneous_fit(op, data)
        best_rmse = float(np.nanmin(res.data_rmse[0]))
        _baseline_warnings(warning_messages, data_rmse=best_rmse, homogeneous_rmse=homogeneous_rmse,
                           what=f"the {name} inversion's best fit")
        inverted_data[name] = data
        if name == "straight-ray":
            linear_case = (op, data, res, recon_rmse)
        models[name] = res.models[0]
        rmse_h[name] = _finite_histories(res.data_rmse_history[0])
        z_h[name] = _finite_histories(res.latent_norm_history[0])
        thresholds[name] = threshold
        report_cases[name] = {
            "operator": type(op).__name__, "backend": op.backend,
            "boreholes_x_m": list(case["boreholes"]), "n_data": int(op.n_data),
            "data_simulated_with": simulated_with,
            "settings": {k: v for k, v in settings.items()},
            "n_iterations": int(inv.n_iterations_),
            "encode_decode_data_rmse_ns": recon_rmse, "threshold_ns": threshold,
            "homogeneous_model": {"slowness_ns_per_m": homogeneous_slowness,
                                  "velocity_m_per_ns": 1.0 / homogeneous_slowness,
                                  "data_rmse_ns": homogeneous_rmse},
            "data_rmse_ns": res.data_rmse[0].tolist(),
            "best_data_rmse_ns": best_rmse,
            "best_start": int(res.best_start[0]),
            "accepted_fraction": accepted_fraction,
            "diverged": res.diverged[0].tolist(),
            "model_rmse": _rmse(res.models[0], truth),
            "time_s": elapsed,
        }
        _echo(f"[{name}] best data RMSE {best_rmse:.3f} ns (threshold {threshold:.3f} ns, best "
              f"homogeneous model {homogeneous_rmse:.3f} ns), accepted "
              f"{report_cases[name]['accepted_fraction']:.0%} of starts, model RMSE "
              f"{report_cases[name]['model_rmse']:.3f} (best constant model {constant_rmse:.3f}) "
              f"({elapsed:.1f} s)", quiet)

    # -- the straight-ray posterior, from the SGD solutions ---------------------------------------
    posterior_report = None
    if posterior_draws:
        t0 = time.perf_counter()
        op, data, res, recon_rmse = linear_case
        # the likelihood's standard deviation: the noise and the prior's modelling error of this truth
        sigma = max(float(np.hypot(noise_std, recon_rmse)), 1e-3)
        n_chains = 8
        sampler = LatentSampler(prior, op, method="de-mala", n_chains=n_chains, n_burnin=posterior_draws,
                                n_samples=posterior_draws, noise_std=sigma, random_state=seed, device=device,
                                initial_latents=LatentSampler.initial_latents_from(res, n_chains))
        _echo(f"[posterior] straight rays, de-mala: {n_chains} chains x ({posterior_draws} + "
              f"{posterior_draws}) from the SGD solutions, sigma {sigma:.3f} ns", quiet)
        with warnings.catch_warnings(), _echoed_baseline_warnings(warning_messages):
            warnings.simplefilter("ignore", ConvergenceWarning)    # short chains by design: reported below
            post = sampler.fit(data[None, :]).sample(data[None, :])
        plot_posterior(post, grid, truth=truth, n_samples=2).savefig(out / "posterior.png", dpi=110)
        timings["posterior_s"] = time.perf_counter() - t0
        rhat = post.rhat()[0]
        ess, ess_note = post._ess_or_why()      # ArviZ is optional; R-hat is latentinv's own
        min_ess = None if ess is None else float(ess[0].min())
        posterior_report = {
            "case": "straight-ray", "method": "de-mala", "n_chains": n_chains, "n_burnin": posterior_draws,
            "n_samples": posterior_draws, "likelihood_sigma_ns": sigma,
            "likelihood_sigma": "LatentSampler's noise_std: sqrt(noise_std**2 + encode-decode data RMSE**2), "
                                "the data noise and the prior's modelling error of the truth", "n_forward": int(post.n_forward),
            "acceptance_rate": float(post.acceptance_rate.mean()), "max_rhat": float(rhat.max()),
            "chains_agree": bool(post.chains_agree()[0]),
            "min_ess_bulk": min_ess, **({"ess_unavailable": ess_note} if ess_note else {}),
            "mean_model_rmse": _rmse(post.mean[0], truth), "mean_std": float(post.std[0].mean()),
            "time_s": timings["posterior_s"]}
        _echo(f"[posterior] acceptance {posterior_report['acceptance_rate']:.2f}, worst R-hat "
              f"{rhat.max():.2f} (short chains: a sketch of the uncertainty, not a converged posterior), "
              f"posterior mean model RMSE {posterior_report['mean_model_rmse']:.3f} "
              f"({timings['posterior_s']:.1f} s)", quiet)

    # -- outputs ---------------------------------------------------------------------------------
    surveys = {"straight-ray": CrossholeSurvey.paper(*_PAPER_LINEAR_BOREHOLES),
               "shortest-path": CrossholeSurvey.paper(*_PAPER_NONLINEAR_BOREHOLES)}
    fig = plot_inversion_summary(truth, {"encode-decode": recon, **models}, grid, rmse_h, z_h,
                                 thresholds, n_components=int(prior.n_components),
                                 latent_distribution=getattr(prior, "latent_distribution", "normal"),
                                 title=f"latentinv demo (seed {seed}, noise {noise_std} ns)",
                                 survey=surveys["shortest-path"],
                                 velocities=(0.06, 0.08), show_model_rmse=True)
    fig.savefig(out / "demo.png", dpi=110)
    np.savez(out / "models.npz", truth=truth, encode_decode=recon,
             **{k.replace("-", "_"): v for k, v in models.items()},
             **{"data_" + k.replace("-", "_"): v for k, v in inverted_data.items()})
    timings["total_s"] = time.perf_counter() - t_start
    report = {
        "command": "demo",
        "paper": "Lopez-Alvis, Laloy, Nguyen & Hermans (2021), Computers & Geosciences",
        "settings": {"n_starts": n_starts, "n_starts_nonlinear": n_starts_nonlinear,
                     "epochs_linear": epochs_linear,
                     "epochs_nonlinear": epochs_nonlinear, "noise_std_ns": noise_std, "seed": seed,
                     "quick": quick, "full_batch": full_batch, "data_operator": data_operator,
                     "posterior_draws": posterior_draws, **_threads_settings(threads)},
        "grid": {"n_rows": grid.n_rows, "n_cols": grid.n_cols, "cell_size_m": grid.dx},
        "prior": {"source": prior_source, "n_components": int(prior.n_components),
                  "image_shape": list(_prior_shape(prior))},
        "truth": {"image": "latentinv.datasets.load_channels_ti (the paper's training image)",
                  "held_out_window": list(HELD_OUT_WINDOW),
                  "corner": f"latentinv.datasets.held_out_corner({truth_seed})",
                  "seed": truth_seed, "crop": [r0, c0, 129, 65],
                  "channel_fraction": float(truth.mean()),
                  "encode_decode_model_rmse": recon_model_rmse,
                  "constant_model_rmse": constant_rmse},
        "baselines": {"model_ratio": _baseline_ratios()[0], "data_ratio": _baseline_ratios()[1],
                      "warnings": warning_messages},
        "slowness": "1 / (0.06 + 0.02 (1 - x)) ns/m",
        "cases": report_cases,
        "posterior": posterior_report,
        "timings_s": timings,
        "device": device_used,
        "torch_threads": torch.get_num_threads(),
        "versions": _versions(),
        "files": {"demo.png": "figure", "report.json": "this report",
                  "models.npz": "truth, encode_decode, " + ", ".join(
                      k.replace("-", "_") for k in models) + " (models in [0, 1]), " + ", ".join(
                      "data_" + k.replace("-", "_") for k in inverted_data) + " (traveltimes, ns)",
                  **({"posterior.png": "the straight-ray posterior"} if posterior_draws else {})},
    }
    (out / "report.json").write_text(_report_json(report))
    written = [out / "demo.png"] + ([out / "posterior.png"] if posterior_draws else []) + [
        out / "report.json", out / "models.npz"]
    _echo(f"[done] {', '.join(map(str, written))} ({timings['total_s']:.1f} s)", quiet)


class _TrainingImage(click.Path):
    """``train --image``: ``paper`` (the bundled training image) or an existing file."""

    name = "image"

    def __init__(self):
        super().__init__(exists=True, dir_okay=False)

    def get_metavar(self, param, ctx=None):
        return "paper|FILE"

    def convert(self, value, param, ctx):
        if value == _PAPER_IMAGE:
            return value
        return super().convert(value, param, ctx)


#: ``train --image`` of the image bundled with the package (latentinv.datasets.load_channels_ti)
_PAPER_IMAGE = "paper"


@main.command()
@click.option("--image", type=_TrainingImage(), default=None,
              help="Training image: 'paper' (the paper's 2500 x 2500 image, bundled with the package: "
                   "latentinv.datasets.load_channels_ti), a PNG file (thresholded to 0/1) or an NPY file "
                   "(values in [0, 1]). A file named paper: ./paper.")
@click.option("--procedural", is_flag=True, help="Use the procedural channel generator instead.")
@click.option("--image-size", type=(click.IntRange(1), click.IntRange(1)), default=(1000, 1000),
              show_default=True, help="Rows and columns of the procedural image.")
@click.option("--out", "out_path", type=click.Path(file_okay=False),
              callback=_check_out_dir, default="prior", show_default=True,
              help="Directory the prior is saved to.")
@click.option("--patch-shape", type=(click.IntRange(1), click.IntRange(1)), default=(129, 65),
              show_default=True, help="Rows and columns of the training crops.")
@click.option("--exclude", type=(click.IntRange(0), click.IntRange(0), click.IntRange(1), click.IntRange(1)),
              multiple=True, metavar="R0 C0 NR NC",
              help="Held-out window (top-left row, column, rows, columns); repeatable.")
@click.option("--iterations", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=100, show_default=True)
@click.option("--beta", type=click.FloatRange(0.0), default=1000.0, show_default=True,
              help="KL weight (averaged over batch and latent dimensions).")
@click.option("--alpha", type=click.FloatRange(0.0), default=1.0, show_default=True,
              help="Scale of the sampling noise variance.")
@click.option("--n-components", type=click.IntRange(1), default=20, show_default=True)
@click.option("--channels", default="32,64,128,256", show_default=True,
              help="Channels of the four convolutions, comma-separated.")
@click.option("--hidden-size", type=click.IntRange(1), default=512, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(0.0, min_open=True), default=1e-3,
              show_default=True)
@click.option("--seed", type=_SEED, default=0, show_default=True)
@_DEVICE_OPTION
@click.option("--cuda-graphs", is_flag=True, help="Replay each training step from a CUDA graph (CUDA only).")
@click.option("--precision", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="The training's arithmetic (bfloat16 where the CPU or GPU has it natively: faster, loss "
                   "curves within about 1.5 % of float32's).")
@click.option("--checkpoint", "checkpoint_dir", type=click.Path(file_okay=False),
              callback=_check_out_dir, default=None,
              help="Folder of a resumable training: run the same command again after a stop and it carries on "
                   "from the last checkpoint, ending with the network of an uninterrupted run; raise "
                   "--iterations to train further.")
@click.option("--checkpoint-every", type=click.IntRange(1), default=1000, show_default=True,
              help="Iterations between checkpoints (with --checkpoint).")
@_threads_option
@click.option("--quiet", "-q", is_flag=True)
@_user_errors
def train(image, procedural, image_size, out_path, patch_shape, exclude, iterations, batch_size, beta,
          alpha, n_components, channels, hidden_size, learning_rate, seed, device, cuda_graphs, precision,
          checkpoint_dir, checkpoint_every, threads, quiet):
    """Train a VAE prior on random crops of a training image and save it.

    Writes the prior into OUT (config.json and weights.safetensors; load it with
    VAEPrior.load(OUT) or pass --prior OUT to `demo` and `invert`). The summary reports the
    encode-decode model RMSE of 32 fresh training crops against the best constant model's (the
    crops' own mean) and warns when the prior is not clearly better (latentinv.baselines): a sign
    that it has not learned the image.

    --image paper trains on the image the shipped prior was trained on; that prior held out the
    windows latentinv.datasets.DEFAULT_PRIOR_EXCLUDED_WINDOWS of it (the demo's truths, mc1-mc3):
    pass them with --exclude to keep them unseen.
    """
    from .baselines import constant_model_rmse
    from .datasets import PatchSampler, _check_window, load_channels_ti, make_channel_image
    from .prior import VAEPrior

    if (image is None) == (not procedural):
        raise click.UsageError("give exactly one of --image PATH or --procedural (or --image paper, the "
                               "bundled training image)")
    try:
        chans = tuple(int(c) for c in channels.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {channels!r}",
                                 param_hint="--channels") from None
    kernels = VAEPrior().kernel_sizes      # the CLI keeps the default kernel sizes, one per convolution
    if len(chans) != len(kernels):
        raise click.BadParameter(
            f"expected {len(kernels)} comma-separated integers (one per convolution; the kernel sizes {kernels} "
            f"are fixed here: for another depth use VAEPrior(channels=..., kernel_sizes=...) in Python), got "
            f"{len(chans)}: {channels!r}", param_hint="--channels")
    if cuda_graphs:
        _check_cuda_graphs(device)
    try:       # the library's checks of the parameters the options give, before any image is read
        VAEPrior(n_components=n_components, channels=chans, hidden_size=hidden_size)._check_hyperparams()
    except ValueError as exc:
        if "channels" not in str(exc):
            raise
        raise click.BadParameter(f"expected {len(kernels)} positive integers (channels of the convolutions), "
                                 f"got {channels!r}", param_hint="--channels") from None
    if image == _PAPER_IMAGE:
        ti = load_channels_ti()
        source = "the paper's training image (latentinv.datasets.load_channels_ti)"
    elif image is not None:
        ti = _load_training_image(image)
        source = str(image)
    else:
        ti = make_channel_image(tuple(image_size), random_state=seed)
        source = f"procedural {tuple(image_size)} seed {seed}"
    for window in exclude:  # checked here so that the error names the option
        try:
            _check_window(window, ti.shape, "the training image", "latentinv train")
        except ValueError as exc:
            raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint="'--exclude'") from None
    try:
        sampler = PatchSampler(ti, tuple(patch_shape), exclude=[tuple(w) for w in exclude] or None)
    except ValueError as exc:     # the library's conditions, named by the options that set them
        image_option = "--image" if image is not None else "--image-size"
        if "larger than image" in str(exc):
            raise click.BadParameter(
                f"crops of {tuple(patch_shape)} do not fit in the training image of shape {ti.shape} ({source}); "
                f"give a smaller --patch-shape (default 129 65) or a larger image",
                param_hint=["--patch-shape", image_option]) from None
        if "avoids the exclusion windows" in str(exc):
            raise click.BadParameter(
                f"no crop of {tuple(patch_shape)} in the training image of shape {ti.shape} avoids the "
                f"windows {[tuple(w) for w in exclude]}; give fewer or smaller windows",
                param_hint="'--exclude'") from None
        raise
    _echo(f"[train] {source}: image {ti.shape}, crops {tuple(patch_shape)}, "
          f"{int(np.sum(sampler.n_valid))} admissible corners, {len(exclude)} excluded windows", quiet)
    t0 = time.perf_counter()
    prior = VAEPrior(n_components=n_components, channels=chans, hidden_size=hidden_size, beta=beta,
                     alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
                     n_iterations=iterations, device=device, random_state=seed, cuda_graphs=cuda_graphs,
                     precision=precision, verbose=int(not quiet))
    try:
        prior.fit(sampler, checkpoint=checkpoint_dir, checkpoint_every=checkpoint_every)
    except ValueError as exc:
        lo, hi = float(np.min(ti)), float(np.max(ti))
        if "output_activation" not in str(exc) or (0.0 <= lo and hi <= 1.0):
            raise
        # the library's hint names a VAEPrior parameter that the command line does not have
        raise click.BadParameter(
            f"{image}: a training image must hold values in [0, 1] (the prior's decoder outputs that range), "
            f"got values in [{lo:g}, {hi:g}]: scale the image to [0, 1] (e.g. divide an 8-bit image by 255) "
            f"or threshold it to 0/1 (PNG files are thresholded when read)", param_hint="--image") from None
    prior.save(out_path)
    hist = prior.history_
    _echo(f"[train] {iterations} iterations in {time.perf_counter() - t0:.1f} s; final loss "
          f"{hist['loss'][-1]:.4g} (reconstruction {hist['reconstruction'][-1]:.4g}, KL "
          f"{hist['kl'][-1]:.4g}); saved to {out_path} (config.json, weights.safetensors)", quiet)
    # the baseline: can the prior encode crops of its image better than a constant model can?
    crops = np.asarray(sampler.sample(_TRAIN_CHECK_CROPS, random_state=seed + 1),
                       dtype=float).reshape(_TRAIN_CHECK_CROPS, -1)
    recon = np.asarray(prior.decode(prior.encode(crops)), dtype=float)
    recon_rmse = float(np.mean(np.sqrt(np.mean((recon - crops) ** 2, axis=1))))
    constant_rmse = float(np.mean(constant_model_rmse(crops)))
    _echo(f"[train] encode-decode model RMSE {recon_rmse:.3f} on {_TRAIN_CHECK_CROPS} training crops "
          f"(best constant model: {constant_rmse:.3f})", quiet)
    _baseline_warnings(None, model_rmse=recon_rmse, constant_rmse=constant_rmse,
                       what=f"the prior's encode-decode reconstruction of {_TRAIN_CHECK_CROPS} training "
                            "crops (mean)")


@contextlib.contextmanager
def _dask_backend(address, quiet):
    """joblib's Dask backend on the scheduler at ``address`` inside the block (None: nothing)."""
    if address is None:
        yield
        return
    try:
        import joblib
        from distributed import Client
    except ImportError:
        raise click.ClickException("--scheduler needs dask.distributed: pip install 'latentinv[dask]'") from None
    try:
        client = Client(address, timeout=30)
    except (OSError, TimeoutError) as exc:
        raise click.ClickException(f"cannot reach the Dask scheduler at {address!r}: {exc}") from None
    with client:
        _echo(f"[invert] Dask scheduler {address}: {len(client.scheduler_info()['workers'])} worker(s)", quiet)
        with joblib.parallel_backend("dask"):
            yield


#: the paper's velocities (m/ns) of model values 1 and 0: latentinv.inversion.paper_slowness
PAPER_VELOCITIES = (0.06, 0.08)


def _check_velocities(ctx, param, value):
    """``--velocities``: two finite velocities (positive: the option's type) that differ; with equal ones
    every model gives the same traveltimes, and the data cannot tell the facies apart."""
    channel, background = value
    if not (np.isfinite(channel) and np.isfinite(background)):
        raise click.BadParameter(f"expected finite velocities (m/ns); got {channel:g} {background:g}")
    if channel == background:
        raise click.BadParameter(f"the channel and background velocities are equal ({channel:g} {background:g}): "
                                 "every model then has the same traveltimes, and the data cannot tell the "
                                 "facies apart; give the two facies' velocities")
    return value


def _slowness_map(velocities):
    """The inverters' ``slowness_map`` for --velocities: None (the paper's map, bit for bit as before
    the option) for the paper's velocities, else a :class:`LinearVelocitySlowness`."""
    from .inversion import LinearVelocitySlowness

    velocities = tuple(float(v) for v in velocities)
    return None if velocities == PAPER_VELOCITIES else LinearVelocitySlowness(*velocities)


def _survey_options(fn):
    """The arguments `invert` and `sample` share: TRAVELTIMES, --geometry, --prior, --operator,
    --secondary-nodes, --velocities."""
    options = [
        click.argument("traveltimes", type=click.Path(dir_okay=False)),
        click.option("--geometry", default="paper", show_default=True,
                     help="'paper' or a JSON geometry file (format in `latentinv invert --help`)."),
        click.option("--prior", "prior_spec", default="pretrained", show_default=True,
                     help="'pretrained' or a directory of a saved VAEPrior (`latentinv train`, "
                          "VAEPrior.save), or of a saved SGANPrior (SGANPrior.save; Table 1's SSbnd "
                          "settings, straight rays only)."),
        click.option("--operator", "operator_kind", type=click.Choice(["straight", "shortest-path"]),
                     default="straight", show_default=True),
        click.option("--secondary-nodes", "n_secondary_nodes", type=click.IntRange(0, 1000), default=3,
                     show_default=True,
                     help="Nodes per cell side of the shortest-path graph (--operator shortest-path); every "
                          "sensor must sit on a cell corner or on one of them."),
        click.option("--velocities", nargs=2, type=click.FloatRange(0.0, min_open=True), default=PAPER_VELOCITIES,
                     show_default=True, metavar="CHANNEL BACKGROUND", callback=_check_velocities,
                     help="Velocities (m/ns) of model value 1 (channel) and 0 (background), positive, "
                          "finite and different; a model's velocity is linear between them.")]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@_survey_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              callback=_check_out_dir, default="latentinv-invert",
              show_default=True)
@click.option("--n-starts", type=click.IntRange(1), default=10, show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Epochs [default: 120 straight, 30 shortest-path].")
@click.option("--batch-size", type=click.IntRange(1), default=25, show_default=True)
@click.option("--lr", type=click.FloatRange(0.0, min_open=True), default=None,
              help="Initial step size [default: 0.01 straight, 0.1 shortest-path; 0.001 with an SGAN prior].")
@click.option("--lam", type=click.FloatRange(0.0), default=None,
              help="Ring regularisation weight [default: 10 straight, 1 shortest-path; none with an SGAN "
                   "prior, whose latents are clipped to their box].")
@click.option("--threshold", type=click.FloatRange(0.0), default=None,
              help="Acceptance threshold (ns) for the accepted fraction of starts.")
@click.option("--seed", type=_SEED, default=0, show_default=True)
@_DEVICE_OPTION
@click.option("--n-jobs", type=int, default=None, callback=_check_n_jobs,
              help="Surveys inverted in parallel processes (joblib; -1: all cores).")
@click.option("--scheduler", default=None,
              help="Address of a Dask scheduler (e.g. tcp://host:8786): the surveys run on its cluster.")
@click.option("--chunk-size", type=click.IntRange(1), default=None,
              help="Surveys per parallel task [default: 1 when parallel].")
@click.option("--cuda-graphs", is_flag=True,
              help="Replay each SGD iteration from a CUDA graph (CUDA, straight rays).")
@_threads_option
@click.option("--quiet", "-q", is_flag=True)
@_user_errors
def invert(traveltimes, geometry, prior_spec, operator_kind, n_secondary_nodes, velocities, out_dir, n_starts,
           epochs, batch_size, lr, lam, threshold, seed, device, n_jobs, scheduler, chunk_size, cuda_graphs, threads,
           quiet):
    """Invert TRAVELTIMES (ns; .npy or text, one survey per row or one column) into models. A text
    file may start with one header row of column names.

    The models' values map to velocity linearly: by default as in the paper, 0.06 m/ns at 1 (channel)
    and 0.08 m/ns at 0 (background); give the surveyed medium's with --velocities CHANNEL BACKGROUND
    (m/ns), or its data are fitted with the paper's.

    Writes OUT/models.npy (n_surveys, n_cells; values in [0, 1], flat row-major with row 0 at the
    top), OUT/invert.png (the first three surveys' models and histories) and OUT/result.json
    (settings, data RMSEs, acceptances, baselines). Beside each survey's best data RMSE the
    summary reports the data RMSE of the best homogeneous-velocity model and warns when the fit is
    not clearly better (latentinv.baselines).

    --geometry FILE is JSON; positions (x, depth) in m, "pairs" optional (default: every
    source-receiver pair, source-major; the traveltimes follow that order):

    \b
      {"grid": {"n_rows": 129, "n_cols": 65, "cell_size": 0.1, "origin": [0, 0]},
       "sources": [[0.0, 0.5], [0.0, 1.0]],
       "receivers": [[6.5, 0.5], [6.5, 1.0]],
       "pairs": [[0, 0], [0, 1], [1, 0], [1, 1]]}
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from sklearn.exceptions import ConvergenceWarning

    from .inversion import LatentInverter
    from .plotting import plot_inversion_summary

    if cuda_graphs:
        _check_cuda_graphs(device, operator_kind)
    grid, survey, data, prior, op = _survey_setup(traveltimes, geometry, prior_spec, operator_kind, device,
                                                  n_secondary_nodes)
    settings = _sgd_settings(operator_kind, prior, lam)
    settings["batch_size"] = min(batch_size, survey.n_data)
    for key, value in (("n_epochs", epochs), ("lr", lr), ("lam", lam)):
        if value is not None:
            settings[key] = value
    settings["n_starts"] = n_starts
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _echo(f"[invert] {len(data)} survey(s) x {survey.n_data} data, {_operator_text(op)}, "
          f"{n_starts} starts x {settings['n_epochs']} epochs", quiet)
    t0 = time.perf_counter()
    parallel = n_jobs not in (None, 1) or scheduler is not None
    inv = LatentInverter(prior, op, slowness_map=_slowness_map(velocities), random_state=seed, device=device,
                         n_jobs=n_jobs, chunk_size=chunk_size,
                         cuda_graphs=cuda_graphs, verbose=int(not quiet and not parallel), **settings)
    warning_messages = []
    with _echoed_baseline_warnings(warning_messages, also=(ConvergenceWarning,)), _dask_backend(scheduler, quiet):
        inv.fit(data)
        res = inv.invert(data)
        accepted = None if threshold is None else res.accepted_fraction(threshold).tolist()
    elapsed = time.perf_counter() - t0
    best = np.nanmin(res.data_rmse, axis=1)
    homogeneous_slowness, homogeneous_rmse = res.homogeneous_slowness, res.homogeneous_rmse   # invert's own
    _baseline_warnings(warning_messages, data_rmse=best, homogeneous_rmse=homogeneous_rmse,
                       what="the best fit per survey")
    np.save(out / "models.npy", res.models)
    k = min(len(data), 3)
    fig = plot_inversion_summary(
        None, {f"survey {i}": res.models[i] for i in range(k)}, grid,
        {f"survey {i}": _finite_histories(res.data_rmse_history[i]) for i in range(k)},
        {f"survey {i}": _finite_histories(res.latent_norm_history[i]) for i in range(k)},
        None if threshold is None else {f"survey {i}": threshold for i in range(k)},
        survey=survey, n_components=int(prior.n_components),
        latent_distribution=getattr(prior, "latent_distribution", "normal"))
    fig.savefig(out / "invert.png", dpi=100)
    result = {
        "command": "invert", "traveltimes": str(traveltimes), "geometry": str(geometry),
        "prior": str(prior_spec), "operator": type(op).__name__, "backend": op.backend,
        "n_secondary_nodes": getattr(op, "n_secondary_nodes", None),
        "velocities_m_per_ns": {"channel": velocities[0], "background": velocities[1]},
        "settings": settings | _threads_settings(threads), "seed": seed,
        "n_iterations": int(inv.n_iterations_),
        "n_jobs": n_jobs, "scheduler": scheduler, "chunk_size": chunk_size,
        "data_rmse_ns": res.data_rmse.tolist(), "best_start": res.best_start.tolist(),
        "best_data_rmse_ns": best.tolist(),
        "threshold_ns": threshold,
        "homogeneous_model": {"slowness_ns_per_m": homogeneous_slowness.tolist(),
                              "data_rmse_ns": homogeneous_rmse.tolist()},
        "baselines": {"data_ratio": _baseline_ratios()[1], "warnings": warning_messages},
        "accepted_fraction": accepted,
        "time_s": elapsed, "device": str(inv.device_), "versions": _versions(),
        "models_file": "models.npy (n_surveys, n_cells), flat row-major, row 0 at the top",
    }
    (out / "result.json").write_text(_report_json(result))
    accepted_text = ("" if threshold is None else
                     f"; accepted {np.round(accepted, 3).tolist()} of starts below {threshold} ns")
    _echo(f"[invert] best data RMSE {np.round(best, 3).tolist()} ns (best homogeneous model "
          f"{np.round(homogeneous_rmse, 3).tolist()} ns){accepted_text}; {elapsed:.1f} s -> "
          f"{out / 'models.npy'}, {out / 'invert.png'}, {out / 'result.json'}", quiet)


@main.command()
@_survey_options
@click.option("--noise-std", type=click.FloatRange(0.0, min_open=True), required=True,
              help="Standard deviation of the data noise (ns): the Gaussian likelihood's.")
@click.option("--method", type=click.Choice(["pcn", "mala", "rwm", "de", "de-mala", "hmc"]), default="pcn",
              show_default=True,
              help="pcn: preconditioned Crank-Nicolson; rwm: random-walk Metropolis; de: differential-"
                   "evolution Metropolis from past states (all three gradient-free); mala: Langevin "
                   "proposals through the decoder's gradient; de-mala: Langevin steps mixed with "
                   "differential-evolution jumps; hmc: Hamiltonian Monte Carlo, --n-leapfrog decoder "
                   "gradients per proposal (the one that converges on the paper's mc2 with the default "
                   "prior).")
@click.option("--n-leapfrog", type=click.IntRange(1), default=10, show_default=True,
              help="hmc: leapfrog steps per proposal (each a forward run and a decoder gradient).")
@click.option("--preconditioner", type=click.Choice(["auto", "empirical", "gauss-newton"]), default="auto",
              show_default=True,
              help="How the proposals' covariance adapts in the burn-in: to the draws (empirical) or to the "
                   "posterior's Gauss-Newton approximation at the chains' points (gauss-newton: n_components "
                   "forward runs per chain and fit; not with pcn or de); auto: gauss-newton for mala, de-mala and "
                   "hmc, empirical for the others.")
@click.option("--chains", type=click.IntRange(1), default=8, show_default=True, help="Chains per survey.")
@click.option("--burnin", type=click.IntRange(0), default=500, show_default=True,
              help="Burn-in iterations (step sizes and preconditioner adapt, then freeze).")
@click.option("--samples", type=click.IntRange(1), default=500, show_default=True,
              help="Draws kept per chain.")
@click.option("--thin", type=click.IntRange(1), default=1, show_default=True)
@click.option("--sgd-epochs", type=click.IntRange(0), default=0, show_default=True,
              help="Start the chains from a short SGD (that many epochs, one start per chain: each "
                   "survey's chains from its own lowest-misfit starts); 0: from the prior.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              callback=_check_out_dir, default="latentinv-sample",
              show_default=True)
@click.option("--seed", type=_SEED, default=0, show_default=True)
@_DEVICE_OPTION
@_threads_option
@click.option("--quiet", "-q", is_flag=True)
@_user_errors
def sample(traveltimes, noise_std, geometry, prior_spec, operator_kind, n_secondary_nodes, velocities, method,
           n_leapfrog, preconditioner, chains, burnin, samples, thin, sgd_epochs, out_dir, seed, device, threads, quiet):
    """Sample the posterior of TRAVELTIMES (ns; as for `invert`) by MCMC in the prior's latent space.

    The models' values map to velocity as for `invert` (--velocities; the paper's 0.06 m/ns at 1 and
    0.08 m/ns at 0 by default).

    Writes OUT/posterior.npz (mean, std, channel_probability: (n_surveys, n_cells), flat row-major
    with row 0 at the top; samples: latent draws (n_surveys, n_chains, n_draws, n_components);
    model_samples), OUT/posterior.png (the first survey's mean, standard deviation, channel
    probability and samples) and OUT/posterior.json (settings, acceptance, R-hat per latent dimension
    and ESS when ArviZ is installed, forward runs, time, warnings). A [warning] line (also in
    posterior.json) says when the chains disagree (worst R-hat above 1.05) or are too short to tell.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from sklearn.exceptions import ConvergenceWarning

    from .inversion import LatentInverter, LatentSampler
    from .inversion.randomness import as_seed
    from .inversion.sampler import gauss_newton_conflict
    from .plotting import plot_posterior

    why = gauss_newton_conflict(method) if preconditioner == "gauss-newton" else None
    if why:                      # LatentSampler's check, before anything loads
        raise click.BadParameter(f"gauss-newton cannot serve --method {method} ({why}); use --preconditioner "
                                 "empirical or auto", param_hint="'--preconditioner'")
    grid, survey, data, prior, op = _survey_setup(traveltimes, geometry, prior_spec, operator_kind, device,
                                                  n_secondary_nodes)
    slowness_map = _slowness_map(velocities)        # the SGD starts' and the chains' medium
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    warning_messages = []
    given = click.get_current_context().get_parameter_source("n_leapfrog") != click.core.ParameterSource.DEFAULT
    if given and method != "hmc":   # the library's warning names its parameter, from click's frame: the option's
        message = (f"--n-leapfrog {n_leapfrog} has no effect with --method {method} (HMC's leapfrog steps); "
                   "it is ignored")
        warning_messages.append(message)
        click.echo(f"[warning] {message}", err=True)
    with _echoed_baseline_warnings(warning_messages, also=(ConvergenceWarning,)):
        t0 = time.perf_counter()
        initial = None
        if sgd_epochs:
            settings = _sgd_settings(operator_kind, prior)
            settings.update(n_epochs=sgd_epochs, batch_size=min(25, survey.n_data), n_starts=chains)
            _echo(f"[sample] SGD starts: {chains} x {sgd_epochs} epochs", quiet)
            sgd = LatentInverter(prior, op, slowness_map=slowness_map, random_state=seed,
                                 device=device, **settings).fit(data)
            # each survey's chains from its own SGD solutions, in one call
            initial = LatentSampler.initial_latents_from(sgd.invert(data), chains, survey="all")
        _echo(f"[sample] {len(data)} survey(s) x {survey.n_data} data, {_operator_text(op)}, "
              f"{method}: {chains} chains x ({burnin} + {samples * thin}) iterations", quiet)
        sampler = LatentSampler(prior, op, slowness_map=slowness_map, method=method,
                                n_leapfrog=n_leapfrog, preconditioner=preconditioner,
                                n_chains=chains, n_burnin=burnin, n_samples=samples, thin=thin, initial_latents=initial,
                                noise_std=noise_std, random_state=seed, device=device, verbose=int(not quiet))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LatentSampler: n_leapfrog=.* has no effect")  # echoed above
            sampler.fit(data)
        res = sampler.sample(data)
        elapsed = time.perf_counter() - t0
    # the sampler's settings call the int its generators are seeded from "seed"; it is derived from
    # random_state (= --seed): report the user's seed as "seed" and that number under its own name
    engine_seed = res.settings.get("seed", as_seed(seed))
    sample_settings = {k: v for k, v in res.settings.items() if k != "seed"} | {
        "seed": seed, "engine_seed": engine_seed,
        "engine_seed_derivation": "latentinv.inversion.randomness.as_seed(seed) = "
                                  "numpy.random.RandomState(seed).randint(2**31 - 1): the int from which the "
                                  "chains' generators are seeded (with each survey's data)",
        "sgd_epochs": sgd_epochs, **_threads_settings(threads)}
    np.savez_compressed(out / "posterior.npz", mean=res.mean, std=res.std,
                        channel_probability=res.channel_probability, samples=res.samples,
                        model_samples=res.model_samples, map_model=res.map_model)
    plot_posterior(res, grid).savefig(out / "posterior.png", dpi=100)
    diagnostics = {"rhat": res.rhat().tolist(), "chains_agree": res.chains_agree().tolist()}
    ess, why = res._ess_or_why()
    diagnostics.update({"ess_bulk": ess.tolist()} if why is None else {"ess_unavailable": why})
    report = {
        "command": "sample", "traveltimes": str(traveltimes), "geometry": str(geometry),
        "prior": str(prior_spec), "operator": type(op).__name__, "backend": op.backend,
        "n_secondary_nodes": getattr(op, "n_secondary_nodes", None),
        "velocities_m_per_ns": {"channel": velocities[0], "background": velocities[1]},
        "settings": sample_settings, "acceptance_rate": res.acceptance_rate.tolist(),
        "step_size": res.step_size.tolist(), "diagnostics": diagnostics, "forward_runs": res.n_forward,
        "mean_data_rmse_ns_after_burnin": np.mean(res.data_rmse_history[:, :, burnin:], axis=(1, 2)).tolist(),
        "time_s": elapsed, "device": str(sampler.device_), "versions": _versions(), "warnings": warning_messages,
        "files": {"posterior.npz": "mean, std, channel_probability (n_surveys, n_cells); samples "
                                   "(n_surveys, n_chains, n_draws, n_components); model_samples; map_model",
                  "posterior.png": "the first survey's posterior", "posterior.json": "this report"},
    }
    (out / "posterior.json").write_text(_report_json(report))
    rhat = diagnostics.get("rhat")
    _echo(f"[sample] acceptance {np.round(res.acceptance_rate.mean(1), 3).tolist()}"
          + ("" if rhat is None else f"; max R-hat {np.round(np.max(rhat, 1), 3).tolist()}")
          + f"; {elapsed:.1f} s -> {out / 'posterior.npz'}, {out / 'posterior.png'}, "
          f"{out / 'posterior.json'}", quiet)


_BENCHES = {"raytrace": "bench_raytrace.py", "prior": "bench_prior.py",
            "inversion": "bench_inversion.py", "sampling": "bench_sampling.py"}
#: the bench scripts that accept ``--quick`` (all of them now; a script without it runs in full and says so)
_QUICK_BENCHES = ("raytrace", "prior", "inversion", "sampling")
_FULL_ONLY = ", ".join(name for name in _BENCHES if name not in _QUICK_BENCHES)


def _holds_bench_scripts(folder):
    return folder.is_dir() and any((folder / script).is_file() for script in _BENCHES.values())


def _benchmarks_dir():
    """The benchmarks folder: $LATENTINV_BENCHMARKS, else the checkout's beside the package (an
    editable install), else ./benchmarks when it holds the bench scripts (a checkout in which the
    package was installed with a plain `pip install .`). None when none of them is there."""
    env = os.environ.get("LATENTINV_BENCHMARKS")
    if env:
        return Path(env)
    for folder in (Path(__file__).resolve().parents[2] / "benchmarks", Path.cwd() / "benchmarks"):
        if _holds_bench_scripts(folder):
            return folder
    return None


@main.command()
@click.argument("which", type=click.Choice(["all", *_BENCHES]), default="all")
@click.option("--quick", is_flag=True,
              help=f"Smaller problems: --quick goes to the scripts that take it ({', '.join(_QUICK_BENCHES)})"
                   + (f"; {_FULL_ONLY} run in full." if _FULL_ONLY else "."))
def bench(which, quick):
    """Run the benchmark scripts of the repository's benchmarks/ folder (a source checkout).

    The folder is $LATENTINV_BENCHMARKS when set, else the checkout's when the package is installed
    from it in editable mode, else ./benchmarks (run from the checkout's root).
    """
    folder = _benchmarks_dir()
    if folder is None or not folder.is_dir():
        where = (f"LATENTINV_BENCHMARKS={folder} does not exist" if folder is not None else
                 f"no bench scripts beside the installed package nor in ./benchmarks of {Path.cwd()}")
        raise click.ClickException(
            f"the benchmarks folder is not available ({where}): benchmarks ship with the source "
            "repository, not the installed package; run from the root of a checkout (./benchmarks) or set "
            "LATENTINV_BENCHMARKS=/path/to/benchmarks")
    names = list(_BENCHES) if which == "all" else [which]
    failed = []
    for name in names:
        script = folder / _BENCHES[name]
        if not script.is_file():
            click.echo(f"[bench] {name}: {script} is missing; skipped", err=True)
            failed.append(name)
            continue
        cmd = [sys.executable, str(script)] + (["--quick"] if quick and name in _QUICK_BENCHES else [])
        if quick and name not in _QUICK_BENCHES:
            click.echo(f"[bench] {name}: {_BENCHES[name]} takes no --quick; it runs its full measurement",
                       err=True)
        click.echo(f"[bench] {name}: {' '.join(cmd)}", err=True)
        rc = subprocess.call(cmd, cwd=str(folder.parent))
        if rc != 0:
            click.echo(f"[bench] {name}: exit code {rc}", err=True)
            failed.append(name)
    if failed:
        raise click.ClickException(f"benchmarks that did not run cleanly: {', '.join(failed)}")


if __name__ == "__main__":  # pragma: no cover
    main()
