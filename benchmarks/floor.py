"""How far each problem is from this machine's memory floor: objective evaluations as a number of fused passes.

The floor is the least work a contraction evaluation can do: one jitted, fused pass over the problem's padded
T × J × I elements with exp(μ) stored (exp(δ) times it, normalised per agent, a weighted sum over agents), the
median of ``--passes`` repeats. Each problem is then run by ``compare_pyblp.run_case`` (PyBLP with one BLAS
thread and blpjax in the same process, as ``compare_pyblp.py``), and blpjax's time per objective evaluation (warm
solve time / objective evaluations, gradient included) is reported as a number of floor passes, next to the
ratio to PyBLP. Results go to ``results/floor.json``.

    python benchmarks/floor.py --problems nevo blp mixtape_ex2 mixtape_ex3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare_pyblp as cp  # noqa: E402  (pins PyBLP's BLAS to one thread before NumPy is imported)


def floor_pass(T: int, J: int, I: int, repeats: int) -> float:
    """Median seconds of one fused share pass over (T, J, I) elements."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    E = jnp.asarray(np.exp(rng.normal(size=(T, I, J))))
    expd = jnp.asarray(np.exp(rng.normal(size=(T, J))))
    w = jnp.full((T, I), 1.0 / I)

    @jax.jit
    def shares(E, expd, w):
        num = E * expd[:, None, :]
        return jnp.einsum("ti,tij->tj", w, num / (1.0 + jnp.sum(num, axis=-1, keepdims=True)))

    shares(E, expd, w).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        shares(E, expd, w).block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="+", default=["nevo", "blp", "mixtape_ex2", "mixtape_ex3"])
    parser.add_argument("--repeats", type=int, default=3, help="warm blpjax solves (median)")
    parser.add_argument("--passes", type=int, default=50, help="repeats of the floor pass (median)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "floor.json")
    args = parser.parse_args()
    rows = []
    print(f"load {os.getloadavg()[0]:.2f} at start", flush=True)
    for name in args.problems:
        case = cp.CASES[name]()
        if case is None:
            print(f"{name}: data not available, skipped")
            continue
        problem = case.blpjax_problem()
        T, J = problem.setup.mask.shape
        I = problem.setup.market.weights.shape[1]
        floor = floor_pass(T, J, I, args.passes)
        r = cp.run_case(case, args.repeats)
        per_evaluation = r["blpjax_run_s"] / r["blpjax_objective_evaluations"]
        row = dict(
            problem=name,
            T=T,
            J=J,
            I=I,
            floor_pass_s=floor,
            blpjax_per_evaluation_s=per_evaluation,
            passes_per_evaluation=per_evaluation / floor,
            blpjax_warm_s=r["blpjax_run_s"],
            blpjax_first_s=r["blpjax_first_s"],
            pyblp_s=r["pyblp_s"],
            speedup_warm=r["speedup_warm"],
            speedup_cold=r["speedup_cold"],
            objective_rel_diff=r["objective_rel_diff"],
        )
        rows.append(row)
        print(
            f"{name:12s} T×J×I {T}×{J}×{I}: floor pass {1e3 * floor:.3f} ms; blpjax {1e3 * per_evaluation:.2f} ms per "
            f"objective evaluation = {row['passes_per_evaluation']:.1f} passes; warm {r['blpjax_run_s']:.3f} s "
            f"({r['speedup_warm']:.1f}× PyBLP's {r['pyblp_s']:.2f} s), first {r['blpjax_first_s']:.2f} s "
            f"({r['speedup_cold']:.1f}×)",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        device=cp.device_info(),
        load_average_1min_end=os.getloadavg()[0],
    )
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
