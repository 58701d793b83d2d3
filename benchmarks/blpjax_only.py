"""blpjax alone on the comparison problems: before/after timings of two versions, interleaved.

PyBLP's times are not re-measured: ``--pyblp-from`` reads them from the JSONs ``compare_pyblp.py``
recorded (``benchmarks/results/<problem>.json``), so a change to blpjax is measured against itself on the
same machine and hour, and its ratio to PyBLP follows.

Each run is a fresh process (so the first solve includes compilation, as a user's first solve does)
that builds the problem as ``compare_pyblp.py`` does, solves once (``first_s``) and then ``--repeats``
more times (``warm_s``, the median). ``--versions`` gives checkouts of blpjax (the root of each
working tree, put first on ``PYTHONPATH``); runs alternate between them ``--rounds`` times, so that a
load spike on a shared machine hits both alike.

    python benchmarks/blpjax_only.py --problems nevo blp petrin --versions /path/before /path/after
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(problem: str, repeats: int) -> dict:
    """Build and solve one problem in this process: first solve, then warm solves."""
    sys.path.insert(0, str(HERE))
    import numpy as np
    from compare_pyblp import CASES

    import blpjax

    case = CASES[problem]()
    bproblem = case.blpjax_problem()
    options = dict(case.blpjax_solve)
    if "throw" in inspect.signature(bproblem.solve).parameters:
        options["throw"] = False  # time the solve; convergence is reported below (older versions have no throw)
    t0 = time.perf_counter()
    res = bproblem.solve(**options)
    first = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = bproblem.solve(**options)
        warm.append(time.perf_counter() - t0)
    return {
        "blpjax_file": blpjax.__file__,
        "first_s": first,
        "warm_s": warm,
        "objective": float(res.objective),
        "estimates": np.r_[np.asarray(res.final.theta), np.asarray(res.final.beta)].tolist(),
        "evaluations": int(res.final.objective_evaluations),
        "converged": bool(res.converged),
        "message": getattr(res, "message", ""),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", default=["nevo", "blp", "mixtape_ex2", "mixtape_ex3", "petrin"])
    parser.add_argument("--versions", nargs="+", type=Path, help="checkout roots, e.g. before after")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved fresh-process runs per version")
    parser.add_argument("--repeats", type=int, default=3, help="warm solves per run")
    parser.add_argument("--pyblp-from", type=Path, default=HERE / "results")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "before_after.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT" + json.dumps(child(args.child, args.repeats)))
        return 0
    if not args.versions:
        parser.error("--versions is required")
    if argv is None and os.environ.get("BLPJAX_TUNE_ALLOCATOR", "1") != "0":
        # as compare_pyblp.py: glibc's allocator settings for large problems (inherited by every run)
        from blpjax import relaunch_with_tuned_allocator

        relaunch_with_tuned_allocator()

    out = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_start": os.getloadavg()[0],
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "versions": [str(v) for v in args.versions],
        "problems": {},
    }
    for problem in args.problems:
        runs = {str(v): [] for v in args.versions}
        for _ in range(args.rounds):
            for version in args.versions:
                env = dict(os.environ, PYTHONPATH=str(version))
                cmd = [sys.executable, __file__, "--child", problem, "--repeats", str(args.repeats)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=version)
                if proc.returncode:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    break
                runs[str(version)].append(json.loads(proc.stdout.split("RESULT", 1)[1]))
        if not all(runs.values()):
            print(f"{problem}: skipped (a run failed)")
            continue
        summary = {}
        pyblp_file = args.pyblp_from / f"{problem}.json"
        pyblp_s = json.loads(pyblp_file.read_text()).get("pyblp_s") if pyblp_file.exists() else None
        for version, rs in runs.items():
            first = statistics.median(r["first_s"] for r in rs)
            warm = statistics.median(statistics.median(r["warm_s"]) for r in rs)
            summary[version] = {
                "first_s": first,
                "warm_s": warm,
                "objective": rs[0]["objective"],
                "evaluations": rs[0]["evaluations"],
                "speedup_warm_vs_recorded_pyblp": None if pyblp_s is None else pyblp_s / warm,
                "speedup_cold_vs_recorded_pyblp": None if pyblp_s is None else pyblp_s / first,
                "runs": rs,
            }
        out["problems"][problem] = {"pyblp_s_recorded": pyblp_s, "by_version": summary}
        line = "  ".join(
            f"{Path(v).name}: warm {s['warm_s']:.3f}s cold {s['first_s']:.3f}s q {s['objective']:.10g} "
            f"({s['evaluations']} evaluations, converged {s['runs'][0]['converged']})"
            for v, s in summary.items()
        )
        print(f"{problem}: {line}", flush=True)
    out["load_end"] = os.getloadavg()[0]
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
