"""Time to a first result in a fresh process: blpjax (with and without JAX's persistent cache) vs PyBLP.

Usage::

    python benchmarks/cold_start.py --problem nevo --runs 3

Each measurement is a new Python process that imports the libraries and reads the data ("imports +
data": the ``compare_pyblp.py`` case imports both libraries, so this column is not a comparison),
builds the problem ("set-up") and solves it once ("solve", standard errors included), so set-up +
solve counts everything a user waits for after the imports: tracing, XLA compilation and the run. blpjax runs three ways:

* ``fresh``: no persistent cache, every program compiled in the process;
* ``cache (filling)``: ``blpjax.enable_compilation_cache(dir)`` on an empty directory (compiles, then
  writes the programs);
* ``cache (warm)``: the same directory in a new process (programs read back from disk).

PyBLP (one BLAS thread) runs the same way, ``--runs`` times; the medians are compared. The output
is printed and written to ``benchmarks/results/cold_start_<problem>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent

_CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    t0 = time.perf_counter()
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = "1"
    sys.path.insert(0, {here!r})
    lib, problem, cache = sys.argv[1], sys.argv[2], sys.argv[3]
    import compare_pyblp
    if lib == "blpjax":
        import blpjax
        if cache:
            blpjax.enable_compilation_cache(cache)
    else:
        import pyblp
        pyblp.options.verbose = False
    case = compare_pyblp.CASES[problem]()  # imports both libraries (data locations) and reads the data
    t_import = time.perf_counter()
    if lib == "blpjax":
        p = case.blpjax_problem()
        t_setup = time.perf_counter()
        r = p.solve(**case.blpjax_solve)
        objective = r.objective
        se = [float(v) for v in r.final.se]  # standard errors are part of the result
    else:
        p = case.pyblp_problem()
        t_setup = time.perf_counter()
        r = p.solve(**case.pyblp_solve)
        objective = float(r.objective)
        se = [float(v) for v in r.sigma_se.ravel()]
    t_solve = time.perf_counter()
    print("RESULT " + json.dumps(dict(
        total_s=t_solve - t0, import_s=t_import - t0, setup_s=t_setup - t_import, solve_s=t_solve - t_setup,
        objective=objective)))
    """
)


def _run(lib: str, problem: str, cache: str = "") -> dict:
    env = dict(os.environ)
    env.pop("BLPJAX_CPU_OPT_LEVEL", None)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(here=str(HERE)), lib, problem, cache],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def _median(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", default="nevo")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    parser.add_argument("--no-allocator-tuning", action="store_true", help="as in compare_pyblp.py")
    args = parser.parse_args(argv)
    if not args.no_allocator_tuning and argv is None:  # the child processes inherit the environment
        from blpjax import relaunch_with_tuned_allocator

        relaunch_with_tuned_allocator()
    sys.path.insert(0, str(HERE))
    from compare_pyblp import device_info

    rows: dict[str, list[dict]] = {"blpjax fresh": [], "blpjax cache (filling)": [], "blpjax cache (warm)": []}
    rows["pyblp"] = []
    for _ in range(args.runs):
        rows["blpjax fresh"].append(_run("blpjax", args.problem))
        with tempfile.TemporaryDirectory() as cache:
            rows["blpjax cache (filling)"].append(_run("blpjax", args.problem, cache))
            rows["blpjax cache (warm)"].append(_run("blpjax", args.problem, cache))
        rows["pyblp"].append(_run("pyblp", args.problem))
    med = {k: _median(v) for k, v in rows.items()}
    pyblp_total = med["pyblp"]["total_s"]
    pyblp_solve = med["pyblp"]["solve_s"]
    result = dict(
        problem=args.problem,
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        device=device_info(),
        load_average_1min=os.getloadavg()[0],
        glibc_tunables=os.environ.get("GLIBC_TUNABLES"),
        runs=args.runs,
        what="medians over runs of fresh processes: import, problem set-up, first solve (incl. SEs)",
        medians=med,
        speedup_setup_and_solve={
            k: (med["pyblp"]["setup_s"] + pyblp_solve) / (v["setup_s"] + v["solve_s"])
            for k, v in med.items()
            if k != "pyblp"
        },
        speedup_total={k: pyblp_total / v["total_s"] for k, v in med.items() if k != "pyblp"},
        speedup_solve={k: pyblp_solve / v["solve_s"] for k, v in med.items() if k != "pyblp"},
        all_runs=rows,
    )
    print(f"cold start, {args.problem}: {result['device']}; median of {args.runs} fresh processes each")
    print(f"{'':24s}{'imports+data':>13s}{'set-up':>8s}{'solve':>8s}{'PyBLP/x: set-up+solve':>23s}{'solve':>8s}")
    for k, v in med.items():
        ratio = ""
        if k != "pyblp":
            ratio = f"{result['speedup_setup_and_solve'][k]:22.1f}x{result['speedup_solve'][k]:7.1f}x"
        print(f"{k:24s}{v['import_s']:13.2f}{v['setup_s']:8.2f}{v['solve_s']:8.2f}{ratio}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"cold_start_{args.problem}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
