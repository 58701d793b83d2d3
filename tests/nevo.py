"""PyBLP's Nevo cereal tutorial for both libraries: data, the published estimates, and the two problems."""

import numpy as np
import pandas as pd
import pytest

import blpjax

NEVO_SIGMA = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
NEVO_PI = np.array(
    [[5.4819, 0, 0.2037, 0], [15.8935, -1.2000, 0, 2.6342], [-0.2506, 0, 0.0511, 0], [1.2650, 0, -0.8091, 0]]
)
DEMOGRAPHICS = ("income", "income_squared", "age", "child")


def nevo_data(markets: int | None = None):
    """(pyblp, products, agents), optionally the first ``markets`` markets only; skips without PyBLP."""
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    products = pd.read_csv(pyblp.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(pyblp.data.NEVO_AGENTS_LOCATION)
    if markets is not None:
        keep = products.market_ids.unique()[:markets]
        products = products[products.market_ids.isin(keep)].reset_index(drop=True)
        agents = agents[agents.market_ids.isin(keep)].reset_index(drop=True)
    return pyblp, products, agents


def nevo_problems(pyblp, products, agents):
    """(PyBLP's Problem, blpjax's Problem) of the tutorial's specification on these data."""
    pp = pyblp.Problem(
        (pyblp.Formulation("0 + prices", absorb="C(product_ids)"), pyblp.Formulation("1 + prices + sugar + mushy")),
        products,
        pyblp.Formulation("0 + " + " + ".join(DEMOGRAPHICS)),
        agents,
    )
    bp = blpjax.Problem(
        products,
        ("prices",),
        ("1", "prices", "sugar", "mushy"),
        absorb=("product_ids",),
        agent_data=agents,
        demographics=DEMOGRAPHICS,
    )
    return pp, bp
