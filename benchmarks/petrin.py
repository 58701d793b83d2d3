"""PyBLP's Petrin (2002) micro-moments tutorial problem, specified for both PyBLP and blpjax.

Demand: X1 = 1 + hpwt + space + air + mpd + fwd + mi + sw + su + pv + pgnp + trend + trend2,
X2 = 1 + (−prices) + hpwt + space + air + mpd + fwd + mi + sw + su + pv, demographics
1, low/income, mid/income, high/income, log(fs)·fv, age, fs, mid, high (13 markets, 1,000 agents each).
Supply: log marginal costs on 1 + log(hpwt) + log(wt) + log(mpg) + air + fwd + trend·(jp + eu) + log(q).
Ten CEX micro moments, each a ratio of two parts (E[age | minivan], ..., E[new car | high income]).
Clustered W and SEs by product, 2-step GMM, BFGS gtol 1e-4, SQUAREM atol 1e-13.

blpjax takes column names, so the transformed columns are built here once for it: ``neg_prices``
(with ``price_derivatives={"neg_prices": -1}``), the X3 logs and interactions, the demographics, and
one node column per X2 characteristic (PyBLP assigns its 6 node columns to the characteristics with a
nonzero Σ diagonal, in order; the others get zeros). PyBLP's objective at its optimum: 182.7195.

Used by ``compare_pyblp.py --problems petrin`` and by ``tests/test_supply.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

X1 = ("1", "hpwt", "space", "air", "mpd", "fwd", "mi", "sw", "su", "pv", "pgnp", "trend", "trend2")
X2 = ("1", "neg_prices", "hpwt", "space", "air", "mpd", "fwd", "mi", "sw", "su", "pv")
X3 = ("1", "log_hpwt", "log_wt", "log_mpg", "air", "fwd", "trend", "jp", "eu", "jp_trend", "eu_trend", "log_q")
DEMOGRAPHICS = ("one", "low_income", "mid_income", "high_income", "logfs_fv", "age", "fs", "mid", "high")

SIGMA = np.diag([3.23, 0, 4.43, 0.46, 0.01, 2.58, 4.42, 0, 0, 0, 0])
PI = np.zeros((11, 9))
PI[1, 1:4] = [7.52, 31.13, 34.49]
PI[7:11, 4] = [0.57, 0.28, 0.31, 0.42]

PYBLP_FORMULATIONS = (
    "1 + hpwt + space + air + mpd + fwd + mi + sw + su + pv + pgnp + trend + trend2",
    "1 + I(-prices) + hpwt + space + air + mpd + fwd + mi + sw + su + pv",
    "1 + log(hpwt) + log(wt) + log(mpg) + air + fwd + trend * (jp + eu) + log(q)",
)
PYBLP_AGENT_FORMULATION = (
    "1 + I(low / income) + I(mid / income) + I(high / income) + I(log(fs) * fv) + age + fs + mid + high"
)
OBSERVATIONS = 29125
# (name, value, numerator: (demographic, X2 column or "inside"), denominator: (demographic, X2 column or ...))
MOMENTS = [
    ("E[age_i | mi_j]", 0.783, ("age", "mi"), ("one", "mi")),
    ("E[age_i | sw_j]", 0.730, ("age", "sw"), ("one", "sw")),
    ("E[age_i | su_j]", 0.740, ("age", "su"), ("one", "su")),
    ("E[age_i | pv_j]", 0.652, ("age", "pv"), ("one", "pv")),
    ("E[fs_i | mi_j]", 3.86, ("fs", "mi"), ("one", "mi")),
    ("E[fs_i | sw_j]", 3.17, ("fs", "sw"), ("one", "sw")),
    ("E[fs_i | su_j]", 2.97, ("fs", "su"), ("one", "su")),
    ("E[fs_i | pv_j]", 3.47, ("fs", "pv"), ("one", "pv")),
    ("E[1{j > 0} | mid_i]", 0.0794, ("mid", "inside"), ("mid", "all")),
    ("E[1{j > 0} | high_i]", 0.1581, ("high", "inside"), ("high", "all")),
]


def load():
    """(product_data, agent_data) as bundled with PyBLP."""
    import pyblp

    return pd.read_csv(pyblp.data.PETRIN_PRODUCTS_LOCATION), pd.read_csv(pyblp.data.PETRIN_AGENTS_LOCATION)


def blpjax_data(products: pd.DataFrame, agents: pd.DataFrame, sigma=SIGMA):
    """Columns blpjax names directly: the transformed X2/X3 columns, demographics and nodes."""
    products = products.copy()
    products["neg_prices"] = -products["prices"]
    for c in ("hpwt", "wt", "mpg", "q"):
        products[f"log_{c}"] = np.log(products[c])
    products["jp_trend"] = products["jp"] * products["trend"]
    products["eu_trend"] = products["eu"] * products["trend"]
    out = agents[["market_ids", "weights"]].copy()
    out["one"] = 1.0
    for c in ("low", "mid", "high"):
        out[f"{c}_income"] = agents[c] / agents["income"]
    out["logfs_fv"] = np.log(agents["fs"]) * agents["fv"]
    for c in ("age", "fs", "mid", "high"):
        out[c] = agents[c].astype(float)
    nonzero = np.flatnonzero(np.diag(sigma) != 0)
    for k in range(len(X2)):
        out[f"nodes{k}"] = 0.0
    for source, k in enumerate(nonzero):
        out[f"nodes{k}"] = agents[f"nodes{source}"].to_numpy()
    return products, out


def blpjax_problem(products=None, agents=None, costs_type: str = "log"):
    import blpjax

    if products is None:
        products, agents = load()
    products, agents = blpjax_data(products, agents)
    return blpjax.Problem(
        products,
        linear=X1,
        nonlinear=X2,
        agent_data=agents,
        demographics=DEMOGRAPHICS,
        costs=X3,
        costs_type=costs_type,
        price_derivatives={"neg_prices": -1.0},
    )


def blpjax_micro_moments(moments=MOMENTS):
    import jax.numpy as jnp

    import blpjax

    dataset = blpjax.MicroDataset("CEX", OBSERVATIONS, lambda m: jnp.ones((m.I, 1 + m.J)))

    def values(demographic, column):
        def fn(m):
            d = m.agents[demographic] if demographic != "one" else jnp.ones(m.I)
            if column == "inside":
                x = jnp.r_[0.0, jnp.ones(m.J)]
            elif column == "all":
                x = jnp.ones(1 + m.J)
            else:
                x = jnp.r_[0.0, m.products[column]]
            return jnp.outer(d, x)

        return fn

    parts: dict[tuple, object] = {}

    def part(key):
        if key not in parts:
            parts[key] = blpjax.MicroPart(f"E[{key[0]} * {key[1]}]", dataset, values(*key))
        return parts[key]

    return [
        blpjax.MicroMoment(name, value, [part(num), part(den)], lambda v: v[0] / v[1])
        for name, value, num, den in moments
    ]


def pyblp_problem(products=None, agents=None):
    import pyblp

    if products is None:
        products, agents = load()
    return pyblp.Problem(
        tuple(pyblp.Formulation(f) for f in PYBLP_FORMULATIONS),
        products,
        pyblp.Formulation(PYBLP_AGENT_FORMULATION),
        agents,
        costs_type="log",
    )


def pyblp_micro_moments(moments=MOMENTS):
    import pyblp

    dataset = pyblp.MicroDataset("CEX", OBSERVATIONS, lambda t, p, a: np.ones((a.size, 1 + p.size)))
    d_index = {"one": 0, "age": 5, "fs": 6, "mid": 7, "high": 8}
    x_index = {"mi": 7, "sw": 8, "su": 9, "pv": 10}

    def values(demographic, column):
        def fn(t, p, a):
            d = a.demographics[:, d_index[demographic]]
            if column == "inside":
                x = np.r_[0, p.X2[:, 0]]
            elif column == "all":
                x = np.r_[1, p.X2[:, 0]]
            else:
                x = np.r_[0, p.X2[:, x_index[column]]]
            return np.outer(d, x)

        return fn

    parts: dict[tuple, object] = {}

    def part(key):
        if key not in parts:
            parts[key] = pyblp.MicroPart(f"E[{key[0]} * {key[1]}]", dataset, values(*key))
        return parts[key]

    return [
        pyblp.MicroMoment(
            name,
            value,
            [part(num), part(den)],
            compute_value=lambda v: v[0] / v[1],
            compute_gradient=lambda v: [1 / v[1], -v[0] / v[1] ** 2],
        )
        for name, value, num, den in moments
    ]
