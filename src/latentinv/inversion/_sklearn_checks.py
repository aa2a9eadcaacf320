"""scikit-learn's estimator checks of LatentInverter: the expected failures, with reasons."""

_MODELS_NOT_1D = ("predict returns one model (n_cells values) per survey and score compares it with "
                  "true models (n_surveys, n_cells); the check expects a 1-D regression target")

#: Checks that cannot apply to LatentInverter whatever its operator, with the reason.
_SKLEARN_EXPECTED_FAILED_CHECKS = {
    "check_fit_score_takes_y": _MODELS_NOT_1D,
    "check_pipeline_consistency": _MODELS_NOT_1D,
    "check_regressors_train": _MODELS_NOT_1D,
    "check_regressors_train(readonly_memmap=True)": _MODELS_NOT_1D,
    "check_regressors_train(readonly_memmap=True,X_dtype=float32)": _MODELS_NOT_1D,
    "check_regressor_multioutput": "predict returns n_cells outputs whatever the width of y",
    "check_fit2d_1feature": ("X of one traveltime per survey needs a one-ray operator; the test "
                             "instances have 2 to 10 rays"),
    "check_estimators_overwrite_params": (
        "joblib.hash of a deep-copied torch tensor differs from the original's, so a torch-module "
        "prior (TorchGenerator) never hashes equal to its copy; that fit leaves the prior's "
        "weights untouched is tested directly in tests/test_inversion.py"),
}

#: Width of the X that each other check feeds: X must hold the operator's n_data traveltimes, so a
#: check runs (and must pass) only on an instance whose operator has that many rays.
_SKLEARN_CHECK_WIDTHS = {
    "check_dict_unchanged": 3, "check_dont_overwrite_parameters": 3, "check_estimators_nan_inf": 3,
    "check_estimators_pickle": 3, "check_estimators_pickle(readonly_memmap=True)": 3,
    "check_f_contiguous_array_estimator": 3, "check_fit2d_predict1d": 3,
    "check_methods_sample_order_invariance": 3, "check_methods_subset_invariance": 3,
    "check_dtype_object": 10, "check_fit2d_1sample": 10, "check_regressor_data_not_an_array": 10,
    "check_regressors_int": 10,
    "check_n_features_in_after_fitting": 4, "check_regressors_no_decision_function": 4,
    "check_estimators_fit_returns_self": 2, "check_fit_check_is_fitted": 2,
    "check_fit_idempotent": 2, "check_n_features_in": 2, "check_readonly_memmap_input": 2,
    "check_estimators_dtypes": 5,
}


def _sklearn_expected_failed_checks(n_data):
    """``expected_failed_checks`` for an inverter whose operator has ``n_data`` rays."""
    width = ("the check's X is not as wide as this operator's n_data traveltimes (it runs on an "
             "instance of the right width)")
    out = {c: width for c, w in _SKLEARN_CHECK_WIDTHS.items() if w != n_data}
    out.update(_SKLEARN_EXPECTED_FAILED_CHECKS)
    return out
