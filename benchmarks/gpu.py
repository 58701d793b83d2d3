"""The accelerator run: blpjax alone on every benchmark problem, the floor pass, the contraction sweep and the Monte
Carlo benchmark, in one command of under eight minutes.

PyBLP's times are CPU times already recorded (``results/<problem>.json`` from ``compare_pyblp.py``), so each
problem's row prints the ratio to those. Every problem runs in a fresh process (its first solve includes
compilation, as a user's does): first solve, the median of ``--repeats`` warm solves, objective evaluations, and the
time per evaluation as a number of floor passes (``floor.py``'s fused share pass over the same T × J × I, timed in
the same process). Each part has a time limit, so one that overruns loses only itself; results go to one JSON per
part under ``--out``.

On a lent NVIDIA machine (its image has JAX with CUDA, equinox, optax, optimistix, formulaic, SymPy and pandas, but
not PyBLP, whose bundled data the nevo, blp and petrin problems read), first, here, in the repository root::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux2014_x86_64 -d .whl pyblp pyhdfe

then one ``run`` with ``carry=[".whl", "data/mixtape"]`` and ``timeout_s=540``::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
    PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py --out $OUT

and record the figures in ``benchmarks/README.md`` with the device named. ``--quick`` runs a small version of
every part (a check of the script on a CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROBLEMS = ("nevo", "blp", "petrin", "mixtape_ex2", "mixtape_ex3")


def problem_child(name: str, repeats: int) -> dict:
    """One problem in this process: floor pass, first solve, warm solves."""
    sys.path.insert(0, str(HERE))
    from compare_pyblp import CASES
    from floor import floor_pass

    case = CASES[name]()
    if case is None:
        return {"problem": name, "skipped": "data not available"}
    t0 = time.perf_counter()
    problem = case.blpjax_problem()
    setup_s = time.perf_counter() - t0
    T, J = problem.setup.mask.shape
    I = problem.setup.market.weights.shape[1]
    options = dict(case.blpjax_solve, throw=False)
    t0 = time.perf_counter()
    res = problem.solve(**options)
    first = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = problem.solve(**options)
        warm.append(time.perf_counter() - t0)
    floor = floor_pass(T, J, I, 50)
    evaluations = int(res.final.objective_evaluations)
    per_evaluation = statistics.median(warm) / evaluations
    return {
        "problem": name,
        "T": T,
        "J": J,
        "I": I,
        "setup_s": setup_s,
        "first_s": first,
        "warm_s": warm,
        "evaluations": evaluations,
        "floor_pass_s": floor,
        "passes_per_evaluation": per_evaluation / floor,
        "objective": float(res.objective),
        "converged": bool(res.converged),
        "contraction": {k: v for k, v in res.contraction_summary.items() if k != "failed_markets"},
    }


def monte_carlo_child(replications: int, markets: int) -> dict:
    """The Monte Carlo benchmark's design (``monte_carlo.py``), blpjax only: replications vmapped in batches."""
    import jax
    import numpy as np

    sys.path.insert(0, str(HERE))
    from monte_carlo import sigma_bounds, time_blpjax

    import blpjax
    from blpjax.internal import SIMULATED_SPECIFICATION, default_batch_size, simulate_replications, stack_problems

    config = blpjax.SimulationConfig(markets=markets, products=(5, 5), agents=20)
    sigma, pi = np.diag(config.sigma), np.asarray(config.pi, np.float64).reshape(2, 1)
    data, _ = simulate_replications(config, replications, seed=0)
    problems = [blpjax.Problem(p, agent_data=a, **SIMULATED_SPECIFICATION) for p, a in data]
    spec = problems[0].parameter_spec(sigma, pi, sigma_bounds=sigma_bounds(sigma))
    stacked = jax.block_until_ready(stack_problems(problems, spec))
    batch = default_batch_size(replications)
    out, first, times = time_blpjax(spec, stacked, 2, batch, 2)
    converged = np.asarray(out[-1].converged) if hasattr(out[-1], "converged") else None
    return {
        "replications": replications,
        "markets": markets,
        "batch_size": batch,
        "first_s": first,
        "warm_s": times,
        "replications_per_minute": 60 * replications / min(times),
        "converged": None if converged is None else int(converged.sum()),
    }


def _run(args: list[str], limit: float) -> tuple[str, float]:
    """Run this script (or another) in a fresh process with a time limit: (stdout, seconds)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return out + f"\nTIMEOUT after {limit:.0f} s", time.perf_counter() - t0
    if proc.returncode:
        return proc.stdout + "\nFAILED\n" + proc.stderr[-3000:], time.perf_counter() - t0
    return proc.stdout, time.perf_counter() - t0


def _result(stdout: str):
    return json.loads(stdout.split("RESULT", 1)[1].splitlines()[0]) if "RESULT" in stdout else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes: a check of the script itself")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "monte_carlo":
        print("RESULT" + json.dumps(monte_carlo_child(10 if args.quick else 100, 5 if args.quick else 50)))
        return 0
    if args.child:
        print("RESULT" + json.dumps(problem_child(args.child, args.repeats)))
        return 0

    import jax

    device = jax.devices()[0]
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": f"{device.platform}: {device.device_kind}",
        "host_cores": os.cpu_count(),
        "load_start": os.getloadavg()[0],
    }
    print(f"{meta['device']}, {meta['host_cores']} host cores, load {meta['load_start']:.2f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    rows = []
    for name in args.problems:
        stdout, seconds = _run([__file__, "--child", name, "--repeats", str(args.repeats)], 90)
        row = _result(stdout)
        if row is None:
            print(f"{name}: no result after {seconds:.0f} s\n{stdout[-2000:]}", flush=True)
            continue
        rows.append(row)
        if "skipped" in row:
            print(f"{name}: skipped ({row['skipped']})", flush=True)
            continue
        cpu = HERE / "results" / f"{name}.json"
        pyblp_s = json.loads(cpu.read_text()).get("pyblp_s") if cpu.exists() else None
        warm = statistics.median(row["warm_s"])
        ratio = f", {pyblp_s / warm:.1f}× PyBLP's recorded CPU {pyblp_s:.2f} s" if pyblp_s else ""
        print(
            f"{name:12s} {row['T']}×{row['J']}×{row['I']}: first {row['first_s']:.2f} s, warm {warm:.3f} s{ratio}; "
            f"{row['evaluations']} evaluations, {row['passes_per_evaluation']:.1f} floor passes each",
            flush=True,
        )
    (args.out / "gpu_problems.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")

    sweep_out = args.out / "gpu_contraction_sweep.json"
    sweep = [str(HERE / "contraction_sweep.py"), "--out", str(sweep_out), "--repeats", "2"]
    sweep += ["--sizes", "10x20x100,50x50x500"] if args.quick else ["--max-elements", "2e9"]
    stdout, seconds = _run(sweep, 120)
    print(stdout[-4000:], f"(contraction sweep: {seconds:.0f} s)", flush=True)

    stdout, seconds = _run([__file__, "--child", "monte_carlo"] + (["--quick"] if args.quick else []), 90)
    mc = _result(stdout)
    if mc is None:
        print(f"Monte Carlo: no result after {seconds:.0f} s\n{stdout[-2000:]}", flush=True)
    else:
        print(
            f"Monte Carlo: {mc['replications']} replications of T={mc['markets']}, first {mc['first_s']:.1f} s, "
            f"warm {min(mc['warm_s']):.2f} s = {mc['replications_per_minute']:.0f} replications per minute",
            flush=True,
        )
        (args.out / "gpu_monte_carlo.json").write_text(json.dumps(dict(meta=meta, **mc), indent=1) + "\n")
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
