"""Near-singular matrices: pseudo-inverses as PyBLP (``options.pseudo_inverses``), with a warning naming them.

PyBLP's Nevo tutorial with a full Σ and product-rule integration (5 nodes per dimension) has a
numerically singular G'WG at its estimate (recorded below, evaluated by PyBLP in the test); inverting it as is gave a price-coefficient SE of 34 where
PyBLP reports 4.4. At PyBLP's (one-step) estimate and its weighting matrix, blpjax's objective, estimates of
β and standard errors must equal PyBLP's, and the singular matrix must be reported.
"""

import numpy as np
import pandas as pd
import pytest

import blpjax
from blpjax.internal import results_at

pyblp = pytest.importorskip("pyblp")
pyblp.options.verbose = False


#: PyBLP's one-step estimate of Σ from Σ₀ = ones (BFGS, gtol 1e-5; 100 s to reproduce, so it is an input here):
#: G'WG is numerically singular at it
SIGMA = np.array(
    [
        [-8.7354171265063207e-01, 0.0, 0.0, 0.0],
        [1.3306390148501663e01, 3.7982746768474107e00, 0.0, 0.0],
        [-1.2526405521560033e-01, -4.8886484005983083e-02, 1.5185711064121726e-09, 0.0],
        [3.9572798602177439e-01, -2.0064165796098851e-01, -3.0444660405809107e-08, 2.1726761692256522e-08],
    ]
)


@pytest.mark.slow
def test_nevo_full_sigma_product_rule_standard_errors_match_pyblp():
    products = pd.read_csv(pyblp.data.NEVO_PRODUCTS_LOCATION)
    formulations = (
        pyblp.Formulation("0 + prices", absorb="C(product_ids)"),
        pyblp.Formulation("1 + prices + sugar + mushy"),
    )
    theirs = pyblp.Problem(formulations, products, integration=pyblp.Integration("product", size=5)).solve(
        sigma=SIGMA, method="1s", optimization=pyblp.Optimization("return")
    )
    problem = blpjax.Problem(
        products,
        linear=("prices",),
        nonlinear=("1", "prices", "sugar", "mushy"),
        absorb=("product_ids",),
        integration=blpjax.Integration("product", 5),
    )
    with pytest.warns(blpjax.BLPNumericalWarning, match=r"G'WG .* condition number"):
        ours = results_at(
            problem, np.asarray(theirs.sigma), W=np.asarray(theirs.W)[_order(problem)][:, _order(problem)]
        )
    np.testing.assert_allclose(ours.objective, float(theirs.objective), rtol=1e-6)
    np.testing.assert_allclose(ours.beta.to_numpy(), np.asarray(theirs.beta).ravel(), rtol=1e-6)
    their_se = np.r_[np.asarray(theirs.sigma_se)[np.tril_indices(4)], np.asarray(theirs.beta_se).ravel()]
    np.testing.assert_allclose(ours.parameters["se"].to_numpy(), their_se, rtol=1e-4)
    assert 3 < ours.beta_se["prices"] < 6  # PyBLP's 4.4, not the 34 an inverse of the singular matrix gives


def _order(problem):
    """blpjax's instrument order (exogenous X1 first, then demand_instruments) in PyBLP's (excluded first)."""
    names = list(problem.index.z_names)
    excluded = [n for n in names if n.startswith("demand_instruments")]
    exogenous = [n for n in names if n not in excluded]
    pyblp_order = excluded + exogenous
    return np.asarray([pyblp_order.index(n) for n in names])
