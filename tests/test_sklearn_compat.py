"""scikit-learn's estimator checks on both estimators (VAEPrior, LatentInverter).

Only checks that apply are collected. ``LatentInverter`` takes X of exactly its operator's
``n_data`` traveltimes per survey, while each check feeds X of its own width; the tests build one
inverter per width the checks use (2, 3, 4, 5 and 10 rays) and run each width-bound check on the
instance of its width only (``_SKLEARN_CHECK_WIDTHS`` in ``latentinv.inversion``). On the other
instances such a check does not apply and is not collected at all: it is neither a pass nor an
expected failure. The real expected failures (listed with their reasons in
``latentinv.inversion._SKLEARN_EXPECTED_FAILED_CHECKS``) run once, on one instance, as strict xfails:
a check that starts to pass fails the suite, so that the list is kept short.
"""
import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import estimator_checks_generator, parametrize_with_checks

from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.inversion import (_SKLEARN_CHECK_WIDTHS, _SKLEARN_EXPECTED_FAILED_CHECKS,
                                 LatentInverter, TorchGenerator)
from latentinv.operators import StraightRayOperator
from latentinv.prior import VAEPrior

try:  # the name scikit-learn itself matches ``expected_failed_checks`` against (>= 1.6)
    from sklearn.utils.estimator_checks import _check_name
except ImportError:  # pragma: no cover
    from functools import partial

    def _check_name(check):
        if hasattr(check, "__wrapped__"):
            return _check_name(check.__wrapped__)
        return check.func.__name__ if isinstance(check, partial) else check.__name__

# Every check passes for the MLP variant of the prior; nothing needs to be excused. The checks feed
# real data of any range, which the default sigmoid decoder refuses (models lie in [0, 1]; checked in
# test_prior.py), so they run on the identity decoder, which takes any real data.
PRIOR_EXPECTED_FAILED_CHECKS = {}


@parametrize_with_checks(
    [VAEPrior(architecture="mlp", n_components=2, hidden_size=8, n_iterations=3, batch_size=10,
              random_state=0, device="cpu", output_activation="identity")],
    expected_failed_checks=lambda est: PRIOR_EXPECTED_FAILED_CHECKS,
)
def test_prior_sklearn_compatible(estimator, check):
    check(estimator)


def _linear_generator(n_cells, d, seed=0):
    """g(z) = A z + b (the same generator as in test_inversion)."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(d, n_cells)
    with torch.no_grad():
        lin.weight.mul_(0.5)
        lin.bias.fill_(0.5)
    return TorchGenerator(lin.eval(), d)


def _check_estimator_instance(n_data):
    """A tiny inverter whose operator holds ``n_data`` rays (the checks' X has 3 or 10 features)."""
    grid = Grid2D(3, 3, 1.0)
    n_src, n_rec = {2: (2, 1), 3: (3, 1), 4: (2, 2), 5: (5, 1), 10: (5, 2)}[n_data]
    src = np.column_stack([np.zeros(n_src), np.linspace(0.3, 2.7, n_src)])
    rec = np.column_stack([np.full(n_rec, 3.0), np.linspace(0.5, 2.5, n_rec)])
    op = StraightRayOperator(grid, CrossholeSurvey(src, rec))
    return LatentInverter(_linear_generator(n_cells=9, d=2), op, batch_size=None, n_epochs=2,
                          n_starts=2, random_state=0, device="cpu")


# The widths of X that the checks feed (1, 2, 3, 4, 5 or 10 features; width 1 only in an expected
# failure): one instance per width.
_WIDTHS = (2, 3, 4, 5, 10)
#: The instance on which the real expected failures run (they fail for their reason at any width).
_XFAIL_WIDTH = 3


def _applies(name, n_data):
    """Does check ``name`` apply to the instance with ``n_data`` rays? (and its xfail reason)"""
    if name in _SKLEARN_EXPECTED_FAILED_CHECKS:
        return n_data == _XFAIL_WIDTH, _SKLEARN_EXPECTED_FAILED_CHECKS[name]
    if name in _SKLEARN_CHECK_WIDTHS:
        return _SKLEARN_CHECK_WIDTHS[name] == n_data, None
    return True, None


def _inverter_checks():
    params = []
    for n_data in _WIDTHS:
        for estimator, check in estimator_checks_generator(_check_estimator_instance(n_data),
                                                           legacy=True, mark=None):
            applies, reason = _applies(_check_name(check), n_data)
            if not applies:
                continue  # does not apply: the check's X is not n_data traveltimes wide
            marks = [] if reason is None else [pytest.mark.xfail(reason=reason, strict=True)]
            params.append(pytest.param(estimator, check, marks=marks))
    return params


_INVERTER_CHECKS = _inverter_checks()


def _check_id(obj):
    from sklearn.utils.estimator_checks import _get_check_estimator_ids

    if isinstance(obj, LatentInverter):
        return f"LatentInverter(n_data={obj.operator.n_data})"
    return _get_check_estimator_ids(obj)


@pytest.mark.parametrize("estimator, check", _INVERTER_CHECKS, ids=_check_id)
def test_inverter_sklearn_compatible(estimator, check):
    check(estimator)


def test_every_inverter_check_runs_on_exactly_one_instance_of_its_width():
    # what the filter above leaves out must run elsewhere: every width-bound check that scikit-learn
    # generates is collected on exactly one instance, the one of its width, and every real
    # expected failure exactly once per variant (e.g. readonly_memmap)
    generated = {}
    for n_data in _WIDTHS:
        names = [_check_name(c) for _, c in estimator_checks_generator(
            _check_estimator_instance(n_data), legacy=True, mark=None)]
        generated[n_data] = names
    collected = {}
    for param in _INVERTER_CHECKS:
        estimator, check = param.values
        collected.setdefault(_check_name(check), []).append(estimator.operator.n_data)
    for key, width in _SKLEARN_CHECK_WIDTHS.items():
        name = key.split("(")[0]        # scikit-learn matches the check's name, not its variant
        assert name in generated[width], f"{name} is no longer generated by scikit-learn"
        assert set(collected[name]) == {width}, (name, collected[name])
    for name in _SKLEARN_EXPECTED_FAILED_CHECKS:
        base = name.split("(")[0]
        assert set(collected[base]) == {_XFAIL_WIDTH}, (base, collected.get(base))
    # checks bound to no width run on every instance
    free = set(generated[_WIDTHS[0]]) - set(_SKLEARN_CHECK_WIDTHS) - {
        n.split("(")[0] for n in _SKLEARN_EXPECTED_FAILED_CHECKS}
    assert free and all(set(collected[n]) == set(_WIDTHS) for n in free)
