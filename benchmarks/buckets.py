"""Markets of different sizes: padded to the largest vs bucketed by size class (``blpjax.internal.Bucketed``).

For each problem, times one objective-and-gradient evaluation (the unit an optimiser calls) of
the padded program (``Engine.value_and_grad`` on ``Padded()``) and of the bucketed program
(the same engine on ``Bucketed.from_plan(plan)``) with 1..4 buckets, from the same θ and cold δ₀,
and checks that they agree. Reports padded vs bucketed vs real elements (agent × product × market
entries of the I×J share arrays, and J×J entries of the implicit-derivative systems) and the
"market contraction evaluations executed": a vmapped contraction loop runs every market of a
batch until the batch's slowest market converges, so it executes T_b × max_t(evaluations_t) per
batch, against Σ_t evaluations_t needed.

    python benchmarks/buckets.py                 # blp autos + skewed synthetic, writes results/buckets.json
    python benchmarks/buckets.py --repeats 5

Problems: ``blp`` is PyBLP's BLP automobile data (T = 20, J_t from 72 to 150, I = 200; the
demand-side specification of ``compare_pyblp.py``). ``skewed`` is simulated data with many
small markets and a few large ones (400 markets with J_t in [2, 20] and I = 100, 40 with J_t in
[40, 80] and I = 300, 5 with J_t in [120, 150] and I = 400).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import blpjax
from blpjax import ContractionConfig
from blpjax.internal import Bucketed, Concentration, Engine, Padded, market_sizes, plan_buckets, symmetric_inverse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def blp_problem():
    from compare_pyblp import blp_case

    case = blp_case()
    problem = case.blpjax_problem()
    kw = case.blpjax_solve
    spec = problem.parameter_spec(kw["sigma"], kw["pi"], sigma_bounds=kw["sigma_bounds"])
    return problem, spec


def skewed_problem(seed: int = 0):
    parts = [(400, (2, 20), 100), (40, (40, 80), 300), (5, (120, 150), 400)]
    products, agents, offset = [], [], 0
    for k, (T, J, I) in enumerate(parts):
        p, a, _ = blpjax.simulate(blpjax.SimulationConfig(markets=T, products=J, agents=I, seed=seed + k))
        p["market_ids"] += offset
        a["market_ids"] += offset
        products.append(p)
        agents.append(a)
        offset += T
    problem = blpjax.Problem(
        pd.concat(products, ignore_index=True),
        ("1", "x", "prices"),
        ("1", "prices"),
        agent_data=pd.concat(agents, ignore_index=True),
        demographics=("income",),
    )
    spec = problem.parameter_spec(np.diag([0.8, 0.2]), [[0.0], [0.3]])
    return problem, spec


def timed(f):
    """(f(), seconds) with the result ready (also used by memory.py)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(f())
    return out, time.perf_counter() - t0


def round_robin(fns: dict, repeats: int) -> dict:
    """Time each function ``repeats`` times, interleaved so that load spikes on a shared machine hit all alike."""
    runs = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            runs[k].append(time.perf_counter() - t0)
    return runs


def executed(evaluations, groups):
    """Market contraction evaluations a batched loop executes: Σ_batches T_b · max evaluations."""
    ev = np.asarray(evaluations)
    return int(sum(len(g) * ev[g].max() for g in groups))


def run_problem(name, problem, spec, repeats, max_buckets):
    setup = problem.setup
    M = setup.Z.shape[-1]
    Z = setup.Z.reshape(-1, M)
    conc = Concentration.build(setup.ZX, symmetric_inverse(Z.T @ Z / setup.N), setup.N)
    config, x, d0 = ContractionConfig(), jnp.asarray(spec.x0), problem.logit_delta()
    J_t, I_t = market_sizes(setup.mask, setup.market.weights)
    padded_engine = Engine.build(Padded(), spec, config, setup, problem.products)
    padded = lambda: padded_engine.value_and_grad(x, d0, conc)[:3]  # noqa: E731
    (q, g, ev), first = timed(padded)
    fns, plans, firsts, outs = {"padded": padded}, {}, {}, {}
    for k in range(1, max_buckets + 1):
        plan = plan_buckets(J_t, I_t, max_buckets=k, tol=0.0)
        engine = Engine.build(Bucketed.from_plan(plan), spec, config, setup, problem.products)
        fns[k] = lambda engine=engine: engine.value_and_grad(x, d0, conc)[:3]
        plans[k] = plan
        outs[k], firsts[k] = timed(fns[k])
    runs = round_robin(fns, repeats)
    best = min(runs["padded"])
    T = len(J_t)
    out = {
        "T": T,
        "N": int(setup.N),
        "J_t_range": [int(J_t.min()), int(J_t.max())],
        "I_t_range": [int(I_t.min()), int(I_t.max())],
        "objective": float(q),
        "evaluations_needed": int(np.asarray(ev.evaluations).sum()),
        "padded": {
            "first_s": first,
            "run_s": best,
            "runs_s": runs["padded"],
            "compile_s": first - best,
            "executed_evaluations": executed(ev.evaluations, [np.arange(T)]),
        },
        "bucketed": [],
    }
    for k, plan in plans.items():
        qb, gb, evb = outs[k]
        best_b, first_b = min(runs[k]), firsts[k]
        e = plan.elements()
        row = {
            "max_buckets": k,
            "buckets": [
                {"T_b": len(m), "J_b": J, "I_b": I} for m, J, I in zip(plan.markets, plan.J, plan.I, strict=True)
            ],
            **e,
            "first_s": first_b,
            "run_s": best_b,
            "runs_s": runs[k],
            "compile_s": first_b - best_b,
            "speedup_vs_padded": best / best_b,
            "executed_evaluations": executed(evb.evaluations, plan.markets),
            "objective_rel_diff": abs(float(qb) - float(q)) / abs(float(q)),
            "gradient_max_rel_diff": float(np.max(np.abs(np.asarray(gb) - np.asarray(g))) / np.max(np.abs(g))),
            "delta_max_abs_diff": float(np.max(np.abs(np.asarray(evb.delta) - np.asarray(ev.delta)))),
        }
        out["bucketed"].append(row)
        print(
            f"{name}: {len(plan.markets)} bucket(s) {row['buckets']}: IJ elements {e['bucketed_IJ']:,} of padded "
            f"{e['padded_IJ']:,} (real {e['real_IJ']:,}); {best_b * 1e3:.1f} ms vs padded {best * 1e3:.1f} ms "
            f"({best / best_b:.2f}x), compile {first_b - best_b:.1f}s vs {first - best:.1f}s; "
            f"executed evals {row['executed_evaluations']:,} vs {out['padded']['executed_evaluations']:,}; "
            f"max rel diff q {row['objective_rel_diff']:.1e} grad {row['gradient_max_rel_diff']:.1e}",
            flush=True,
        )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--max-buckets", type=int, default=4)
    ap.add_argument("--problem", choices=("blp", "skewed", "all"), default="all")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "buckets.json")
    args = ap.parse_args(argv)
    results = {
        "date": datetime.date.today().isoformat(),
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}, {os.cpu_count()} cores",
        "cpu": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "load_average_before": os.getloadavg(),
        "timing": "min over repeats (padded and bucketed interleaved) of one jitted objective + gradient evaluation, "
        "cold δ₀ (logit), same θ; first_s is the first call (compilation included)",
        "problems": {},
    }
    builders = {"blp": blp_problem, "skewed": skewed_problem}
    for name in builders if args.problem == "all" else (args.problem,):
        problem, spec = builders[name]()
        results["problems"][name] = run_problem(name, problem, spec, args.repeats, args.max_buckets)
    results["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
