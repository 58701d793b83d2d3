"""blpjax's inner solvers (SQUAREM, Anderson, safeguarded Newton) on the comparison problems, one process.

Each problem is built as ``compare_pyblp.py`` builds it and solved with each ``ContractionConfig.method``: the first
solve (compilation included) and the median of ``--repeats`` warm solves, with the contraction evaluations per
market at the last objective evaluation (mean and max) and the objective (every method must reach the same
optimum). It compares blpjax's methods with each other on one machine and hour (PyBLP keeps SQUAREM; its times
are ``compare_pyblp.py``'s). Results go to ``results/inner_solvers.json``.

    python benchmarks/inner_solvers.py --problems nevo mixtape_ex2 mixtape_ex3
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", default=["nevo", "mixtape_ex2", "mixtape_ex3"])
    parser.add_argument("--methods", nargs="+", default=["squarem", "anderson", "newton"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "inner_solvers.json")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import jax
    from compare_pyblp import CASES

    import blpjax

    rows = []
    print(f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    for name in args.problems:
        case = CASES[name]()
        if case is None:
            print(f"{name}: data not available, skipped")
            continue
        problem = case.blpjax_problem()
        for method in args.methods:
            old = case.blpjax_solve.get("contraction") or blpjax.ContractionConfig()
            solve = dict(case.blpjax_solve, contraction=dataclasses.replace(old, method=method))
            start = time.perf_counter()
            results = problem.solve(**solve)
            first = time.perf_counter() - start
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                results = problem.solve(**solve)
                times.append(time.perf_counter() - start)
            summary = results.contraction_summary
            row = dict(
                problem=name,
                method=method,
                objective=float(results.objective),
                first_s=first,
                warm_s=statistics.median(times),
                mean_evaluations=float(summary["mean_evaluations"]),
                max_evaluations=int(summary["max_evaluations"]),
            )
            rows.append(row)
            print(
                f"{name:12s} {method:9s} objective {row['objective']:.10g}  first {first:6.2f} s  warm "
                f"{row['warm_s']:6.3f} s  evaluations/market {row['mean_evaluations']:.1f} (max "
                f"{row['max_evaluations']})",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        machine=platform.processor() or platform.machine(),
        cores=os.cpu_count(),
        load_average_1min=os.getloadavg()[0],
        device=str(jax.devices()[0]),
    )
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))


if __name__ == "__main__":
    main()
