"""The float16 / "mixed" storage guard (latentinv._storage) on small hand-made networks: the decoding
error is the largest absolute difference, the tolerance is applied as documented (at equality, and a NaN
refused), an overflow anywhere refuses float16, and "mixed" keeps the fewest tensors the guard needs."""
import pytest
import torch

from latentinv import _storage


def _net(steep_bias=None):
    """z (2) -> tanh(W1 z + b1) (2) -> W2 h + b2 (1), weights in [-0.5, 0.5]; ``steep_bias``: b2's value
    (float16 rounds 1000.3 to 1000.5: the models move by 0.2)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh(), torch.nn.Linear(2, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.5, 0.5)
        if steep_bias is not None:
            net[2].bias.fill_(steep_bias)
    return net


def _decode(net, z):
    return net(z)


Z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))


def test_decoding_error_is_the_largest_absolute_difference():
    """Models moved down by 0.25 (b2 lowered) or up by 0.5 everywhere: the error is 0.25 or 0.5, whatever
    the sign; the network's own weights, in any float dtype they decode the same in, give 0."""
    net = _net()
    error = _storage.decoding_error(net, _decode, Z)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert error(state) == 0.0
    for shift in (-0.25, 0.5):
        moved = dict(state, **{"2.bias": state["2.bias"] + shift})
        assert error(moved) == pytest.approx(abs(shift), rel=1e-6)
    assert error({k: v.double() for k, v in state.items()}) == 0.0
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), state.values()))   # net untouched


@pytest.mark.parametrize("err, accepted", [(0.0, True), (_storage.MODEL_TOLERANCE, True),
                                           (1.5 * _storage.MODEL_TOLERANCE, False), (float("nan"), False)])
def test_float16_is_refused_beyond_the_tolerance(err, accepted):
    """rounded_state returns the float16 weights exactly when the decoding error is at most
    MODEL_TOLERANCE (equality passes, 1.5 times it or a NaN does not)."""
    state = _net().state_dict()
    if accepted:
        rounded = _storage.rounded_state(state, torch.float16, lambda s: err, "owner")
        assert all(v.dtype == torch.float16 and torch.equal(v, state[k].half()) for k, v in rounded.items())
    else:
        with pytest.raises(ValueError, match="owner: with its weights rounded to torch.float16 the decoded models"):
            _storage.rounded_state(state, torch.float16, lambda s: err, "owner")


def test_one_overflowing_element_refuses_float16():
    """One element beyond float16's range (+-65504) in a tensor the decoding does not use (the error is
    0): refused by the overflow check, not stored as inf."""
    state = _net().state_dict()
    state["0.weight"][1, 0] = 1e5
    with pytest.raises(ValueError, match=r"weights of \['0.weight'\] overflow torch.float16"):
        _storage.rounded_state(state, torch.float16, lambda s: 0.0, "owner")


def test_mixed_keeps_only_the_tensor_the_models_need():
    """b2 = 1000.3 (float16 moves the models by 0.2); every other tensor's rounding moves them by less
    than the tolerance, together too: "mixed" keeps b2 alone in float32, the rest float16, within the
    tolerance. Where nothing needs float32 it keeps nothing."""
    net = _net(steep_bias=1000.3)
    error = _storage.decoding_error(net, _decode, Z)
    state = net.state_dict()
    rest = {k: (v if k == "2.bias" else v.half()) for k, v in state.items()}
    assert 0 < error(rest) <= _storage.MODEL_TOLERANCE < error({k: v.half() for k, v in state.items()})
    mixed, kept = _storage.mixed_state(state, error)
    assert kept == ["2.bias"]
    assert {k: v.dtype for k, v in mixed.items()} == {k: (torch.float32 if k == "2.bias" else torch.float16)
                                                      for k in state}
    assert error(mixed) <= _storage.MODEL_TOLERANCE
    plain = _net()
    assert _storage.mixed_state(plain.state_dict(), _storage.decoding_error(plain, _decode, Z))[1] == []
