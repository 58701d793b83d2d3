"""Monte Carlo replications per minute: blpjax's one program against PyBLP replication by replication.

Usage::

    python benchmarks/monte_carlo.py                      # R = 100, T = 50, J = 5, I = 20, 2-step GMM
    python benchmarks/monte_carlo.py --replications 200 --markets 20 --method 1s

R datasets are simulated from known truth (``blpjax.SimulationConfig`` with a fixed number of
products per market, seeds 0..R-1; X1 = 1, x, prices; X2 = 1, prices; one demographic). Both
libraries estimate every dataset with the same data, agent nodes and weights, starting values (the
truth), no bounds on Σ (passed to both: see ``sigma_bounds``), SQUAREM
contraction to 1e-14 and an L-BFGS optimiser stopping at a projected gradient of 1e-8 (PyBLP:
SciPy's L-BFGS-B, ``gtol=1e-8, ftol=0``; blpjax: optax L-BFGS in the jitted loop, ``gtol=1e-8``):

* PyBLP 1.3.0, one BLAS thread, ``Problem.solve`` replication by replication (building each PyBLP
  ``Problem`` is timed apart as ``pyblp_setup_s``);
* blpjax: :func:`blpjax.internal.estimate_replications` on the stacked replications, one jitted
  program. Its first call compiles (``blpjax_first_s``); ``blpjax_s`` is the minimum of
  ``--repeats`` further calls, each ended by ``jax.block_until_ready``. By default (see
  ``blpjax.internal.default_batch_size``) the program vmaps every replication at once on an
  accelerator and runs them one at a time (``lax.map``) on CPU; on CPU the script also times the
  all-at-once vmap (``blpjax_vmap_all_s``) for comparison.

``speedup`` = (replications per minute of blpjax) / (replications per minute of PyBLP) =
``pyblp_s / blpjax_s``, warm; ``speedup_cold`` includes blpjax's compilation. Agreement: the largest
absolute and relative difference of the estimates (all parameters, all replications) and of the
standard errors. Results go to ``benchmarks/results/monte_carlo.json``.
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
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare_pyblp import device_info  # noqa: E402  (one description of the machine for every benchmark)


def sigma_bounds(sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """No bounds on Σ, passed to both libraries (PyBLP's default bounds the diagonal below by 0).

    blpjax's optax loop projects onto bounds by clipping, which stalls L-BFGS when an estimate
    sits on a bound (σ̂ = 0 happens in small designs); unbounded, both optimisers solve the same problem.
    """
    return np.full(sigma.shape, -np.inf), np.full(sigma.shape, np.inf)


def run_pyblp(data, sigma, pi, bounds, method):
    import pyblp

    pyblp.options.verbose = False
    estimates, ses, setup_s, solve_s, iterations, evaluations, converged = [], [], [], [], [], [], []
    objectives, gradient_norms = [], []
    for products, agents in data:
        t0 = time.perf_counter()
        problem = pyblp.Problem(
            (pyblp.Formulation("1 + x + prices"), pyblp.Formulation("1 + prices")),
            products,
            pyblp.Formulation("0 + income"),
            agents,
        )
        t1 = time.perf_counter()
        res = problem.solve(
            sigma=sigma,
            pi=pi,
            sigma_bounds=bounds,
            method=method,
            # ftol=0: stop on the projected gradient alone, as blpjax does (SciPy's default ftol
            # otherwise stops L-BFGS-B at projected gradients up to ~1e-4 on these designs)
            optimization=pyblp.Optimization("l-bfgs-b", {"gtol": 1e-8, "ftol": 0}),
            iteration=pyblp.Iteration("squarem", {"atol": 1e-14}),
        )
        t2 = time.perf_counter()
        setup_s.append(t1 - t0)
        solve_s.append(t2 - t1)
        # blpjax's order: free Σ (lower triangle by row), free Π (by row), then β
        estimates.append(np.r_[res.sigma[0, 0], res.sigma[1, 1], res.pi[1, 0], res.beta.ravel()])
        ses.append(np.r_[res.sigma_se[0, 0], res.sigma_se[1, 1], res.pi_se[1, 0], res.beta_se.ravel()])
        iterations.append(int(res.optimization_iterations))
        evaluations.append(int(res.objective_evaluations))
        converged.append(bool(res.converged))
        objectives.append(float(res.objective))
        gradient_norms.append(float(res.projected_gradient_norm))
    return {
        "objective": objectives,
        "projected_gradient_norm": gradient_norms,
        "estimates": np.array(estimates),
        "se": np.array(ses),
        "setup_s": setup_s,
        "solve_s": solve_s,
        "iterations": iterations,
        "evaluations": evaluations,
        "converged": converged,
    }


def split_agreement(max_diff, objective_blpjax, objective_pyblp, tol=1e-6) -> dict:
    """Replications that agree to ``tol``, and those where the optimisers found different local minima."""
    agree = max_diff <= tol
    return {
        "replications_agreeing": int(agree.sum()),
        "agreeing_tolerance": tol,
        "max_abs_diff_agreeing": float(max_diff[agree].max()) if agree.any() else None,
        "disagreeing": [
            {
                "replication": int(r),
                "max_abs_diff": float(max_diff[r]),
                "objective_blpjax": float(objective_blpjax[r]),
                "objective_pyblp": float(objective_pyblp[r]),
            }
            for r in np.flatnonzero(~agree)
        ],
    }


def time_blpjax(spec, stacked, steps, batch_size, repeats):
    import jax

    from blpjax.internal import estimate_replications

    def run():
        return jax.block_until_ready(estimate_replications(spec, stacked, steps=steps, batch_size=batch_size))

    t0 = time.perf_counter()
    out = run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    return out, first, times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replications", type=int, default=100)
    parser.add_argument("--markets", type=int, default=50)
    parser.add_argument("--products", type=int, default=5)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--method", choices=("1s", "2s"), default="2s")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-vmap-all", action="store_true", help="on CPU, do not also time the all-at-once vmap")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "monte_carlo.json")
    args = parser.parse_args(argv)

    import jax
    import pyblp

    import blpjax
    from blpjax.internal import SIMULATED_SPECIFICATION, default_batch_size, simulate_replications, stack_problems

    R = args.replications
    config = blpjax.SimulationConfig(markets=args.markets, products=(args.products, args.products), agents=args.agents)
    sigma = np.diag(config.sigma)
    pi = np.asarray(config.pi, np.float64).reshape(2, 1)
    bounds = sigma_bounds(sigma)
    steps = 1 if args.method == "1s" else 2
    load = [os.getloadavg()[0]]
    print(f"device: {jax.devices()[0]} ({device_info()['cpu_model']}, {os.cpu_count()} cores)")
    print(f"design: R={R}, T={args.markets}, J={args.products}, I={args.agents}, {args.method} GMM")

    t0 = time.perf_counter()
    data, truth = simulate_replications(config, R, seed=0)
    simulate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    problems = [blpjax.Problem(p, agent_data=a, **SIMULATED_SPECIFICATION) for p, a in data]
    spec = problems[0].parameter_spec(sigma, pi, sigma_bounds=bounds)
    stacked = jax.block_until_ready(stack_problems(problems, spec))
    blpjax_setup_s = time.perf_counter() - t0
    labels = list(spec.labels) + [f"beta[{n}]" for n in SIMULATED_SPECIFICATION["linear"]]

    batch_size = default_batch_size(R)
    out, first, times = time_blpjax(spec, stacked, steps, batch_size, args.repeats)
    final = out[-1]
    blpjax_s = min(times)
    est = np.c_[np.asarray(final.theta), np.asarray(final.beta)]
    se = np.asarray(final.se)
    print(f"blpjax (batch_size={batch_size}): first call {first:.2f}s, warm {blpjax_s:.3f}s (runs {times})")

    vmap_all = None
    if jax.default_backend() == "cpu" and batch_size != R and not args.skip_vmap_all:
        out_v, first_v, times_v = time_blpjax(spec, stacked, steps, R, args.repeats)
        est_v = np.c_[np.asarray(out_v[-1].theta), np.asarray(out_v[-1].beta)]
        vmap_all = {
            "blpjax_vmap_all_first_s": first_v,
            "blpjax_vmap_all_s": min(times_v),
            "blpjax_vmap_all_runs_s": times_v,
            "max_abs_diff_vs_default_mode": float(np.max(np.abs(est_v - est))),
        }
        print(f"blpjax (all {R} vmapped at once): first call {first_v:.2f}s, warm {min(times_v):.3f}s")

    load.append(os.getloadavg()[0])
    pb = run_pyblp(data, sigma, pi, bounds, args.method)
    load.append(os.getloadavg()[0])
    pyblp_s = float(np.sum(pb["solve_s"]))
    print(f"PyBLP: {pyblp_s:.1f}s for {R} replications ({1000 * np.median(pb['solve_s']):.0f} ms median)")

    diff = np.abs(est - pb["estimates"])
    rel = diff / np.maximum(np.abs(pb["estimates"]), 1e-12)
    se_diff = np.abs(se - pb["se"])
    per_minute = {"blpjax": 60 * R / blpjax_s, "pyblp": 60 * R / pyblp_s}
    objective_blpjax = np.asarray(final.objective)
    result = {
        "benchmark": "monte_carlo",
        "description": (
            f"{R} simulated replications (T={args.markets} markets, J={args.products} products, I={args.agents} "
            f"agents; X1 = 1, x, prices; X2 = 1, prices; Pi on prices x income), {args.method} GMM from the truth, "
            "Sigma unbounded, L-BFGS gtol 1e-8 (PyBLP ftol 0), SQUAREM 1e-14"
        ),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_info(),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "jax": jax.__version__,
            "pyblp": pyblp.__version__,
            "blpjax": blpjax.__version__,
        },
        "threads": "PyBLP: OMP/OPENBLAS/MKL_NUM_THREADS=1; blpjax: XLA default (all cores)",
        "load_average_1min": load,
        "replications": R,
        "design": {"T": args.markets, "J": args.products, "I": args.agents, "method": args.method},
        "blpjax_batch_size": batch_size,
        "blpjax_s": blpjax_s,
        "blpjax_runs_s": times,
        "blpjax_first_s": first,
        "blpjax_compile_s": first - blpjax_s,
        "pyblp_s": pyblp_s,
        "pyblp_median_replication_s": float(np.median(pb["solve_s"])),
        "pyblp_setup_s": float(np.sum(pb["setup_s"])),
        "blpjax_setup_s": blpjax_setup_s,
        "simulate_s": simulate_s,
        "replications_per_minute": per_minute,
        "speedup": pyblp_s / blpjax_s,
        "speedup_cold": pyblp_s / first,
        **(vmap_all or {}),
        "agreement": {
            "max_abs_diff": float(diff.max()),
            "max_rel_diff": float(rel.max()),
            "max_abs_diff_over_se": float((diff / pb["se"]).max()),
            "max_abs_se_diff": float(se_diff.max()),
            "max_rel_se_diff": float((se_diff / pb["se"]).max()),
            "max_abs_diff_by_parameter": dict(zip(labels, diff.max(axis=0).tolist(), strict=True)),
            **split_agreement(diff.max(axis=1), objective_blpjax, np.asarray(pb["objective"])),
        },
        "converged": {"blpjax": int(np.asarray(final.converged).sum()), "pyblp": int(np.sum(pb["converged"]))},
        "optimizer_iterations_mean": {
            "blpjax": float(np.mean(np.asarray(final.iterations))),
            "pyblp": float(np.mean(pb["iterations"])),
        },
        "per_replication": {
            "max_abs_diff": diff.max(axis=1).tolist(),
            "objective_blpjax": objective_blpjax.tolist(),
            "objective_pyblp": pb["objective"],
            "gradient_norm_blpjax": np.asarray(final.gradient_norm).tolist(),
            "gradient_norm_pyblp": pb["projected_gradient_norm"],
            "converged_pyblp": pb["converged"],
            "iterations_blpjax": np.asarray(final.iterations).tolist(),
            "iterations_pyblp": pb["iterations"],
        },
        "truth": {k: float(truth[k]) for k in labels},
        "mean_estimates": {"blpjax": dict(zip(labels, est.mean(0).tolist(), strict=True))},
    }
    print(
        f"replications per minute: blpjax {per_minute['blpjax']:.0f}, PyBLP {per_minute['pyblp']:.1f}; "
        f"speedup {result['speedup']:.0f}x warm, {result['speedup_cold']:.1f}x including compilation"
    )
    a = result["agreement"]
    print(
        f"{a['replications_agreeing']}/{R} replications agree to {a['agreeing_tolerance']:g} "
        f"(max |diff| {a['max_abs_diff_agreeing']}); different local minima: {a['disagreeing']}"
    )
    print(
        f"agreement: max |diff| {a['max_abs_diff']:.2e} (rel {a['max_rel_diff']:.2e}, {a['max_abs_diff_over_se']:.2e} SEs); "
        f"SEs max |diff| {a['max_abs_se_diff']:.2e}; converged blpjax {result['converged']['blpjax']}/{R}, "
        f"PyBLP {result['converged']['pyblp']}/{R}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
