"""Helpers shared by latentinv's torch-backed estimators (:class:`~latentinv.prior.VAEPrior`,
:class:`~latentinv.sgan.SGANPrior`): device resolution, deterministic kernels, input checks and the
model-file format (a safetensors file plus a JSON configuration, both covered by SHA-256 digests).
No scikit-learn estimator lives here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import tempfile
import warnings

import numpy as np
import torch
from sklearn.utils.validation import check_array, check_is_fitted

from ._checks import caller_stacklevel, check_random_state, ignoring_warnings, is_int

__all__ = ["ModelFileError", "UnverifiedModelWarning"]

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
_CONFIG_FILE = CONFIG_FILE
_CHECKSUM_KEYS = ("weights_sha256", "config_sha256")

_DEVICE_EXPECTED = "'cpu', 'cuda', 'cuda:N' or 'auto'"


def _parse_device(device, owner="VAEPrior", pname="device"):
    """``torch.device`` of a device spec, without checking that it exists here ('auto' stays 'auto')."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return "auto"
    if not isinstance(device, str):
        raise ValueError(f"{owner}: {pname} must be {_DEVICE_EXPECTED}; got {device!r}.")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"{owner}: {pname} must be {_DEVICE_EXPECTED}; got {device!r}.") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{owner}: {pname} must be {_DEVICE_EXPECTED}; got {device!r}.")
    return dev


def _resolve_device(device, owner="VAEPrior", pname="device"):
    """The ``torch.device`` to use for ``device`` ('auto': CUDA when available, else the CPU).

    Raises a ValueError naming ``pname`` when the spec is malformed or asks for a CUDA device that
    this machine does not have.
    """
    dev = _parse_device(device, owner, pname)
    if dev == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{owner}: {pname}={device!r} asks for CUDA, but CUDA is not available on "
                             f"this machine (torch.cuda.is_available() is False); expected 'cpu' or "
                             f"'auto' here.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{owner}: {pname}={device!r} names a CUDA device that does not exist; "
                             f"expected an index below {torch.cuda.device_count()}.")
    return dev



def _unchanged_on_failure(fit):
    """``fit`` that, when it raises (KeyboardInterrupt included), leaves the estimator's attributes as they
    were before the call: the previous fit, or none, never a half-fitted estimator that claims to be
    fitted (the fitted shapes are set before the training, the network after it)."""
    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        before = dict(vars(self))
        try:
            return fit(self, *args, **kwargs)
        except BaseException:
            vars(self).clear()
            vars(self).update(before)
            raise
    return wrapper


class ModelFileError(ValueError):
    """A saved model file is unreadable, inconsistent or fails its integrity check.

    The message names the file and what is wrong with it.
    """


class UnverifiedModelWarning(UserWarning):
    """A saved prior has no checksums (written before they existed): it cannot be verified."""


def _config_digest(config):
    """SHA-256 of the canonical JSON of ``config`` without its ``config_sha256`` entry."""
    payload = {k: v for k, v in config.items() if k != "config_sha256"}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _new_file_mode():
    """The mode ``open()`` gives a new file: 0o666 less the process umask (read where the system shows
    it, so that no other thread sees a changed umask). mkstemp's own 0o600 would keep a saved model from
    the other users of a shared folder."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path, data):
    """Write ``data`` to ``path`` atomically: a temporary file beside it, then renamed."""
    _atomic_write_all([(path, data)])


def _atomic_write_all(files):
    """Write each ``(path, data)`` of ``files``: every one to a temporary file beside it first, flushed to
    the disk (fsync: a power cut after the renames cannot leave an empty file under the final name), then
    all renamed in order, so that a failure while writing (a full disk, an interrupt) leaves every path as
    it was (a saved model's weights are not replaced unless its configuration is written too); the
    directories' entries are flushed last, so that the renames themselves survive a power cut."""
    temps = []
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
            temps.append(tmp)
            os.chmod(tmp, _new_file_mode())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for (path, _), tmp in zip(files, temps):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    for folder in dict.fromkeys(os.path.dirname(path) or "." for path, _ in files):
        _fsync_directory(folder)


def _fsync_directory(folder):
    """Flush a directory's entries (POSIX; where a directory cannot be opened, as on Windows, the
    renames are as durable as that system makes them)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass            # some file systems refuse fsync on a directory
    finally:
        os.close(fd)



def _parse_config(raw, config_path, owner, *, fmt, versions, saver):
    """The JSON object of a saved model's ``config.json``, with its ``format`` and ``version`` checked.

    ``fmt`` is the expected ``"format"`` entry, ``versions`` the accepted ``"version"`` values and
    ``saver`` the class whose ``save`` writes such files (named in the messages).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ModelFileError(f"{owner}: {config_path!r} is not UTF-8 text ({err}); expected the JSON "
                             f"written by {saver}.save.") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{owner}: {config_path!r} is not valid JSON ({err.msg} at line {err.lineno}, "
                             f"column {err.colno}; {len(raw)} bytes): the file is truncated or was "
                             f"edited.") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{owner}: {config_path!r} must hold a JSON object; got "
                             f"{type(config).__name__}.")
    if config.get("format") != fmt:
        raise ModelFileError(f"{owner}: {config_path!r} does not hold a saved {saver}: expected "
                             f"'format': {fmt!r}; got {config.get('format', '<missing>')!r}.")
    version = config.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in versions:
        raise ModelFileError(f"{owner}: {config_path!r}: 'version' must be "
                             f"{' or '.join(str(v) for v in versions)} (this "
                             f"latentinv reads those); got {version!r}.")
    return config


def _verify_checksums(config, weights, config_path, weights_path, owner, *, saver, unverified_versions=()):
    """Check both digests (``weights_sha256``, ``config_sha256``); files of a version in
    ``unverified_versions`` (written before checksums existed) that have none load with an
    UnverifiedModelWarning, any other file without them is an error."""
    present = [k for k in _CHECKSUM_KEYS if k in config]
    if not present and config["version"] in unverified_versions:
        warnings.warn(f"{owner}: {config_path!r} has no checksums (saved by a latentinv before they "
                      f"existed, format version 1): its weights and configuration cannot be verified. "
                      f"Re-save it with {saver}.save to add them.", UnverifiedModelWarning, stacklevel=3)
        return False
    for key in _CHECKSUM_KEYS:
        value = config.get(key)
        if value is None:
            raise ModelFileError(f"{owner}: {config_path!r}: missing key {key!r} (a SHA-256 hex digest); "
                                 f"the file was edited or is incomplete.")
        if (not isinstance(value, str) or len(value) != 64
                or any(c not in "0123456789abcdef" for c in value)):
            raise ModelFileError(f"{owner}: {config_path!r}: {key!r} must be a SHA-256 hex digest "
                                 f"(64 lowercase hex digits); got {value!r}.")
    actual = _config_digest(config)
    if actual != config["config_sha256"]:
        raise ModelFileError(f"{owner}: {config_path!r} was modified after it was saved: the SHA-256 of "
                             f"its canonical JSON (without 'config_sha256') is {actual}, but "
                             f"'config_sha256' records {config['config_sha256']}. Do not edit a saved "
                             f"prior; re-save it from the estimator.")
    actual = hashlib.sha256(weights).hexdigest()
    if actual != config["weights_sha256"]:
        raise ModelFileError(f"{owner}: {weights_path!r} does not match its checksum: its SHA-256 is "
                             f"{actual} ({len(weights)} bytes), but {_CONFIG_FILE} records "
                             f"'weights_sha256' {config['weights_sha256']}. The weights are corrupted, "
                             f"truncated or were replaced.")
    return True



def _saved_device_or_cpu(saved, context):
    """The saved device when this machine has it, else the CPU with a warning (``context`` says why)."""
    device = torch.device(saved)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            warnings.warn(f"{context} CUDA is not available; loading it on the CPU. Pass device='cpu' "
                          f"or 'auto' to choose explicitly.", UserWarning, stacklevel=3)
            return torch.device("cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            warnings.warn(f"{context} this machine has {torch.cuda.device_count()} CUDA device(s); "
                          f"loading it on cuda:0.", UserWarning, stacklevel=3)
            return torch.device("cuda", 0)
    return device


def _deterministic_kernels(device):
    if device.type != "cuda":
        return contextlib.nullcontext()
    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=cudnn.enabled, benchmark=False, deterministic=True,
                       allow_tf32=cudnn.allow_tf32)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _tensor_to_numpy(X):
    """A torch tensor as a NumPy array (detached, on the CPU; bfloat16/float16 as float32), so that
    scikit-learn's checks see its values; anything else unchanged."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu()
        if X.dtype in (torch.bfloat16, torch.float16):
            X = X.float()
        return X.numpy()
    return X


def _numeric_input(X, what, owner):
    """``X`` with torch tensors turned into arrays; strings refused (scikit-learn would parse
    ``"1e3"``), as the operators and the geometry refuse them."""
    X = _tensor_to_numpy(X)
    dtype = getattr(X, "dtype", None)
    if not isinstance(dtype, np.dtype):
        try:
            # NumPy before 1.24 warns of ragged lists (an object array, refused by check_array after this)
            with ignoring_warnings(dict(category=DeprecationWarning),
                                   dict(category=getattr(np, "exceptions", np).VisibleDeprecationWarning)):
                dtype = np.asarray(X).dtype
        except (TypeError, ValueError):
            return X  # ragged or odd input: check_array names the problem
    if dtype.kind in "USV":
        raise ValueError(f"{owner}: {what} must hold numbers (models or latents); got an array of "
                         f"dtype {dtype}.")
    return X


def _check_float32_range(A, what, owner):
    """The network computes in float32: values beyond its range would become inf there."""
    if A.size:
        peak = float(np.max(np.abs(A)))
        if peak > _FLOAT32_MAX:
            raise ValueError(f"{owner}: {what} holds values up to {peak:.6g} in absolute value, beyond "
                             f"the float32 range (+-{_FLOAT32_MAX:.4g}) in which the network computes; "
                             f"expected models with values in [0, 1] and latents of order 1.")


def _check_unit_interval(A, what, owner, remedy, warn=False):
    """Training data of a generator whose models lie in [0, 1]: data outside it cannot be reproduced,
    and a prior trained on them (e.g. 8-bit images, 0-255) fits nothing; a ValueError, or with ``warn``
    a UserWarning (for an estimator that has no other way to take scikit-learn's checks' real data)."""
    if A.size:
        lo, hi = float(np.min(A)), float(np.max(A))
        if lo < 0.0 or hi > 1.0:
            message = f"{owner}: {what} must lie in [0, 1]; got values in [{lo:g}, {hi:g}]. {remedy}"
            if not warn:
                raise ValueError(message)
            warnings.warn(message, UserWarning, stacklevel=4)


def _check_output_fits(owner, n_models, n_cells):
    """MemoryError where ``n_models`` decoded models of ``n_cells`` cells (float64, gathered from chunks
    and then joined: twice that while joining) cannot fit in this machine's available memory."""
    from ._memory import check_fits
    check_fits(owner, n_models, 2 * 8 * n_cells, "cpu", what=f"{n_models} models",
               parts=f"{n_cells} cells in float64, twice while the chunks are joined",
               advice=lambda room: f"Decode at most {int(room // (16 * n_cells))} models per call.")


def _check_finite_output(out, what, owner, inputs):
    """No silent NaN/inf: a non-finite network output is an error naming the input's range."""
    if not torch.isfinite(out).all():
        lo, hi = (float(inputs.min()), float(inputs.max())) if inputs.size else (math.nan, math.nan)
        raise ValueError(f"{owner}: the network returned non-finite {what} (NaN or inf in float32) for "
                         f"inputs in [{lo:.6g}, {hi:.6g}]; expected models with values in [0, 1] and "
                         f"latents of order 1.")
    return out


def _reject_1d(X, what, rows, columns, owner):
    """A clear error for a 1-D ``X`` where one row per item is expected (scikit-learn's own message
    suggests ``reshape(-1, 1)``, which would be wrong here)."""
    if _ndim(X) == 1:
        raise ValueError(f"{owner}: {what} must be 2-D, one row per {rows}: (n_{rows}s, {columns}); got a 1-D "
                         f"array of {len(X)} values. Reshape your data: for a single {rows} pass {what}.reshape(1, -1) (or "
                         f"{what}[None])")


def _ndim(X):
    shape = getattr(X, "shape", None)
    if isinstance(shape, tuple):
        return len(shape)
    try:
        return np.asarray(X).ndim
    except (ValueError, TypeError):
        return -1  # let check_array report the problem


def _plain_params(params, saver=None):
    """Hyper-parameters as JSON holds them: numpy scalars (what ``GridSearchCV`` hands over) as Python
    numbers, tuples and arrays as lists, an integer ``random_state`` as ``int`` and any other one (a
    generator) as ``None``, with a ``UserWarning`` naming ``saver`` (a method's name) when given."""
    def plain(value):
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, (list, tuple, np.ndarray)):
            return [plain(v) for v in value]
        return value

    out = {k: plain(v) for k, v in params.items()}
    if "random_state" in out:
        rs = out["random_state"]
        out["random_state"] = rs if isinstance(rs, int) and not isinstance(rs, bool) else None
        if saver is not None and rs is not None and out["random_state"] is None:
            warnings.warn(f"{saver}: random_state is a {type(rs).__name__}, which the file cannot hold; it is "
                          "saved as None, so a fit of the loaded estimator will not repeat this one's draws. "
                          "Pass an int seed to save a reproducible fit.", UserWarning, stacklevel=caller_stacklevel())
    return out


def _check_saved_random_state(params, where):
    """A loaded file's ``random_state``: null or an int seed that ``fit`` takes."""
    rs = params["random_state"]
    if not (rs is None or (is_int(rs) and 0 <= rs < 2 ** 32)):
        raise ModelFileError(f"{where}: params.random_state must be null or an int in [0, 2**32 - 1]; "
                             f"got {rs!r}.")


def _add_checksums(config, weights):
    """``config`` (a JSON-ready dict) with ``weights_sha256`` and then ``config_sha256`` added."""
    config = json.loads(json.dumps(config))     # exactly what load will read back
    config["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    config["config_sha256"] = _config_digest(config)
    return config


def _write_model_files(path, module, config):
    """Write ``module``'s state dict (CPU tensors) to ``path/weights.safetensors`` and ``config`` with
    its checksums (:func:`_add_checksums`) to ``path/config.json``: both written to temporary names, then
    renamed, the configuration last (:func:`_atomic_write_all`); ``path`` is created if missing."""
    _write_tensor_files(path, module.state_dict(), config)


def _write_tensor_files(path, tensors, config, owner="save"):
    """:func:`_write_model_files` for a dict of named tensors (``owner`` names the caller in errors)."""
    from safetensors.torch import save as safetensors_bytes

    path = os.fsdecode(path)     # str, bytes or path-like: joined with str names below
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"{owner}: {path!r} is a file; expected a folder (new or existing) to write "
                              f"{CONFIG_FILE} and {WEIGHTS_FILE} into.")
    os.makedirs(path, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    weights = safetensors_bytes(state)
    config = _add_checksums(config, weights)
    _atomic_write_all([(os.path.join(path, WEIGHTS_FILE), weights),      # the configuration last
                       (os.path.join(path, CONFIG_FILE), json.dumps(config, indent=1).encode("ascii"))])


def _read_reference_state_dict(path, owner, expected):
    """The torch state dict in the published file ``path``, read with ``weights_only=True``;
    FileNotFoundError or ModelFileError naming the file (``expected``: what the file should be)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{owner}: {path!r} is not a file; expected the published "
                                f"{expected} (a torch state dict).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... here
        raise ModelFileError(f"{owner}: {path!r} could not be read as a torch state dict with "
                             f"weights_only=True (not a torch file, truncated, or holding objects "
                             f"other than tensors): {type(err).__name__}: {err}") from None


class _ClonesRememberFitted:
    """A clone of a fitted prior (unfitted, as scikit-learn's contract has it) remembers that it is one.

    scikit-learn clones the values of a parameter grid, so ``GridSearchCV(inverter, {"prior": [p1, p2]})``
    hands ``LatentInverter.fit`` unfitted copies of the fitted priors, which it would train on ``y``
    (100,000 iterations by default); with the mark, it says so.
    """

    def __sklearn_clone__(self):
        twin = super().__sklearn_clone__()
        if hasattr(self, "decoder_"):       # fitted (both priors set decoder_ in fit and load)
            twin._clone_of_fitted = True
        return twin


class _DecodesLatents:
    """Decoding and sampling, shared by the priors: :meth:`_decode` checks latents and runs them through
    ``decoder_`` in chunks of ``_chunk`` rows; :meth:`sample` draws latents from the prior's
    ``latent_distribution`` ("normal": N(0, I); "uniform": U(-1, 1)) and decodes them."""

    _chunk = 1024      # rows per forward pass

    def _latent_width(self):
        """The fitted network's latent dimension (``n_components`` unless the class says otherwise)."""
        return int(self.n_components)

    def _forward_chunks(self, A, fn):
        """``fn`` of ``A``'s rows, ``_chunk`` at a time, as float32 tensors on ``device_``, without grad."""
        outs = []
        with torch.no_grad():
            for start in range(0, A.shape[0], self._chunk):
                rows = torch.tensor(np.ascontiguousarray(A[start:start + self._chunk]), dtype=torch.float32,
                                    device=self.device_)     # torch takes no negative strides
                outs.append(fn(rows))
        return outs

    def _decode(self, Z, columns_hint=""):
        """Models of latents ``Z`` (float64, one flat row each), checked on the way in and out."""
        check_is_fitted(self, "decoder_")
        name, d = type(self).__name__, self._latent_width()
        Z = _numeric_input(Z, "Z", name)
        _reject_1d(Z, "Z", "latent", d, name)
        if _ndim(Z) > 2:
            shape = tuple(np.shape(Z))
            hint = (f"; flatten latent arrays in C order with Z.reshape(len(Z), -1)"
                    if int(np.prod(shape[1:])) == d else "")
            raise ValueError(f"{name}: Z must be 2-D, one flat row per latent: (n_latents, {d}){columns_hint}; "
                             f"got an array of shape {shape}{hint}.")
        Z = check_array(Z, dtype=[np.float64, np.float32], input_name="Z")
        if Z.shape[1] != d:
            later = ("" if int(self.n_components) == d else
                     f" (the fitted network's; n_components={self.n_components} takes effect at the next fit)")
            raise ValueError(f"{name}: Z must have n_components={d} columns{later}{columns_hint}; got {Z.shape[1]}.")
        _check_float32_range(Z, "Z", name)
        n_cells = int(np.prod(self.image_shape_)) if self.image_shape_ is not None else int(self.n_features_in_)
        _check_output_fits(name, len(Z), n_cells)
        outs = self._forward_chunks(Z, lambda zb: self.decoder_(zb).cpu().double())
        return _check_finite_output(torch.cat(outs), "models", name, Z).numpy()

    def sample(self, n_samples=1, random_state=None):
        """Draw models of latents from the prior: ``z ~ N(0, I)`` for a VAEPrior, ``z ~ U(-1, 1)`` for an
        SGANPrior (``latent_distribution``).

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None
            Seeds the latent draws (NumPy, so identical on every device).

        Returns
        -------
        X : ndarray of shape (n_samples, n_cells), float64
            Flat in C order of ``image_shape_``, as :meth:`decode` returns them.
        """
        check_is_fitted(self, "decoder_")
        name = type(self).__name__
        if not is_int(n_samples, 1):
            raise ValueError(f"{name}: n_samples must be an int >= 1; got {n_samples!r}.")
        rng, shape = check_random_state(random_state, f"{name}.sample"), (int(n_samples), self._latent_width())
        Z = rng.uniform(-1.0, 1.0, size=shape) if self.latent_distribution == "uniform" else rng.standard_normal(shape)
        return self.decode(Z)


class _PicklesNetwork:
    """Pickling of a fitted prior: the network (attribute ``_network_attr``) travels as torch-saved
    CPU tensors under ``_pickled_key``, read back with ``weights_only=True`` and checked by the
    class's ``_restore_network(state, device, source)``; the decoder wrapper is rebuilt there.
    The class's ``_new_network()`` builds the network its parameters describe and ``_described()``
    names them; pickling and ``save`` refuse parameters that ``set_params`` changed after ``fit``
    so that they no longer describe the fitted network (the copy could not be loaded back)."""

    _network_attr = "module_"
    _pickled_key = "_module_state"

    def _check_params_describe_network(self, owner):
        """ValueError naming ``owner`` when the parameters no longer describe the fitted network."""
        problems = []
        try:
            self._check_hyperparams(name="params")
            _check_state_against(self._new_network(), getattr(self, self._network_attr).state_dict(),
                                 "the fitted network", self._described())
        except ValueError as err:
            problems.append(str(err))
        if self.image_shape is not None and tuple(self.image_shape) != tuple(self.image_shape_):
            problems.append(f"image_shape={tuple(self.image_shape)} but the fitted models have image_shape_="
                            f"{tuple(self.image_shape_)}.")
        if problems:
            raise ValueError(f"{owner}: the parameters were changed after fit (set_params?) and no longer "
                             f"describe the fitted prior, which could not be loaded back: "
                             + " ".join(problems) + " Restore them, or fit again.")

    def __getstate__(self):
        state = dict(super().__getstate__())
        if self._network_attr in state:
            self._check_params_describe_network(f"{type(self).__name__} (pickling)")
            buffer = io.BytesIO()
            torch.save({k: v.detach().cpu() for k, v in state[self._network_attr].state_dict().items()},
                       buffer)
            state[self._pickled_key] = buffer.getvalue()
            state["device_"] = str(self.device_)
            del state[self._network_attr]
            del state["decoder_"]
        return state

    def __setstate__(self, state):
        weights = state.pop(self._pickled_key, None)
        super().__setstate__(state)
        if weights is not None:
            weights = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
            name = type(self).__name__
            device = _saved_device_or_cpu(state["device_"], f"{name}: the pickled prior was on "
                                          f"{state['device_']!r}, but")
            self._restore_network(weights, device, source=f"{name}: pickled state")


def _read_model_files(path, owner, saver):
    """Bytes of ``config.json`` and ``weights.safetensors`` in the directory ``path``."""
    path = os.fsdecode(path)     # str, bytes or path-like: joined with str names below
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{owner}: {path!r} is not a directory; expected a directory written "
                                f"by {saver}.save holding {CONFIG_FILE} and {WEIGHTS_FILE}.")
    files = (os.path.join(path, CONFIG_FILE), os.path.join(path, WEIGHTS_FILE))
    for file in files:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{owner}: {file!r} is missing; a saved {saver} holds both "
                                    f"{CONFIG_FILE} and {WEIGHTS_FILE}.")
    contents = []
    for file in files:
        with open(file, "rb") as f:
            contents.append(f.read())
    return files, contents


def _load_safetensors(weights, weights_path, owner):
    from safetensors.torch import load as safetensors_load

    try:
        return safetensors_load(weights)
    except Exception as err:  # safetensors raises its own error types for malformed files
        raise ModelFileError(f"{owner}: {weights_path!r} is not a readable safetensors file "
                             f"({type(err).__name__}: {err}).") from None


def _check_state_against(module, state, source, described):
    """ModelFileError unless ``state`` has exactly ``module``'s tensor names, shapes and dtypes, and finite
    floating-point values."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)}, expected {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    dtypes = [f"{k}: file {state[k].dtype}, expected {v.dtype}"
              for k, v in expected.items() if k in state and state[k].dtype != v.dtype]
    not_finite = [k for k in expected if k in state and state[k].is_floating_point()
                  and not bool(torch.isfinite(state[k]).all())]
    if missing or unexpected or shapes or dtypes or not_finite:
        problems = []
        if missing:
            problems.append(f"missing tensors {missing}")
        if unexpected:
            problems.append(f"unexpected tensors {unexpected}")
        if shapes:
            problems.append("wrong shapes: " + "; ".join(shapes))
        if dtypes:
            problems.append("wrong dtypes: " + "; ".join(dtypes))
        if not_finite:
            problems.append(f"NaN or infinite values in {not_finite[:3]}")
        raise ModelFileError(f"{source}: the tensors do not fit the network the configuration "
                             f"describes ({described}): " + "; ".join(problems) + ".")


def _check_history_finite(history, where):
    """ModelFileError naming ``where`` and the key where a list of a saved ``history_`` (numbers, checked
    before) holds NaN or infinity: ``fit`` refuses a training whose losses are not finite, so no saved
    prior has them (JSON's ``NaN`` token reads as a float)."""
    for key, values in history.items():
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            raise ModelFileError(f"{where}: fitted.history_.{key} must hold finite numbers (fit refuses a "
                                 f"training whose losses are not finite); got {values[bad]!r} at index {bad}.")


def native_bfloat16(device):
    """Whether ``device`` has native bfloat16 arithmetic (AVX512-BF16 or AMX on a CPU, compute
    capability 8.0 on a GPU): elsewhere bfloat16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
