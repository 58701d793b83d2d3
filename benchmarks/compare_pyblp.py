"""Time blpjax against PyBLP on the same problems, data, nodes, starting values and optimiser.

Usage::

    python benchmarks/compare_pyblp.py --problem nevo            # one problem
    python benchmarks/compare_pyblp.py --problem all --repeats 5 # every problem

For each problem the script runs PyBLP 1.3.0 (one BLAS thread) and blpjax in the same process,
checks that they agree, and writes ``benchmarks/results/<problem>.json``:

* ``pyblp_s``: wall time of PyBLP's ``Problem.solve`` (one run; building the ``Problem`` is timed
  separately as ``pyblp_setup_s``);
* ``blpjax_first_s``: the first ``Problem.solve`` of blpjax in this process, compilation included;
* ``blpjax_run_s``: median of ``--repeats`` further solves of the same ``Problem`` object (warm:
  the compiled programs are reused); ``blpjax_compile_s`` = first − warm;
* ``speedup_warm`` = pyblp_s / blpjax_run_s, ``speedup_cold`` = pyblp_s / blpjax_first_s;
* objectives, estimates of both (free nonlinear parameters in PyBLP's order, then β) and
  ``max_rel_param_diff`` = max_k |θ_blpjax,k − θ_pyblp,k| / |θ_pyblp,k|;
* objective evaluations and contraction statistics of both.

Both solves include what each library computes after the optimiser stops (standard errors, the
updated weighting matrix; blpjax also the exact Hessian). PyBLP runs single-threaded (BLAS pinned to
one thread below, before NumPy is imported); XLA's CPU backend is not governed by these variables
and may use every core.

Problems (see ``CASES``): ``nevo`` (PyBLP's Nevo cereal tutorial), ``blp`` (PyBLP's BLP automobile
tutorial, demand side only) and ``mixtape_ex2`` (Mixtape Sessions BLP Exercise 2, needs the course
data in ``data/mixtape/``; skipped with a message when it is missing).
"""

from __future__ import annotations

import os

# PyBLP single-threaded: must happen before NumPy (and its BLAS) is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
MIXTAPE_DATA = HERE.parent / "data" / "mixtape"


# --- problem definitions ----------------------------------------------------------------------------------
@dataclass
class Case:
    """One problem, specified for both libraries.

    ``pyblp_problem`` / ``blpjax_problem`` build the problem objects (timed as setup);
    ``pyblp_solve`` / ``blpjax_solve`` are the keyword arguments of ``solve``.
    """

    name: str
    description: str
    pyblp_problem: Callable[[], object]
    pyblp_solve: dict
    blpjax_problem: Callable[[], object]
    blpjax_solve: dict
    settings: dict = field(default_factory=dict)


def pyblp_default_sigma_bounds(sigma) -> tuple[np.ndarray, np.ndarray]:
    """PyBLP's default Σ bounds with a bounded optimiser: diagonal ≥ min(0, start), else free.

    Passed explicitly to both libraries (blpjax's default is unbounded) so both optimisers see
    the same feasible set.
    """
    sigma = np.asarray(sigma, float)
    lower = np.full(sigma.shape, -np.inf)
    np.fill_diagonal(lower, np.minimum(0, np.diag(sigma)))
    return lower, np.full(sigma.shape, np.inf)


def nevo_case() -> Case:
    import pyblp

    import blpjax

    products = pd.read_csv(pyblp.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(pyblp.data.NEVO_AGENTS_LOCATION)
    sigma = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
    pi = np.array(
        [[5.4819, 0, 0.2037, 0], [15.8935, -1.2000, 0, 2.6342], [-0.2506, 0, 0.0511, 0], [1.2650, 0, -0.8091, 0]]
    )
    demographics = ("income", "income_squared", "age", "child")

    def pyblp_problem():
        return pyblp.Problem(
            (
                pyblp.Formulation("0 + prices", absorb="C(product_ids)"),
                pyblp.Formulation("1 + prices + sugar + mushy"),
            ),
            products,
            pyblp.Formulation("0 + " + " + ".join(demographics)),
            agents,
        )

    def blpjax_problem():
        return blpjax.Problem(
            products,
            linear=("prices",),
            nonlinear=("1", "prices", "sugar", "mushy"),
            absorb=("product_ids",),
            agent_data=agents,
            demographics=demographics,
        )

    return Case(
        "nevo",
        "PyBLP Nevo cereal tutorial: X1 = prices (product FE absorbed), X2 = 1 + prices + sugar + mushy, "
        "4 demographics, 94 markets x 20 agents, 1-step GMM, BFGS gtol 1e-5 (unbounded)",
        pyblp_problem,
        dict(sigma=sigma, pi=pi, method="1s", optimization=pyblp.Optimization("bfgs", {"gtol": 1e-5})),
        blpjax_problem,
        dict(sigma=sigma, pi=pi, method="1s", optimizer=blpjax.ScipyOptimizer("bfgs", gtol=1e-5)),
        dict(method="1s", optimizer="bfgs", gtol=1e-5, bounds="none", expected_objective=4.561514),
    )


def blp_case() -> Case:
    import pyblp

    import blpjax

    products = pd.read_csv(pyblp.data.BLP_PRODUCTS_LOCATION)
    agents = pd.read_csv(pyblp.data.BLP_AGENTS_LOCATION)
    sigma = np.diag([3.612, 0, 4.628, 1.818, 1.050, 2.056])
    pi = np.c_[[0, -43.501, 0, 0, 0, 0]]
    sigma_bounds = pyblp_default_sigma_bounds(sigma)
    x1 = ("1", "hpwt", "air", "mpd", "space")
    x2 = ("1", "prices", "hpwt", "air", "mpd", "space")

    # blpjax takes column names: the transformed demographic gets its own column, and the nodes get
    # one column per X2 characteristic. PyBLP assigns the 5 node columns of the BLP agent data to
    # the characteristics with a nonzero Σ diagonal in order (prices, whose σ is fixed at zero, gets
    # zeros); do the same explicitly.
    bj_agents = agents[["market_ids", "weights"]].copy()
    bj_agents["inv_income"] = 1 / agents["income"]
    nonzero = np.flatnonzero(np.diag(sigma) != 0)
    for k in range(len(x2)):
        bj_agents[f"nodes{k}"] = 0.0
    for source, k in enumerate(nonzero):
        bj_agents[f"nodes{k}"] = agents[f"nodes{source}"].to_numpy()

    def pyblp_problem():
        return pyblp.Problem(
            (pyblp.Formulation(" + ".join(x1)), pyblp.Formulation(" + ".join(x2))),
            products,
            pyblp.Formulation("0 + I(1 / income)"),
            agents,
        )

    def blpjax_problem():
        return blpjax.Problem(products, linear=x1, nonlinear=x2, agent_data=bj_agents, demographics=("inv_income",))

    return Case(
        "blp",
        "PyBLP BLP automobile tutorial, demand side only: X1 = 1 + hpwt + air + mpd + space, "
        "X2 = 1 + prices + hpwt + air + mpd + space, prices x 1/income, the data's 8 demand instruments, "
        "20 markets x 200 agents, 1-step GMM (2SLS weighting matrix), L-BFGS-B gtol 1e-8, "
        "PyBLP's default bounds (diagonal of Sigma >= 0)",
        pyblp_problem,
        dict(
            sigma=sigma,
            pi=pi,
            sigma_bounds=sigma_bounds,
            method="1s",
            optimization=pyblp.Optimization("l-bfgs-b", {"gtol": 1e-8}),
        ),
        blpjax_problem,
        dict(
            sigma=sigma,
            pi=pi,
            sigma_bounds=sigma_bounds,
            method="1s",
            optimizer=blpjax.ScipyOptimizer("l-bfgs-b", gtol=1e-8),
        ),
        dict(method="1s", optimizer="l-bfgs-b", gtol=1e-8, bounds="diag(Sigma) >= 0"),
    )


def mixtape_data(data_dir: Path = MIXTAPE_DATA, draws: int = 1000, seed: int = 0):
    """Product data with Exercise 2's instruments DI0–DI3 as ``demand_instruments0..3``, and agent data.

    Built by :func:`replicate_mixtape.load_exercise2_data` (see there for the instruments and agents).
    """
    sys.path.insert(0, str(HERE))
    from replicate_mixtape import load_exercise2_data, with_instruments

    products, agents = load_exercise2_data(data_dir, draws, seed)
    return with_instruments(products, "DI0", "DI1", "DI2", "DI3"), agents


def mixtape_ex2_case() -> Case | None:
    import pyblp

    import blpjax

    if not ((MIXTAPE_DATA / "products.csv").exists() and (MIXTAPE_DATA / "demographics.csv").exists()):
        print(f"mixtape_ex2: skipped, course data not found in {MIXTAPE_DATA} (products.csv, demographics.csv).")
        return None
    products, agents = mixtape_data()
    sigma = np.diag([0.0, 1.0])
    pi = np.array([[0.2], [1.0]])
    sigma_bounds = pyblp_default_sigma_bounds(sigma)

    def pyblp_problem():
        return pyblp.Problem(
            (
                pyblp.Formulation("0 + prices", absorb="C(market_ids) + C(product_ids)"),
                pyblp.Formulation("0 + mushy + prices"),
            ),
            products,
            pyblp.Formulation("0 + log_income"),
            agents,
        )

    def blpjax_problem():
        return blpjax.Problem(
            products,
            linear=("prices",),
            nonlinear=("mushy", "prices"),
            absorb=("market_ids", "product_ids"),
            agent_data=agents,
            demographics=("log_income",),
        )

    return Case(
        "mixtape_ex2",
        "Mixtape Sessions BLP Exercise 2.5: X1 = prices (market and product FE absorbed), X2 = mushy + prices, "
        "log income interactions, 94 markets x 1000 agents, 4 excluded instruments, 1-step GMM, "
        "trust-constr gtol = xtol = 1e-8, PyBLP's default bounds (sigma_prices >= 0)",
        pyblp_problem,
        dict(
            sigma=sigma,
            pi=pi,
            sigma_bounds=sigma_bounds,
            method="1s",
            optimization=pyblp.Optimization("trust-constr", {"gtol": 1e-8, "xtol": 1e-8}),
        ),
        blpjax_problem,
        dict(
            sigma=sigma,
            pi=pi,
            sigma_bounds=sigma_bounds,
            method="1s",
            optimizer=blpjax.ScipyOptimizer("trust-constr", gtol=1e-8, xtol=1e-8),
        ),
        dict(method="1s", optimizer="trust-constr", gtol=1e-8, xtol=1e-8, bounds="sigma_prices >= 0"),
    )


def mixtape_ex3_case() -> Case | None:
    """Exercise 3.2: three micro moments (buyers' mean log income, second choices) stacked with four IVs."""
    import pyblp

    import blpjax

    if not ((MIXTAPE_DATA / "products.csv").exists() and (MIXTAPE_DATA / "demographics.csv").exists()):
        print(f"mixtape_ex3: skipped, course data not found in {MIXTAPE_DATA} (products.csv, demographics.csv).")
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from replicate_mixtape import EX3_FULL, _ex3_inputs, ex3_micro_moments, ex3_micro_moments_pyblp

    products, agents = _ex3_inputs(MIXTAPE_DATA)
    sigma, pi = EX3_FULL["sigma"], np.asarray(EX3_FULL["pi"], float)
    sigma_bounds = pyblp_default_sigma_bounds(sigma)
    names = EX3_FULL["moments"]

    def pyblp_problem():
        return pyblp.Problem(
            (
                pyblp.Formulation("0 + prices", absorb="C(market_ids) + C(product_ids)"),
                pyblp.Formulation("1 + mushy + prices"),
            ),
            products,
            pyblp.Formulation("0 + log_income"),
            agents,
        )

    def blpjax_problem():
        return blpjax.Problem(
            products,
            linear=("prices",),
            nonlinear=("1", "mushy", "prices"),
            absorb=("market_ids", "product_ids"),
            agent_data=agents,
            demographics=("log_income",),
        )

    return Case(
        "mixtape_ex3",
        "Mixtape Sessions BLP Exercise 3.2: X1 = prices (market and product FE absorbed), X2 = 1 + mushy + prices, "
        "log income interactions, 94 markets x 1000 agents, 4 excluded instruments + 3 micro moments (mean log "
        "income of buyers; second choices: outside good, mushy to mushy) in 2 markets, initial update then 1-step "
        "GMM, trust-constr gtol = xtol = 1e-8, PyBLP's default bounds",
        pyblp_problem,
        dict(
            sigma=sigma,
            pi=pi,
            sigma_bounds=sigma_bounds,
            method="1s",
            optimization=pyblp.Optimization("trust-constr", {"gtol": 1e-8, "xtol": 1e-8}),
            micro_moments=ex3_micro_moments_pyblp(products, names),
        ),
        blpjax_problem,
        dict(
            sigma=sigma,
            pi=pi,
            sigma_bounds=sigma_bounds,
            method="1s",
            optimizer=blpjax.ScipyOptimizer("trust-constr", gtol=1e-8, xtol=1e-8),
            micro_moments=ex3_micro_moments(names),
        ),
        dict(method="1s", optimizer="trust-constr", gtol=1e-8, xtol=1e-8, micro_moments=list(names)),
    )


def petrin_case() -> Case:
    """PyBLP's Petrin (2002) tutorial: supply side (log costs) and ten ratio micro moments, 2-step clustered GMM."""
    import pyblp

    import blpjax

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import petrin

    products, agents = petrin.load()
    tol = 1e-13  # PyBLP's tutorial loosens SQUAREM's tolerance to 1e-13 for this problem
    return Case(
        "petrin",
        "PyBLP Petrin (2002) micro-moments tutorial: X1 = 13 characteristics, X2 = 1 + (-prices) + 9 "
        "characteristics, 9 demographics (income-group price sensitivity, family size x draw), log marginal "
        "costs on 12 characteristics (supply side), 10 CEX ratio micro moments (29,125 observations), 13 markets x "
        "1,000 agents, initial update then 2-step GMM, W and SEs clustered by product, BFGS gtol 1e-4, SQUAREM tol 1e-13",
        lambda: petrin.pyblp_problem(products, agents),
        dict(
            sigma=petrin.SIGMA,
            pi=petrin.PI,
            method="2s",
            optimization=pyblp.Optimization("bfgs", {"gtol": 1e-4}),
            iteration=pyblp.Iteration("squarem", {"atol": tol}),
            se_type="clustered",
            W_type="clustered",
            micro_moments=petrin.pyblp_micro_moments(),
        ),
        lambda: petrin.blpjax_problem(products, agents),
        dict(
            sigma=petrin.SIGMA,
            pi=petrin.PI,
            method="2s",
            optimizer=blpjax.ScipyOptimizer("bfgs", gtol=1e-4),
            contraction=blpjax.ContractionConfig(tol=tol),
            se_type="clustered",
            W_type="clustered",
            micro_moments=petrin.blpjax_micro_moments(),
        ),
        dict(method="2s", optimizer="bfgs", gtol=1e-4, tol=tol, expected_objective=182.7195),
    )


CASES: dict[str, Callable[[], Case | None]] = {
    "nevo": nevo_case,
    "blp": blp_case,
    "mixtape_ex2": mixtape_ex2_case,
    "mixtape_ex3": mixtape_ex3_case,
    "petrin": petrin_case,
}


# --- running ----------------------------------------------------------------------------------------------
def device_info() -> dict:
    import jax

    d = jax.devices()[0]
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    return {
        "platform": d.platform,
        "device_kind": d.device_kind,
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "jax_device_count": jax.device_count(),
    }


def versions() -> dict:
    import jax
    import pyblp
    import scipy

    import blpjax

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "jax": jax.__version__,
        "pyblp": pyblp.__version__,
        "blpjax": blpjax.__version__,
    }


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_case(case: Case, repeats: int) -> dict:
    import pyblp

    pyblp.options.verbose = False
    load_before = os.getloadavg()

    # PyBLP
    pproblem, pyblp_setup_s = _timed(case.pyblp_problem)
    presults, pyblp_s = _timed(lambda: pproblem.solve(**case.pyblp_solve))
    # contraction statistics of a cold start (logit δ) at PyBLP's estimate, comparable to blpjax's
    # (untimed; optimization 'return' evaluates the objective once at the given θ)
    at_estimate = {k: v for k, v in case.pyblp_solve.items() if k not in ("sigma", "pi", "optimization")}
    pcold = pproblem.solve(presults.sigma, presults.pi, optimization=pyblp.Optimization("return"), **at_estimate)

    # blpjax: first solve (compilation included), then warm solves of the same problem object
    bproblem, blpjax_setup_s = _timed(case.blpjax_problem)
    bfirst, blpjax_first_s = _timed(lambda: bproblem.solve(**case.blpjax_solve))
    warm_times, bres = [], bfirst
    for _ in range(repeats):
        bres, t = _timed(lambda: bproblem.solve(**case.blpjax_solve))
        warm_times.append(t)
    blpjax_run_s = statistics.median(warm_times) if warm_times else float("nan")

    # compare estimates, matched by position: free θ (PyBLP order), then β
    p_theta = np.asarray(presults.theta, float).ravel()
    p_beta = np.asarray(presults.beta, float).ravel()
    b_theta = np.asarray(bres.final.theta, float).ravel()
    b_beta = bres.beta.to_numpy(dtype=float)
    if p_theta.shape != b_theta.shape or p_beta.shape != b_beta.shape:
        raise RuntimeError(
            f"{case.name}: parameter shapes differ: PyBLP θ {p_theta.shape} β {p_beta.shape}, "
            f"blpjax θ {b_theta.shape} β {b_beta.shape}"
        )
    p_gamma = np.asarray(presults.gamma, float).ravel() if presults.gamma is not None else np.zeros(0)
    b_gamma = bres.gamma.to_numpy(dtype=float)
    p_all, b_all = np.r_[p_theta, p_beta, p_gamma], np.r_[b_theta, b_beta, b_gamma]
    abs_diff = np.abs(b_all - p_all)
    rel_diff = abs_diff / np.maximum(np.abs(p_all), np.finfo(float).tiny)
    labels = list(bres.labels)
    p_labels = [str(l) for l in presults.theta_labels] + [str(l) for l in presults.beta_labels]
    p_labels += [str(l) for l in presults.gamma_labels] if presults.gamma is not None else []
    # warm solves must reproduce the first one
    warm_vs_first = float(
        np.max(np.abs(np.r_[np.asarray(bfirst.final.theta), bfirst.beta, bfirst.gamma] - b_all), initial=0.0)
    )

    fp = np.asarray(presults.contraction_evaluations)
    fp_cold = np.asarray(pcold.contraction_evaluations)[:, 0]
    bsum = bres.contraction_summary
    objective_blpjax, objective_pyblp = float(bres.objective), float(np.asarray(presults.objective).item())
    out = {
        "problem": case.name,
        "description": case.description,
        "settings": case.settings,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device_info(),
        "versions": versions(),
        "threads": "PyBLP: OMP/OPENBLAS/MKL_NUM_THREADS=1; blpjax: XLA CPU default (all cores)",
        "repeats": repeats,
        # 1-minute load average before and after the case: other processes on the machine distort timings
        "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "N": int(bproblem.N),
        "T": int(bproblem.T),
        # timings
        "pyblp_setup_s": pyblp_setup_s,
        "pyblp_s": pyblp_s,
        "blpjax_setup_s": blpjax_setup_s,
        "blpjax_first_s": blpjax_first_s,
        "blpjax_run_s": blpjax_run_s,
        "blpjax_run_all_s": warm_times,
        "blpjax_compile_s": blpjax_first_s - blpjax_run_s,
        "speedup_warm": pyblp_s / blpjax_run_s,
        "speedup_cold": pyblp_s / blpjax_first_s,
        # time per objective evaluation (whole solve / evaluations; includes the post-estimation work)
        "speedup_per_evaluation": (pyblp_s / int(presults.objective_evaluations))
        / (blpjax_run_s / int(bres.final.objective_evaluations)),
        # agreement
        "objective_blpjax": objective_blpjax,
        "objective_pyblp": objective_pyblp,
        "objective_abs_diff": abs(objective_blpjax - objective_pyblp),
        "objective_rel_diff": abs(objective_blpjax - objective_pyblp) / abs(objective_pyblp),
        "max_rel_param_diff": float(rel_diff.max()),
        "max_abs_param_diff": float(abs_diff.max()),
        "warm_vs_first_max_abs_diff": warm_vs_first,
        "parameters": [
            {
                "label": lab,
                "pyblp_label": plab,
                "blpjax": float(b),
                "pyblp": float(p),
                "abs_diff": float(a),
                "rel_diff": float(r),
            }
            for lab, plab, b, p, a, r in zip(labels, p_labels, b_all, p_all, abs_diff, rel_diff, strict=True)
        ],
        # optimiser
        "blpjax_objective_evaluations": int(bres.final.objective_evaluations),
        "pyblp_objective_evaluations": int(presults.objective_evaluations),
        "blpjax_optimizer_iterations": int(bres.final.optimizer_iterations),
        "pyblp_optimizer_iterations": int(presults.optimization_iterations),
        "blpjax_converged": bool(bres.converged),
        "pyblp_converged": bool(presults.converged),
        "blpjax_optimizer_message": bres.final.optimizer_message,
        "blpjax_max_abs_gradient": float(np.max(np.abs(bres.gradient), initial=0.0)),
        "pyblp_max_abs_gradient": float(np.max(np.abs(np.asarray(presults.gradient)), initial=0.0)),
        # contraction (per market; "at_estimate" = cold start from the logit δ at the estimate)
        "blpjax_contraction_at_estimate": {
            "mean_evaluations": bsum["mean_evaluations"],
            "max_evaluations": bsum["max_evaluations"],
            "failed_markets": len(bsum["failed_markets"]),
        },
        "pyblp_contraction_at_estimate": {
            "mean_evaluations": float(fp_cold.mean()),
            "max_evaluations": int(fp_cold.max()),
        },
        "pyblp_contraction_during_optimization": {
            "total_evaluations": int(fp.sum()),
            "mean_per_market_per_objective_evaluation": float(fp.mean()),
            "max_per_market": int(fp.max()),
            "unconverged": int((~np.asarray(presults.fp_converged, bool)).sum()),
        },
    }
    return out


def print_table(r: dict) -> None:
    d = r["device"]
    print()
    print(f"== {r['problem']}: {r['description']}")
    print(
        f"   device: {d['platform']} / {d['device_kind']} ({d['cpu_model']}, {d['cpu_count']} cores); "
        f"N={r['N']} T={r['T']}; {r['date']}"
    )
    print(f"   1-min load average before/after: {r['load_average_1min']} (on {d['cpu_count']} cores)")
    print(f"   GLIBC_TUNABLES (both libraries, one process): {r.get('glibc_tunables')}")
    rows = [
        ("wall time, warm (s)", r["blpjax_run_s"], r["pyblp_s"], r["speedup_warm"]),
        ("wall time, first incl. compile (s)", r["blpjax_first_s"], r["pyblp_s"], r["speedup_cold"]),
        ("compile (s)", r["blpjax_compile_s"], None, None),
        ("setup (s)", r["blpjax_setup_s"], r["pyblp_setup_s"], r["pyblp_setup_s"] / r["blpjax_setup_s"]),
        (
            "wall time per objective evaluation (s)",
            r["blpjax_run_s"] / r["blpjax_objective_evaluations"],
            r["pyblp_s"] / r["pyblp_objective_evaluations"],
            r["speedup_per_evaluation"],
        ),
        ("objective", r["objective_blpjax"], r["objective_pyblp"], None),
        (
            "objective evaluations",
            r["blpjax_objective_evaluations"],
            r["pyblp_objective_evaluations"],
            r["pyblp_objective_evaluations"] / max(r["blpjax_objective_evaluations"], 1),
        ),
        (
            "optimizer iterations",
            r["blpjax_optimizer_iterations"],
            r["pyblp_optimizer_iterations"],
            None,
        ),
        (
            "contraction evals at estimate (mean/market)",
            r["blpjax_contraction_at_estimate"]["mean_evaluations"],
            r["pyblp_contraction_at_estimate"]["mean_evaluations"],
            r["pyblp_contraction_at_estimate"]["mean_evaluations"]
            / r["blpjax_contraction_at_estimate"]["mean_evaluations"],
        ),
        ("converged", r["blpjax_converged"], r["pyblp_converged"], None),
    ]

    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, int):
            return f"{v:d}"
        return f"{v:.6g}"

    w = max(len(n) for n, *_ in rows)
    print(f"   {'':<{w}}  {'blpjax':>14}  {'PyBLP':>14}  {'PyBLP/blpjax':>12}")
    for name, a, b, ratio in rows:
        print(f"   {name:<{w}}  {fmt(a):>14}  {fmt(b):>14}  {fmt(ratio):>12}")
    print(
        f"   max rel. parameter difference {r['max_rel_param_diff']:.3e} "
        f"(max abs {r['max_abs_param_diff']:.3e}); objective difference {r['objective_abs_diff']:.3e} "
        f"(relative {r['objective_rel_diff']:.3e})"
    )
    worst = max(r["parameters"], key=lambda p: p["rel_diff"])
    print(f"   largest relative difference: {worst['label']} blpjax {worst['blpjax']:.10g} PyBLP {worst['pyblp']:.10g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", choices=[*CASES, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3, help="warm blpjax solves (median); default %(default)s")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="default: %(default)s")
    parser.add_argument(
        "--no-allocator-tuning",
        action="store_true",
        help="keep glibc's default allocator settings (default: relaunch with blpjax.ALLOCATOR_TUNABLES, both libraries)",
    )
    parser.add_argument(
        "--contraction",
        choices=["squarem", "anderson", "newton", "simple"],
        default=None,
        help="blpjax's inner solver (PyBLP keeps SQUAREM, the reference); results go to <problem>_<method>.json",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if not args.no_allocator_tuning and argv is None:
        from blpjax import relaunch_with_tuned_allocator

        relaunch_with_tuned_allocator()

    names = list(CASES) if args.problem == "all" else [args.problem]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        case = CASES[name]()
        if case is None:
            continue
        suffix = ""
        if args.contraction is not None:
            import dataclasses

            import blpjax

            old = case.blpjax_solve.get("contraction") or blpjax.ContractionConfig()
            solve = dict(case.blpjax_solve, contraction=dataclasses.replace(old, method=args.contraction))
            case = dataclasses.replace(case, blpjax_solve=solve)
            suffix = f"_{args.contraction}"
        print(f"running {name}{suffix} ...", flush=True)
        result = run_case(case, args.repeats)
        result["blpjax_contraction"] = args.contraction or "squarem"
        path = args.out_dir / f"{name}{suffix}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print_table(result)
        print(f"   -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
