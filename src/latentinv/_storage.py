"""Weights stored in less than float32, judged by the models they decode.

A prior's network computes in float32; its file may store the weights in float16 (half the bytes) or
"mixed" (float16 but for the fewest tensors the decoded models need in float32). Either is refused
unless the models decoded with the stored weights agree with float32's to :data:`MODEL_TOLERANCE` on
256 latents of the prior. On load the stored dtypes are checked against the configuration and the
weights upcast to float32. Shared by :class:`~latentinv.prior.VAEPrior` and
:class:`~latentinv.sgan.SGANPrior`.
"""
from __future__ import annotations

import copy

import torch

from ._common import ModelFileError

#: how the weights may be stored (``save``'s ``weights_dtype``); the network computes in float32
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: ``save``'s choices: a dtype, or "mixed" (float16 but the tensors the decoded models need in float32)
WEIGHTS_DTYPES = (*STORAGE_DTYPES, "mixed")
#: float16 storage is refused when the decoded models of the stored weights differ from float32's by more
MODEL_TOLERANCE = 1e-3


def decoding_error(module, decode, z):
    """A function of weights ``state`` (any float dtypes): the largest difference between the models
    ``decode(network, z)`` of ``module`` with those weights and with its own. One probe network and one
    reference decoding serve every call (the mixed storage's search makes dozens)."""
    probe = copy.deepcopy(module).float()
    dtypes = {k: v.dtype for k, v in probe.state_dict().items()}
    with torch.no_grad():
        want = decode(module, z)

    def error(state):
        probe.load_state_dict({k: v.to(dtypes[k]) for k, v in state.items()})
        with torch.no_grad():
            return float((decode(probe, z) - want).abs().max())
    return error


def rounded_state(state, dtype, error, owner):
    """``state`` with its floating tensors rounded to ``dtype``, after checking (``error``:
    :func:`decoding_error`'s function) that the decoded models stay within :data:`MODEL_TOLERANCE`."""
    rounded = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    bad = [k for k, v in rounded.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{owner}: weights of {bad[:3]} overflow {dtype} (beyond +-65504); save them as "
                         f"float32 or 'mixed'.")
    err = error(rounded)
    if not err <= MODEL_TOLERANCE:
        raise ValueError(f"{owner}: with its weights rounded to {dtype} the decoded models differ from "
                         f"float32's by up to {err:.3g} (on 256 latents of the prior), more than "
                         f"{MODEL_TOLERANCE}; save this prior as float32 or 'mixed'.")
    return rounded


def mixed_state(state, error):
    """``state`` in float16 but for the tensors kept in float32, and the kept tensors' names: those that
    would overflow, then, greedily, the tensor whose float16 rounding alone moves the decoded models
    most per element, until the models meet :data:`MODEL_TOLERANCE` (they do once every tensor the
    decoder uses is float32)."""
    floating = [k for k, v in state.items() if v.is_floating_point()]
    half = {k: state[k].half() for k in floating}
    kept = [k for k in floating if not bool(torch.isfinite(half[k]).all())]     # would overflow
    mixed = lambda keep: {k: (state[k] if k in keep or k not in half else half[k]) for k in state}
    if error(mixed(set(kept))) > MODEL_TOLERANCE:
        alone = {k: error(mixed(set(floating) - {k})) for k in floating if k not in kept}
        order = sorted(alone, key=lambda k: (-alone[k] / state[k].numel(), k))
        for k in order:
            if alone[k] == 0:
                break
            kept.append(k)
            if error(mixed(set(kept))) <= MODEL_TOLERANCE:
                break
    return mixed(set(kept)), sorted(kept)


def check_weights_dtype(weights_dtype, owner):
    """ValueError naming ``owner`` unless ``weights_dtype`` is one of :data:`WEIGHTS_DTYPES`."""
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"{owner}: weights_dtype must be one of {sorted(WEIGHTS_DTYPES)}; got {weights_dtype!r}.")


def stored_state(state, weights_dtype, error, owner):
    """``save``'s weights and configuration entries for ``weights_dtype`` (one of :data:`WEIGHTS_DTYPES`;
    ValueError naming ``owner`` otherwise): ``(state, {"weights_dtype": ..., "float32_tensors": ...})``,
    the entries empty for float32. ``error()`` makes :func:`decoding_error`'s function (only called
    when rounding)."""
    check_weights_dtype(weights_dtype, owner)
    if weights_dtype == "float32":
        return state, {}
    if weights_dtype == "float16":
        return rounded_state(state, torch.float16, error(), owner), {"weights_dtype": "float16"}
    state, kept = mixed_state(state, error())
    return state, {"weights_dtype": "mixed", "float32_tensors": kept}


def check_config_entries(config, where):
    """The configuration's ``weights_dtype`` and ``float32_tensors`` (ModelFileError naming ``where``)."""
    if config.get("weights_dtype", "float32") not in WEIGHTS_DTYPES:
        raise ModelFileError(f"{where}: 'weights_dtype' must be one of {sorted(WEIGHTS_DTYPES)}; got "
                             f"{config.get('weights_dtype')!r}.")
    kept = config.get("float32_tensors")
    if (kept is not None) != (config.get("weights_dtype") == "mixed") or (
            kept is not None and not (isinstance(kept, list) and all(isinstance(k, str) for k in kept)
                                      and len(set(kept)) == len(kept))):
        raise ModelFileError(f"{where}: 'float32_tensors' (a list of distinct tensor names) must be present "
                             f"exactly when weights_dtype is 'mixed'; got {kept!r} with weights_dtype "
                             f"{config.get('weights_dtype')!r}.")


def stored_dtype(key, config, int8=(), int8_scale=None):
    """The dtype the configuration says tensor ``key`` is stored in: int8 for ``int8`` tensors, float32
    for their scales (``key`` = an int8 tensor's name + ``int8_scale``) and ``float32_tensors``, else
    ``weights_dtype``'s."""
    dtype_name = config.get("weights_dtype", "float32")
    if key in int8:
        return torch.int8
    if (dtype_name == "float32" or key in set(config.get("float32_tensors") or ())
            or (int8_scale and key.endswith(int8_scale) and key[:-len(int8_scale)] in int8)):
        return torch.float32
    return STORAGE_DTYPES.get(dtype_name, torch.float16)


def check_stored_dtypes(state, config, owner, weights_path, config_path, int8=(), int8_scale=None):
    """ModelFileError where a floating (or int8) tensor of ``state`` is not stored as the configuration
    says (:func:`stored_dtype`)."""
    absent = sorted(set(config.get("float32_tensors") or ()) - set(state))
    if absent:
        raise ModelFileError(f"{owner}: {config_path!r} names float32_tensors {absent[:3]} that "
                             f"{weights_path!r} does not hold.")
    wrong = sorted(k for k, v in state.items()
                   if (v.is_floating_point() or v.dtype == torch.int8)
                   and v.dtype != stored_dtype(k, config, int8, int8_scale))
    if wrong:
        kept = config.get("float32_tensors")
        recorded = " and ".join(n for n, v in (("float32_tensors", kept), ("int8_tensors", int8)) if v)
        raise ModelFileError(f"{owner}: {weights_path!r}: {config_path!r} records weights_dtype "
                             f"{config.get('weights_dtype', 'float32')!r}{' and ' + recorded if recorded else ''} "
                             f"but {wrong[:3]} are not stored so.")


def upcast(state):
    """The floating tensors of ``state`` in float32, in which the networks compute."""
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
