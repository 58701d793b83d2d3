"""Merger simulation: blpjax against PyBLP on the same data and parameters, in one process.

Usage::

    python benchmarks/merger.py --problem nevo --repeats 5
    python benchmarks/merger.py --problem all

At the case's published estimates (no optimisation: PyBLP's ``Optimization('return')``, blpjax's
``ScipyOptimizer('return')``; ``compare_pyblp.py`` defines the problems), both libraries compute the
merger simulation a user runs after estimation: marginal costs from the first-order conditions, the
post-merger Bertrand–Nash prices in every market (ζ-markup iteration, tolerance 1e-12 on PyBLP's
|Λ|-weighted criterion, both), shares and consumer surplus at those prices. PyBLP runs with one BLAS
thread. For blpjax the first call (compilation included) and the median of ``--repeats`` warm calls are
timed; blpjax's delta-method standard errors of the price changes (exact derivatives through δ(θ),
costs and the equilibrium, which PyBLP does not offer) are timed too. The script checks that the two
libraries' prices agree and writes ``benchmarks/results/merger_<problem>.json``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare_pyblp import blp_case, device_info, nevo_case, versions  # noqa: E402

MERGERS = {"nevo": (2, 1), "blp": (19, 18)}  # (firm that disappears, firm that absorbs it)


def run(case_fn, repeats: int) -> dict:
    import pyblp

    import blpjax

    pyblp.options.verbose = False
    case = case_fn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp = case.pyblp_problem()
        bp = case.blpjax_problem()
    sigma, pi = case.pyblp_solve["sigma"], case.pyblp_solve["pi"]
    theirs = pp.solve(sigma, pi, method="1s", optimization=pyblp.Optimization("return"))
    ours = bp.solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    products = bp.product_data
    gone, into = MERGERS[case.name]
    merged = products.firm_ids.replace(gone, into)
    merged_column = merged.to_numpy()[:, None]

    def pyblp_merger():
        costs = theirs.compute_costs()
        prices = theirs.compute_prices(firm_ids=merged_column, costs=costs)
        shares = theirs.compute_shares(prices)
        surplus = theirs.compute_consumer_surpluses(prices)
        return prices, shares, surplus

    def blpjax_merger():
        costs = ours.compute_costs()
        prices = ours.compute_prices(firm_ids=merged, costs=costs)
        shares = ours.compute_shares(prices)
        surplus = ours.compute_consumer_surpluses(prices)
        return prices, shares, surplus

    t = time.perf_counter()
    p_theirs, _, cs_theirs = pyblp_merger()
    pyblp_s = time.perf_counter() - t
    t = time.perf_counter()
    p_ours, _, _ = blpjax_merger()
    first_s = time.perf_counter() - t
    warm = []
    for _ in range(repeats):
        t = time.perf_counter()
        blpjax_merger()
        warm.append(time.perf_counter() - t)
    t = time.perf_counter()
    se = ours.compute_prices(firm_ids=merged, se=True)
    se_first_s = time.perf_counter() - t
    t = time.perf_counter()
    ours.compute_prices(firm_ids=merged, se=True)
    se_warm_s = time.perf_counter() - t
    diff = np.max(np.abs(p_ours.to_numpy() - p_theirs.ravel()) / np.abs(p_theirs.ravel()))
    run_s = statistics.median(warm)
    return {
        "problem": case.name,
        "merger": f"firm {gone} joins firm {into}",
        "markets": int(len(np.unique(products.market_ids))),
        "products": int(len(products)),
        "pyblp_s": pyblp_s,
        "blpjax_first_s": first_s,
        "blpjax_run_s": run_s,
        "speedup_warm": pyblp_s / run_s,
        "speedup_cold": pyblp_s / first_s,
        "blpjax_delta_method_first_s": se_first_s,
        "blpjax_delta_method_warm_s": se_warm_s,
        "max_rel_price_diff": float(diff),
        "mean_price_change_pct": float(100 * np.mean(p_ours.to_numpy() / products.prices.to_numpy() - 1)),
        "median_se_of_price": float(np.median(se["se"])),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", choices=("nevo", "blp", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    cases = {"nevo": nevo_case, "blp": blp_case}
    names = list(cases) if args.problem == "all" else [args.problem]
    for name in names:
        load = os.getloadavg()[0]
        out = run(cases[name], args.repeats)
        out.update(
            device=device_info(),
            versions=versions(),
            load_average_1min=[round(load, 2), round(os.getloadavg()[0], 2)],
            date=datetime.datetime.now().isoformat(timespec="seconds"),
        )
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / f"merger_{name}.json").write_text(json.dumps(out, indent=2))
        print(
            f"{name}: PyBLP {out['pyblp_s']:.3f} s, blpjax first {out['blpjax_first_s']:.3f} s / warm "
            f"{out['blpjax_run_s']:.4f} s -> {out['speedup_warm']:.1f}x warm, {out['speedup_cold']:.1f}x cold; "
            f"delta-method SEs {out['blpjax_delta_method_first_s']:.2f} s first / "
            f"{out['blpjax_delta_method_warm_s']:.3f} s warm; prices agree to {out['max_rel_price_diff']:.1e}; "
            f"load {out['load_average_1min']}"
        )


if __name__ == "__main__":
    main()
