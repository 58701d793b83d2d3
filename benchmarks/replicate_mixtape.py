"""Replicate the Mixtape Sessions BLP course exercises with blpjax (and optionally check against PyBLP).

The course data (``products.csv``, ``demographics.csv``) are not part of the repository; put them in
``data/mixtape/`` (git-ignored) or point ``--data`` at them.

Usage::

    python benchmarks/replicate_mixtape.py                       # JSON to stdout
    python benchmarks/replicate_mixtape.py --out results.json    # JSON to a file
    python benchmarks/replicate_mixtape.py --check-pyblp         # also run PyBLP 1.3.0, print differences

The output is one flat JSON dict. Keys are ``<exercise>.<specification>.<quantity>``, e.g.
``ex1.iv.price_se_clustered``; scalars are floats and per-product quantities are lists in data order.
Each exercise is a pair of functions (blpjax, PyBLP) registered in :data:`EXERCISES`, so later exercises
only add a pair and an entry.

Exercise 1 (pure logit), following the course:

* ``ols``: OLS of log(s_j/s_0) on 1 + mushy + prices with HC0 standard errors, written as one-step GMM
  with prices as their own instrument (robust GMM standard errors equal HC0);
* ``fe``: the same with market and product fixed effects absorbed (X1 = prices);
* ``iv``: market and product fixed effects with ``price_instrument`` as the excluded instrument, robust
  and product-clustered standard errors;
* ``cf``: with the IV estimates, halve the price of F1B04 in market C01Q2 holding ξ fixed and report the
  percent change in every product's share in that market;
* ``elasticities``: own-price elasticities of the products of C01Q2 (IV estimates).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "mixtape"

#: Market size is this many servings per resident per quarter (the course's assumption).
SERVINGS_PER_CAPITA = 90
#: The market and product of the Exercise 1 counterfactual (halve this product's price).
CF_MARKET, CF_PRODUCT = "C01Q2", "F1B04"


# --- data -------------------------------------------------------------------------------------------------
def load_product_data(data_dir: str | Path = DEFAULT_DATA) -> pd.DataFrame:
    """Read ``products.csv`` and build PyBLP-convention product data, in the file's row order.

    Columns: ``market_ids``, ``product_ids``, ``firm_ids`` (first two characters of the product id),
    ``shares`` (servings sold over the market size 90 × city population), ``prices`` (price per
    serving), ``mushy``, ``price_instrument``, ``market_size`` and ``clustering_ids`` (= product ids,
    used only by clustered standard errors). No ``demand_instruments*`` columns: each specification
    chooses its own (see :func:`with_instruments`).
    """
    raw = pd.read_csv(Path(data_dir) / "products.csv")
    market_size = SERVINGS_PER_CAPITA * raw["city_population"]
    return pd.DataFrame(
        {
            "market_ids": raw["market"],
            "product_ids": raw["product"],
            "firm_ids": raw["product"].str[:2],
            "shares": raw["servings_sold"] / market_size,
            "prices": raw["price_per_serving"],
            "mushy": raw["mushy"],
            "price_instrument": raw["price_instrument"],
            "market_size": market_size,
            "clustering_ids": raw["product"],
        }
    )


def with_instruments(product_data: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """A copy of ``product_data`` with excluded instruments ``demand_instruments0, 1, ...`` = ``columns``."""
    df = product_data.drop(columns=[c for c in product_data if c.startswith("demand_instruments")])
    return df.assign(**{f"demand_instruments{i}": df[c] for i, c in enumerate(columns)})


def counterfactual_prices(product_data: pd.DataFrame, market=CF_MARKET, product=CF_PRODUCT) -> np.ndarray:
    """Prices (row order) with ``product``'s price in ``market`` halved, everything else unchanged."""
    prices = product_data["prices"].to_numpy(dtype=float).copy()
    row = (product_data["market_ids"] == market) & (product_data["product_ids"] == product)
    if row.sum() != 1:
        raise ValueError(f"expected exactly one row for product {product!r} in market {market!r}.")
    prices[row.to_numpy()] /= 2
    return prices


# --- exercise 1: pure logit -------------------------------------------------------------------------------
FE = ("market_ids", "product_ids")


def exercise1(product_data: pd.DataFrame) -> dict:
    """Exercise 1 (pure logit) with blpjax; see the module docstring for the specifications."""
    import blpjax

    out: dict = {}
    ols_data = with_instruments(product_data, "prices")
    ols = blpjax.Problem(ols_data, linear=("1", "mushy", "prices")).solve(method="1s", se_type="robust")
    out["ex1.ols.price"], out["ex1.ols.price_se"] = ols.beta["prices"], ols.beta_se["prices"]

    fe = blpjax.Problem(ols_data, linear=("prices",), absorb=FE).solve(method="1s", se_type="robust")
    out["ex1.fe.price"], out["ex1.fe.price_se"] = fe.beta["prices"], fe.beta_se["prices"]

    iv_problem = blpjax.Problem(
        with_instruments(product_data, "price_instrument"), linear=("prices",), absorb=FE
    )
    iv = iv_problem.solve(method="1s", se_type="robust")
    iv_clustered = iv_problem.solve(method="1s", se_type="clustered")
    out["ex1.iv.price"], out["ex1.iv.price_se"] = iv.beta["prices"], iv.beta_se["prices"]
    out["ex1.iv.price_se_clustered"] = iv_clustered.beta_se["prices"]

    cf = iv.counterfactual(counterfactual_prices(product_data), name="prices")
    out["ex1.cf.pct_change"] = cf.loc[cf["market_ids"] == CF_MARKET, "pct_change"].to_numpy()
    out["ex1.elasticities.own"] = np.diag(iv.elasticity_matrix(CF_MARKET).to_numpy())
    return out


def exercise1_pyblp(product_data: pd.DataFrame) -> dict:
    """Exercise 1 with PyBLP 1.3.0 (fixed effects absorbed exactly, by dummy-variable regression)."""
    import pyblp

    pyblp.options.verbose = False
    absorbed = pyblp.Formulation("0 + prices", absorb="C(market_ids) + C(product_ids)", absorb_method="dummy")

    out: dict = {}
    ols_data = with_instruments(product_data, "prices")
    ols = pyblp.Problem(pyblp.Formulation("1 + mushy + prices"), ols_data).solve(
        method="1s", se_type="robust"
    )
    out["ex1.ols.price"], out["ex1.ols.price_se"] = _pyblp_beta(ols, "prices")

    fe = pyblp.Problem(absorbed, ols_data).solve(method="1s", se_type="robust")
    out["ex1.fe.price"], out["ex1.fe.price_se"] = _pyblp_beta(fe, "prices")

    iv_problem = pyblp.Problem(absorbed, with_instruments(product_data, "price_instrument"))
    iv = iv_problem.solve(method="1s", se_type="robust")
    iv_clustered = iv_problem.solve(method="1s", se_type="clustered")
    out["ex1.iv.price"], out["ex1.iv.price_se"] = _pyblp_beta(iv, "prices")
    out["ex1.iv.price_se_clustered"] = _pyblp_beta(iv_clustered, "prices")[1]

    in_market = (product_data["market_ids"] == CF_MARKET).to_numpy()
    shares = product_data["shares"].to_numpy()[in_market]
    new_shares = iv.compute_shares(prices=counterfactual_prices(product_data)).ravel()[in_market]
    out["ex1.cf.pct_change"] = 100 * (new_shares / shares - 1)
    out["ex1.elasticities.own"] = np.diag(iv.compute_elasticities(market_id=CF_MARKET))
    return out


def _pyblp_beta(results, name: str) -> tuple[float, float]:
    """PyBLP's estimate and standard error of the linear parameter ``name``."""
    k = list(results.beta_labels).index(name)
    return float(results.beta[k, 0]), float(results.beta_se[k, 0])


# --- driver -----------------------------------------------------------------------------------------------
#: exercise name → (blpjax implementation, PyBLP implementation); each maps product data to flat results.
EXERCISES: dict[str, tuple[Callable[[pd.DataFrame], dict], Callable[[pd.DataFrame], dict]]] = {
    "ex1": (exercise1, exercise1_pyblp),
}


def to_json(results: dict) -> dict:
    """Plain floats and lists of floats (JSON-serialisable, in insertion order)."""
    return {k: np.asarray(v, dtype=float).tolist() for k, v in results.items()}


def max_relative_differences(ours: dict, reference: dict) -> dict[str, float]:
    """Per key, max over elements of |ours − reference| / |reference| (keys of ``ours``)."""
    diffs = {}
    for key, value in ours.items():
        a, b = np.atleast_1d(np.asarray(value, float)), np.atleast_1d(np.asarray(reference[key], float))
        if a.shape != b.shape:
            raise ValueError(f"{key}: blpjax shape {a.shape} vs PyBLP shape {b.shape}.")
        diffs[key] = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), np.finfo(float).tiny)))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="folder with products.csv (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here (default: stdout)")
    parser.add_argument(
        "--exercises",
        nargs="+",
        choices=sorted(EXERCISES),
        default=sorted(EXERCISES),
        help="exercises to run",
    )
    parser.add_argument(
        "--check-pyblp",
        action="store_true",
        help="also run the specifications in PyBLP and print max relative differences",
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=1e-8,
        help="--check-pyblp fails above this difference (default: %(default)g)",
    )
    args = parser.parse_args(argv)

    product_data = load_product_data(args.data)
    results: dict = {}
    for name in args.exercises:
        results.update(EXERCISES[name][0](product_data))
    text = json.dumps(to_json(results), indent=2)
    if args.out is None:
        print(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")

    if not args.check_pyblp:
        return 0
    reference: dict = {}
    for name in args.exercises:
        reference.update(EXERCISES[name][1](product_data))
    diffs = max_relative_differences(results, reference)
    width = max(map(len, diffs))
    print("max relative difference blpjax vs PyBLP:", file=sys.stderr)
    for key, d in diffs.items():
        print(f"  {key:<{width}}  {d:.3e}{'  FAIL' if d > args.tol else ''}", file=sys.stderr)
    return int(max(diffs.values()) > args.tol)


if __name__ == "__main__":
    sys.exit(main())
