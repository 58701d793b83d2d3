"""Many starting points on PyBLP's Nevo tutorial: K starts in one blpjax program against K sequential solves and
against PyBLP one start at a time. Reports starts per minute, the distinct local optima and their counts.

The starts are blpjax's draws (``MultiStart(number=K, seed)``: within ±100% of the tutorial's starting values for
the unbounded Σ and Π entries); every library runs 1-step GMM from the same starts with the 2SLS weighting matrix.
blpjax: optax L-BFGS (``--gtol``, ``--max-steps``); PyBLP: L-BFGS-B with the same gtol (one BLAS thread; PyBLP has
no optax). The many-starts program is timed for 2 starts and for K (each call compiles once): the difference is the run
time of K − 2 starts, which gives the time per start without compilation; the sequential
baselines run ``--sequential`` of the starts (the first solve's compilation excluded) and are scaled to starts per
minute.

    python benchmarks/starts.py --starts 100 --sequential 10 --pyblp 5
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # PyBLP single-threaded (blpjax's XLA runtime has its own pool)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument("--sequential", type=int, default=10, help="blpjax solves one at a time (timed)")
    parser.add_argument("--pyblp", type=int, default=5, help="PyBLP solves one at a time (timed)")
    parser.add_argument("--gtol", type=float, default=1e-4)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=None, help="starts vmapped at a time (default: blpjax's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "starts_nevo.json")
    args = parser.parse_args(argv)

    import jax
    from nevo import NEVO_PI, NEVO_SIGMA, nevo_data, nevo_problems

    import blpjax

    pyblp, products, agents = nevo_data()
    pp, bp = nevo_problems(pyblp, products, agents)
    optimizer = blpjax.OptaxOptimizer(gtol=args.gtol, max_steps=args.max_steps)
    multistart = blpjax.MultiStart(number=args.starts, seed=args.seed, batch_size=args.batch_size)
    load_start = os.getloadavg()[0]

    # compile + run for 2 starts, then for K: the difference is K − 2 starts' run time (one compile each)
    t0 = time.perf_counter()
    bp.solve(
        NEVO_SIGMA,
        NEVO_PI,
        method="1s",
        optimizer=optimizer,
        starts=dataclasses.replace(multistart, number=2),
        throw=False,
    )
    small_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    many = bp.solve(NEVO_SIGMA, NEVO_PI, method="1s", optimizer=optimizer, starts=multistart, throw=False)
    first_s = time.perf_counter() - t0
    per_start = (first_s - small_s) / (args.starts - 2)
    warm_s = per_start * args.starts
    compile_s = small_s - 2 * per_start
    report = many.starts
    obj = bp.objective(NEVO_SIGMA, NEVO_PI)
    labels = obj.labels
    X0 = report.table[[f"start {label}" for label in labels]].to_numpy()
    print(
        f"blpjax, {args.starts} starts in one program: {first_s:.1f} s with compilation (≈ {compile_s:.1f} s), "
        f"{per_start:.2f} s per start"
    )
    print(report)

    # blpjax one start at a time (the first solve compiles; not counted)
    seq_times, seq_same = [], []
    for k in range(min(args.sequential, args.starts) + 1):
        theta = obj.unpack(X0[k % args.starts])
        t0 = time.perf_counter()
        alone = bp.solve(theta["sigma"], theta["pi"], method="1s", optimizer=optimizer, throw=False)
        if k:
            seq_times.append(time.perf_counter() - t0)
            seq_same.append(float(abs(alone.objective - report.table["objective"].iloc[k % args.starts])))

    # PyBLP one start at a time, L-BFGS-B with the same gtol
    py_times, py_objectives = [], []
    pyblp.options.verbose = False
    for k in range(min(args.pyblp, args.starts)):
        theta = obj.unpack(X0[k])
        t0 = time.perf_counter()
        r = pp.solve(
            theta["sigma"],
            theta["pi"],
            method="1s",
            optimization=pyblp.Optimization("l-bfgs-b", {"gtol": args.gtol, "maxiter": args.max_steps}),
        )
        py_times.append(time.perf_counter() - t0)
        py_objectives.append(float(r.objective))

    per_minute = {
        "blpjax_many_warm": 60 * args.starts / warm_s,
        "blpjax_many_first": 60 * args.starts / first_s,
        "blpjax_sequential": 60 / float(np.mean(seq_times)) if seq_times else None,
        "pyblp_sequential": 60 / float(np.mean(py_times)) if py_times else None,
    }
    device = jax.devices()[0]
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": f"{device.platform} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "starts": args.starts,
        "gtol": args.gtol,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "many_first_s": first_s,
        "many_two_starts_s": small_s,
        "compile_s_estimate": compile_s,
        "many_run_s_estimate": warm_s,
        "sequential_s": seq_times,
        "sequential_vs_many_objective_abs_diff_max": max(seq_same) if seq_same else None,
        "pyblp_s": py_times,
        "pyblp_objectives": py_objectives,
        "pyblp_starts_objectives_blpjax": report.table["objective"].iloc[: len(py_objectives)].tolist(),
        "starts_per_minute": per_minute,
        "converged": int(report.table["converged"].sum()),
        "optima": report.optima[["objective", "starts", "converged"]].to_dict(orient="records"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\n{result['device']}, load {load_start:.2f} -> {result['load_end']:.2f}")
    for name, value in per_minute.items():
        print(f"  {name:20s} {value:10.1f} starts/min" if value else f"  {name:20s} -")
    if per_minute["pyblp_sequential"]:
        print(
            f"  many-starts (warm) vs PyBLP one at a time: {per_minute['blpjax_many_warm'] / per_minute['pyblp_sequential']:.1f}x"
        )
    if per_minute["blpjax_sequential"]:
        print(
            f"  many-starts (warm) vs blpjax one at a time: {per_minute['blpjax_many_warm'] / per_minute['blpjax_sequential']:.2f}x"
        )
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
