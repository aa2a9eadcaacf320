"""Resumable training: the whole state of a training loop in a checkpoint directory.

A training run that may be stopped (a GPU lent for ten minutes at a time, a job killed) keeps its
state in a directory: the network, the optimizer's moments, every random generator the loop draws from,
its position in the data and its history. Run again with the same settings and data, the loop carries
on from the last checkpoint and ends with the same network, to the bit, as one uninterrupted run (on the
same device, with the same torch thread count: another count sums the gradients in another order).

Layout: ``path/step-<iteration>/`` holds ``weights.safetensors`` (every tensor) and ``config.json``
(the rest), in latentinv's model-file format (no code is executed to read them; SHA-256 digests of
both are verified), and ``path/LATEST`` names the newest complete one. ``LATEST`` is replaced
atomically after its step directory is written, and older steps are removed after that, so a run
killed at any moment leaves the previous checkpoint readable.

A checkpoint records a fingerprint of its training (the estimator's settings, the device type and a
digest of the data); reading it for another training is an error that names what differs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from numbers import Integral

import numpy as np
import torch

from ._common import (ModelFileError, _atomic_write, _load_safetensors, _parse_config, _plain_params,
                      _read_model_files, _verify_checksums, _write_tensor_files)

FORMAT = "latentinv.training-checkpoint"
VERSION = 1
LATEST = "LATEST"


def data_digest(X=None, sampler=None):
    """SHA-256 of the training data: the float32 array ``X``, or a :class:`PatchSampler`'s images,
    crop shape and exclusion windows."""
    h = hashlib.sha256()
    if X is not None:
        X = np.ascontiguousarray(X, dtype=np.float32)
        h.update(repr(X.shape).encode())
        h.update(X.tobytes())
    else:
        h.update(repr(tuple(sampler.patch_shape)).encode())
        h.update(repr(sampler.exclude).encode())
        for image in sampler.images:
            image = np.ascontiguousarray(image, dtype=np.float32)
            h.update(repr(image.shape).encode())
            h.update(image.tobytes())
    return h.hexdigest()


def check_arguments(checkpoint, checkpoint_every, owner):
    """``fit``'s ``checkpoint`` (None or a path) and ``checkpoint_every`` (an int >= 1)."""
    if not (isinstance(checkpoint_every, Integral) and not isinstance(checkpoint_every, bool)
            and checkpoint_every >= 1):
        raise ValueError(f"{owner}: checkpoint_every must be an int >= 1; got {checkpoint_every!r}.")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise ValueError(f"{owner}: checkpoint must be None or a directory path (str or path-like); "
                         f"got {type(checkpoint).__name__}.")


def training_fingerprint(owner, device, X=None, sampler=None, ignore=(), **extra):
    """What a checkpoint of the estimator ``owner``'s training must match (JSON): its settings but
    ``n_iterations`` (a longer run continues a shorter one), ``device`` (its type instead), ``verbose``
    and ``ignore`` (settings the training does not depend on), the data's digest (:func:`data_digest`),
    and ``extra``."""
    params = owner.get_params(deep=False)
    for key in ("n_iterations", "device", "verbose", *ignore):
        params.pop(key, None)
    for key, value in params.items():
        if callable(value):
            params[key] = getattr(value, "__qualname__", repr(value))
    rs = params.get("random_state")
    params = _plain_params(params)     # np.int64(7) and 7 are the same training
    if not isinstance(rs, (Integral, type(None))):
        params["random_state"] = type(rs).__name__
    params.update(extra, device_type=device.type, data_sha256=data_digest(X, sampler))
    return json.loads(json.dumps(params, default=str))


class TrainingState:
    """What a training loop carries from one iteration to the next (see :func:`write` and :func:`read`).

    ``module`` (one module holding every network the loop trains) and ``optimizer`` (one optimizer, or
    a sequence of them, as a GAN's two) are restored in place; ``rng`` is a NumPy ``RandomState`` or
    None, ``numpy_generator`` a NumPy ``Generator`` or None, ``torch_generator`` a torch ``Generator``;
    ``order`` (a tensor or None) and ``position`` the loop's place in an epoch of shuffled batches;
    ``history_keys`` name the per-iteration records."""

    def __init__(self, module, optimizer, rng, numpy_generator, torch_generator,
                 history_keys=("reconstruction", "kl", "loss")):
        self.module = module
        self.optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
        self.rng, self.numpy_generator, self.torch_generator = rng, numpy_generator, torch_generator
        self.order, self.position = None, 0
        self.history = {k: [] for k in history_keys}
        self.iteration = 0

    def _params(self):
        """(optimizer, parameter) of every optimizer's parameters, in a fixed order."""
        return [(opt, p) for opt in self.optimizers for group in opt.param_groups for p in group["params"]]

    def tensors(self):
        out = {f"module/{k}": v for k, v in self.module.state_dict().items()}
        for i, (opt, p) in enumerate(self._params()):
            for key, value in opt.state.get(p, {}).items():
                out[f"optimizer/{i}/{key}"] = torch.as_tensor(value)
        out["rng/torch"] = self.torch_generator.get_state()
        if self.rng is not None:
            out["rng/mt19937"] = torch.from_numpy(self.rng.get_state()[1].astype(np.int64))
        if self.order is not None:
            out["order"] = self.order
        return out

    def config(self, fingerprint):
        mt19937 = None
        if self.rng is not None:
            _, _, pos, has_gauss, cached = self.rng.get_state()
            mt19937 = {"pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
        return {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint,
                "iteration": int(self.iteration), "position": int(self.position),
                "history": {k: [float(v) for v in vals] for k, vals in self.history.items()},
                "mt19937": mt19937,
                "numpy_generator": (None if self.numpy_generator is None
                                    else self.numpy_generator.bit_generator.state)}

    def restore(self, tensors, config, source):
        device = next(self.module.parameters()).device
        module_state = {k[len("module/"):]: v for k, v in tensors.items() if k.startswith("module/")}
        try:
            self.module.load_state_dict(module_state, strict=True)
        except RuntimeError as err:
            raise ModelFileError(f"{source}: its network does not fit this estimator's: {err}") from None
        for i, (opt, p) in enumerate(self._params()):
            # Adam keeps its step count on the host, or with the parameters when capturable (a CUDA graph)
            step_device = device if opt.defaults.get("capturable", False) else None
            state = {k.rsplit("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"optimizer/{i}/")}
            if state:
                opt.state[p] = {k: v.to(step_device if k == "step" else device) for k, v in state.items()}
        self.torch_generator.set_state(tensors["rng/torch"])
        if self.rng is not None:
            mt = config["mt19937"]
            self.rng.set_state(("MT19937", tensors["rng/mt19937"].numpy().astype(np.uint32), mt["pos"],
                                mt["has_gauss"], mt["cached_gaussian"]))
        if self.numpy_generator is not None:
            self.numpy_generator.bit_generator.state = config["numpy_generator"]
        self.order = tensors["order"].to(device) if "order" in tensors else None
        self.position = int(config["position"])
        self.history = {k: list(v) for k, v in config["history"].items()}
        self.iteration = int(config["iteration"])


def write(path, state, fingerprint):
    """Write ``state`` as the newest checkpoint of the directory ``path`` (created if missing)."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    step = f"step-{state.iteration:09d}"
    _write_tensor_files(os.path.join(path, step), state.tensors(), state.config(fingerprint))
    _atomic_write(os.path.join(path, LATEST), step.encode("ascii"))
    for entry in os.listdir(path):           # the older steps, once LATEST names the new one
        if entry.startswith("step-") and entry != step:
            shutil.rmtree(os.path.join(path, entry), ignore_errors=True)


def _latest_step(path, owner):
    """The name of the newest step directory in ``path`` (its ``LATEST``), or None where there is no
    checkpoint yet; ModelFileError where ``LATEST`` is missing beside steps or names no step."""
    latest = os.path.join(path, LATEST)
    if not os.path.isfile(latest):
        if os.path.isdir(path) and any(e.startswith("step-") for e in os.listdir(path)):
            raise ModelFileError(f"{owner}: {path!r} holds checkpoint steps but no {LATEST} file naming the "
                                 f"newest: not a checkpoint directory written by latentinv, or damaged.")
        return None
    with open(latest, "rb") as f:
        step = f.read().decode("ascii", "replace").strip()
    if not step.startswith("step-") or os.sep in step or step in (".", ".."):
        raise ModelFileError(f"{owner}: {latest!r} must name a step directory ('step-<iteration>'); "
                             f"got {step!r}.")
    return step


def latest_iteration(path, owner="latentinv"):
    """The iteration of the newest checkpoint in the directory ``path``, 0 when there is none yet
    (without reading it: no fingerprint check)."""
    step = _latest_step(os.fspath(path), owner)
    if step is None:
        return 0
    if not step[len("step-"):].isdigit():
        raise ModelFileError(f"{owner}: {os.path.join(os.fspath(path), LATEST)!r} must name 'step-<iteration>'; "
                             f"got {step!r}.")
    return int(step[len("step-"):])


def read(path, state, fingerprint, owner):
    """Restore ``state`` from the newest checkpoint in ``path``; False when there is none yet.

    Raises ModelFileError for a damaged checkpoint or one written for another training."""
    path = os.fspath(path)
    step = _latest_step(path, owner)
    if step is None:
        return False
    (config_path, weights_path), (raw, weights) = _read_model_files(os.path.join(path, step), owner,
                                                                    "a training checkpoint")
    config = _parse_config(raw, config_path, owner, fmt=FORMAT, versions=(VERSION,),
                           saver="a training checkpoint")
    _verify_checksums(config, weights, config_path, weights_path, owner, saver="a training checkpoint")
    saved = config.get("fingerprint")
    if saved != fingerprint:
        keys = sorted(set(saved or {}) | set(fingerprint))
        differ = [k for k in keys if (saved or {}).get(k) != fingerprint.get(k)]
        details = "; ".join(f"{k}: checkpoint {json.dumps((saved or {}).get(k))}, now "
                            f"{json.dumps(fingerprint.get(k))}" for k in differ)
        raise ModelFileError(f"{owner}: the checkpoint in {path!r} was written by another training "
                             f"(it differs in {details}). Use another checkpoint directory, or the "
                             f"settings and data it was written with.")
    state.restore(_load_safetensors(weights, weights_path, owner), config, f"{owner}: {config_path!r}")
    return True
