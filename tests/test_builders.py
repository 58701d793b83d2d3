"""Data construction against PyBLP's functions run in the test: ids, ownership, matrices, BLP and differentiation
instruments (each version, with and without interactions), on the Nevo data."""

import numpy as np
import pytest
from nevo import nevo_data

import blpjax


def test_id_data_and_ownership_match_pyblp():
    pyblp, products, _ = nevo_data(6)
    ids = blpjax.build_id_data(T=3, J=5, F=2)
    theirs = pyblp.build_id_data(T=3, J=5, F=2)
    np.testing.assert_array_equal(ids.market_ids, theirs.market_ids.ravel().astype(int))
    np.testing.assert_array_equal(ids.firm_ids, theirs.firm_ids.ravel().astype(int))
    for kappa in (None, "monopoly", "single", lambda f, g: 1.0 if f == g else 0.25):
        np.testing.assert_array_equal(
            blpjax.build_ownership(products, kappa), pyblp.build_ownership(products, kappa), err_msg=str(kappa)
        )
    with pytest.raises(blpjax.BLPSpecificationError, match="at least F"):
        blpjax.build_id_data(T=2, J=2, F=3)


@pytest.mark.parametrize("formula", ["1 + sugar + mushy", "0 + sugar + I(sugar**2) + C(firm_ids)"])
def test_matrix_and_instruments_match_pyblp(formula):
    pyblp, products, _ = nevo_data(10)
    f = pyblp.Formulation(formula)
    np.testing.assert_allclose(blpjax.build_matrix(formula, products), pyblp.build_matrix(f, products), rtol=1e-13)
    np.testing.assert_allclose(
        blpjax.build_blp_instruments(formula, products),
        pyblp.build_blp_instruments(f, products),
        rtol=1e-12,
        atol=1e-12,
    )
    for version in ("local", "quadratic"):
        for interact in (False, True):
            np.testing.assert_allclose(
                blpjax.build_differentiation_instruments(formula, products, version, interact),
                pyblp.build_differentiation_instruments(f, products, version, interact),
                rtol=1e-12,
                atol=1e-12,
                err_msg=f"{version}, interact={interact}",
            )
