"""Peak memory of one objective + gradient evaluation: all markets at once vs markets in chunks.

Each configuration runs in a fresh process, which builds a simulated problem (``blpjax.simulate``
in pieces of ``--sim-markets`` markets, so that building the data stays small), records its
resident set size (RSS), then evaluates the objective and its gradient once cold (compilation
included) and once more, and reports the peak RSS (``getrusage`` high-water mark) and times.

Modes:
- ``vmap``: the engine's value and gradient on the padded layout, as estimation runs it by default
  (one vmap over all markets, one reverse pass through the pieces at the solved δ): memory grows
  with T·I·J.
- ``chunked``: the same engine with ``market_batch_size=--batch-size`` (forward pass in chunks, then
  the two-pass gradient): memory is the data plus O(batch·I·J).

    python benchmarks/memory.py                    # the default study, writes results/memory.json
    python benchmarks/memory.py --big-only         # only the ~1e8-element chunked run

Keep the ``vmap`` runs small on a shared machine: its peak grows linearly and is extrapolated.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import pandas as pd
    from buckets import timed  # benchmarks/ is on sys.path: this script's directory

    import blpjax
    from blpjax import ContractionConfig, ScipyOptimizer
    from blpjax.internal import Concentration, Engine, Padded, scipy_minimize, symmetric_inverse

    T, J, I = args.T, args.J, args.I
    products, agents = [], []
    for start in range(0, T, args.sim_markets):
        n = min(args.sim_markets, T - start)
        cfg = blpjax.SimulationConfig(markets=n, products=(J, J), agents=I, seed=start)
        p, a, _ = blpjax.simulate(cfg)
        p = p.drop(columns="demand_instruments4")  # the product count: constant when every J_t = J
        p["market_ids"] += start
        a["market_ids"] += start
        products.append(p)
        agents.append(a)
    problem = blpjax.Problem(
        pd.concat(products, ignore_index=True).rename(columns=lambda c: c.replace("instruments5", "instruments4")),
        ("1", "x", "prices"),
        ("1", "prices"),
        agent_data=pd.concat(agents, ignore_index=True),
        demographics=("income",),
    )
    del products, agents
    spec = problem.parameter_spec(np.diag([0.8, 0.24]), [[0.0], [0.32]])
    setup = problem.setup
    M = setup.Z.shape[-1]
    Z = setup.Z.reshape(-1, M)
    conc = Concentration.build(setup.ZX, symmetric_inverse(Z.T @ Z / setup.N), setup.N)
    config, x, d0 = ContractionConfig(), jnp.asarray(spec.x0), problem.logit_delta()
    out = {
        "mode": args.mode,
        "T": T,
        "J": J,
        "I": I,
        "elements": T * J * I,
        "batch_size": args.batch_size if args.mode == "chunked" else None,
        "data_rss_gib": rss_gib(),
        "data_peak_gib": peak_gib(),
    }
    layout = Padded() if args.mode == "vmap" else Padded(batch=args.batch_size)
    engine = Engine.build(layout, spec, config, setup, problem.products)

    def vg(y, d):
        return engine.value_and_grad(y, d, conc)[:3]

    (q, g, ev), out["first_s"] = timed(lambda: vg(x, d0))  # compilation included
    (q, g, ev), out["run_s"] = timed(lambda: vg(x, d0))
    out.update(
        objective=float(q),
        gradient=np.asarray(g).tolist(),
        max_evaluations=int(np.asarray(ev.evaluations).max()),
        mean_evaluations=float(np.asarray(ev.evaluations).mean()),
        converged=bool(np.all(np.asarray(ev.status) == 0)),
        peak_gib=peak_gib(),
    )
    if args.estimate_iterations:
        t0 = time.perf_counter()
        res = scipy_minimize(
            vg, spec.x0, ev.delta, spec.lower, spec.upper, ScipyOptimizer("l-bfgs-b", maxiter=args.estimate_iterations)
        )
        out["estimate"] = {
            "optimizer": f"L-BFGS-B, maxiter {args.estimate_iterations}, warm-started δ",
            "seconds": time.perf_counter() - t0,
            "x0": spec.x0.tolist(),
            "x": np.asarray(res.x).tolist(),
            "evaluations": int(res.evaluations),
            "iterations": int(res.iterations),
            "message": str(res.message),
        }
        out["peak_gib"] = peak_gib()
    out["device"] = f"{jax.devices()[0].platform}, {os.cpu_count()} cores"
    return out


def run(mode, T, J, I, batch_size=None, estimate_iterations=0, sim_markets=50) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(T), str(J), str(I), "--sim-markets", str(sim_markets)]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    if estimate_iterations:
        cmd += ["--estimate-iterations", str(estimate_iterations)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"mode": mode, "T": T, "J": J, "I": I, "error": proc.stderr[-2000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    extra = f", estimate {result['estimate']['seconds']:.0f}s" if "estimate" in result else ""
    print(
        f"{mode:8s} T={T} J={J} I={I} ({T * J * I:.1e} elements, batch {batch_size}): peak {result['peak_gib']:.2f} GiB "
        f"(after data {result['data_peak_gib']:.2f}), first {result['first_s']:.1f}s, run {result['run_s']:.1f}s, "
        f"q {result['objective']:.6g}{extra}",
        flush=True,
    )
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=4, metavar=("MODE", "T", "J", "I"))
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--sim-markets", type=int, default=50)
    ap.add_argument("--estimate-iterations", type=int, default=0)
    ap.add_argument("--big-only", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "memory.json")
    args = ap.parse_args(argv)
    if args.child:
        args.mode, T, J, I = args.child
        args.T, args.J, args.I = int(T), int(J), int(I)
        print(json.dumps(child(args)))
        return
    results = {
        "date": datetime.date.today().isoformat(),
        "load_average_before": os.getloadavg(),
        "what": "peak RSS (getrusage high-water mark, whole process incl. Python, JAX, data and compilation) of one "
        "objective + gradient evaluation, each configuration in a fresh process; elements = T x J x I",
        "runs": [],
    }
    runs = results["runs"]
    if not args.big_only:
        for T, J, I in ((100, 50, 200), (200, 50, 1000), (200, 100, 1000), (1000, 100, 1000)):
            runs.append(run("vmap", T, J, I, sim_markets=20))
            runs.append(run("chunked", T, J, I, batch_size=args.batch_size, sim_markets=20))
        runs.append(run("chunked", 1000, 100, 1000, batch_size=100, sim_markets=20))
    runs.append(run("chunked", 1000, 100, 1000, batch_size=args.batch_size, estimate_iterations=3, sim_markets=20))
    if not args.big_only:
        runs.append(run("chunked", 3000, 100, 1000, batch_size=args.batch_size, sim_markets=20))
    results["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
