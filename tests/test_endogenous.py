"""Which X1 columns are endogenous: prices, every column that depends on prices (``price_derivatives``), and declared
ones (``endogenous=``); none of them is its own instrument. Checked by closed forms: plain-logit 2SLS by hand, and a
column of −prices estimating −β_prices."""

import numpy as np
import pandas as pd
import pytest

import blpjax


@pytest.fixture(scope="module")
def products():
    pyblp = pytest.importorskip("pyblp")
    df = pd.read_csv(pyblp.data.NEVO_PRODUCTS_LOCATION)
    df["neg_prices"] = -df["prices"]
    return df


def _two_stage_least_squares(df, endogenous, exogenous, excluded):
    """β of the plain logit by 2SLS by hand: y = log(s/s0), X = [exogenous, endogenous], Z = [exogenous, excluded]."""
    s0 = 1 - df.groupby("market_ids")["shares"].transform("sum")
    y = np.log(df["shares"] / s0).to_numpy()
    column = lambda c: np.ones(len(df)) if c == "1" else df[c].to_numpy()  # noqa: E731
    X = np.column_stack([column(c) for c in exogenous + endogenous])
    Z = np.column_stack([column(c) for c in exogenous + excluded])
    P = Z @ np.linalg.solve(Z.T @ Z, Z.T)
    return np.linalg.solve(X.T @ P @ X, X.T @ P @ y)


def test_a_column_of_negative_prices_is_endogenous(products):
    """With price_derivatives={'neg_prices': -1}, −prices in X1 is endogenous (it used to instrument itself): the same
    fit as prices, with β negated."""
    prices = blpjax.Problem(products, ("1", "prices", "sugar")).solve(method="1s")
    negated = blpjax.Problem(products, ("1", "neg_prices", "sugar"), price_derivatives={"neg_prices": -1}).solve(
        method="1s"
    )
    np.testing.assert_allclose(negated.beta["neg_prices"], -prices.beta["prices"], rtol=1e-10)
    np.testing.assert_allclose(negated.objective, prices.objective, rtol=1e-10)
    excluded = [f"demand_instruments{k}" for k in range(20)]
    expected = _two_stage_least_squares(products, ["prices"], ["1", "sugar"], excluded)
    np.testing.assert_allclose(prices.beta[["1", "sugar", "prices"]].to_numpy(), expected, rtol=1e-8)


def test_a_declared_endogenous_column_is_instrumented(products):
    """endogenous=('sugar',): sugar is no longer its own instrument; β is 2SLS by hand with sugar endogenous."""
    results = blpjax.Problem(products, ("1", "prices", "sugar"), endogenous=("sugar",)).solve(method="1s")
    excluded = [f"demand_instruments{k}" for k in range(20)]
    expected = _two_stage_least_squares(products, ["prices", "sugar"], ["1"], excluded)
    np.testing.assert_allclose(results.beta[["1", "prices", "sugar"]].to_numpy(), expected, rtol=1e-8)
    default = blpjax.Problem(products, ("1", "prices", "sugar")).solve(method="1s")
    assert abs(default.beta["sugar"] - results.beta["sugar"]) > 1e-6  # the declaration changes the estimate


def test_endogenous_columns_are_checked(products):
    with pytest.raises(blpjax.BLPSpecificationError, match="not columns of the linear characteristics"):
        blpjax.Problem(products, ("1", "prices"), endogenous=("sugar",))
    with pytest.raises(blpjax.BLPSpecificationError, match="not the string"):
        blpjax.Problem(products, ("1", "prices", "sugar"), endogenous="sugar")
    few = products.drop(columns=[f"demand_instruments{k}" for k in range(1, 20)])
    with pytest.raises(blpjax.BLPDataError, match="too few instruments.*sugar"):
        blpjax.Problem(few, ("1", "prices", "sugar"), endogenous=("sugar",))
