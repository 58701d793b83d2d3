"""Many starting points as one program: K optimisations of the first GMM step vmapped, the best one estimated.

Knittel and Metaxoglou (2014) showed that BLP estimates can depend on the optimiser and the start. Checking that
takes one call: ``problem.solve(sigma, pi, starts=100)`` draws 100 starts, minimises the first step's q from each
in one jitted, vmapped optax program (``throw=False`` inside: a start that fails is a row of the table, not an
exception), estimates from the best optimum as :meth:`Problem.solve` would (the remaining GMM step, statistics), and
reports every start and the distinct local optima in ``results.starts``.
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
import numpy as np
import pandas as pd

from .._base.errors import BLPSpecificationError
from .._estimation.driver import StartsOutcome, initial_update, minimize_starts
from .._estimation.optimize import OptaxOptimizer
from .._estimation.replications import default_batch_size
from .._model.params import ParameterSpec

#: objectives within this relative distance (or this absolute one, for optima at q ≈ 0 of just-identified models)
#: count as one local optimum
SAME_OPTIMUM_RTOL = 1e-6
SAME_OPTIMUM_ATOL = 1e-10


class MultiStart(eqx.Module):
    """How :meth:`Problem.solve` draws and runs many starting points (``starts=`` takes this, an int or an array).

    Attributes:
        number: K random starts; each free parameter is drawn uniformly within its bounds where both are finite,
            else within ±100% of its given starting value (±1 around a zero start), cut at a finite bound. Fixed
            zeros stay fixed (they are not free parameters).
        points: instead of ``number``, the starts themselves: an array (K, P) of free-parameter vectors in the order
            of ``problem.objective(...).labels`` (Σ, Π, ρ's free entries), each within the bounds.
        seed: the random draws' seed.
        batch_size: starts vmapped at a time (``lax.map`` over batches); default all on an accelerator, one at a time
            on CPU (as a Monte Carlo's replications: a vmapped loop runs until its slowest member stops).
    """

    number: int | None = eqx.field(static=True, default=None)
    points: np.ndarray | None = None
    seed: int = eqx.field(static=True, default=0)
    batch_size: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if (self.number is None) == (self.points is None):
            raise BLPSpecificationError("MultiStart needs exactly one of number (K random starts) or points (K × P).")
        if self.number is not None and (
            isinstance(self.number, bool) or not isinstance(self.number, int) or self.number < 1
        ):
            raise BLPSpecificationError(f"MultiStart.number must be a positive integer, not {self.number!r}.")
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise BLPSpecificationError(
                f"MultiStart.batch_size must be a positive integer or None, not {self.batch_size!r}."
            )

    @classmethod
    def of(cls, starts) -> MultiStart:
        """``starts=`` as given to :meth:`Problem.solve`: a :class:`MultiStart`, K, or an array of starts."""
        if isinstance(starts, MultiStart):
            return starts
        if isinstance(starts, int) and not isinstance(starts, bool):
            return cls(number=starts)
        if isinstance(starts, np.ndarray | list | tuple | pd.DataFrame):
            return cls(points=np.asarray(starts, np.float64))
        raise BLPSpecificationError(
            f"starts must be a number of random starts, an array (K, P) of starting points or a blpjax.MultiStart, "
            f"not {type(starts).__name__}."
        )

    def draw(self, spec: ParameterSpec) -> np.ndarray:
        """The starts (K, P), checked against the bounds."""
        lower, upper, x0 = np.asarray(spec.lower), np.asarray(spec.upper), np.asarray(spec.x0)
        P = x0.size
        if self.points is not None:
            X = np.atleast_2d(self.points)
            if X.ndim != 2 or X.shape[1] != P:
                raise BLPSpecificationError(
                    f"starting points must be an array (K, {P}) of the free parameters {list(spec.labels)}, not of "
                    f"shape {np.shape(self.points)}."
                )
            if not np.all(np.isfinite(X)):
                k, p = np.argwhere(~np.isfinite(X))[0]
                raise BLPSpecificationError(f"starting point {k} has a non-finite {spec.labels[p]}.")
            outside = (X < lower) | (X > upper)
            if outside.any():
                k, p = np.argwhere(outside)[0]
                raise BLPSpecificationError(
                    f"starting point {k} has {spec.labels[p]} = {X[k, p]:g} outside its bounds "
                    f"[{lower[p]:g}, {upper[p]:g}]."
                )
            return X
        half = np.where(x0 != 0, np.abs(x0), 1.0)
        bounded = np.isfinite(lower) & np.isfinite(upper)
        lo = np.where(bounded, lower, np.maximum(x0 - half, lower))
        hi = np.where(bounded, upper, np.minimum(x0 + half, upper))
        rng = np.random.default_rng(self.seed)
        return lo + (hi - lo) * rng.random((self.number, P))


class StartsReport:
    """What many starts found (``results.starts``).

    Attributes:
        table: one row per start: its starting values (``start <label>``), its optimum (``<label>``), ``objective``,
            ``gradient_norm`` (largest projected gradient entry), ``converged`` (optimiser criterion met and every
            share inversion converged there), ``iterations``, ``evaluations``, ``optimum`` (its local optimum's
            number in ``optima``, by objective; −1 where the objective is not finite).
        optima: the distinct local optima among finite objectives, best first (objectives within 1e-6 relative count
            as one, or within 1e-10 absolute near q = 0): ``objective``, ``starts`` (how many reached it), ``converged`` (how many of those converged),
            and the parameters of its best start.
        best: the row of ``table`` whose optimum the estimate starts from (the lowest converged objective, else the
            lowest finite one).
        seconds: wall time of the many-starts program (compilation included).
    """

    def __init__(self, labels, X0: np.ndarray, out: StartsOutcome, lower, upper, seconds: float):
        labels = list(labels)
        x = np.asarray(out.x)
        q = np.asarray(out.objective, np.float64)
        g = np.asarray(out.gradient)
        # the largest projected gradient entry (a bound that is active and pushed against does not count)
        g_proj = np.where(((x <= lower) & (g > 0)) | ((x >= upper) & (g < 0)), 0.0, g)
        table = pd.DataFrame(X0, columns=[f"start {label}" for label in labels])
        for i, label in enumerate(labels):
            table[label] = x[:, i]
        table["objective"] = q
        table["gradient_norm"] = np.max(np.abs(g_proj), axis=1) if g.size else 0.0
        table["converged"] = np.asarray(out.success, bool)
        table["iterations"] = np.asarray(out.iterations, np.int64)
        table["evaluations"] = np.asarray(out.evaluations, np.int64)
        finite = np.isfinite(q)
        order = np.argsort(np.where(finite, q, np.inf), kind="stable")
        group = np.full(len(q), -1)
        groups: list[list[int]] = []
        for k in order[: int(finite.sum())]:
            head = q[groups[-1][0]] if groups else np.nan
            if groups and abs(q[k] - head) <= max(SAME_OPTIMUM_RTOL * abs(head), SAME_OPTIMUM_ATOL):
                groups[-1].append(k)
            else:
                groups.append([k])
            group[k] = len(groups) - 1
        table["optimum"] = group
        rows = []
        for members in groups:
            head = members[0]
            row = {
                "objective": q[head],
                "starts": len(members),
                "converged": int(table["converged"].iloc[members].sum()),
            }
            row.update({label: x[head, i] for i, label in enumerate(labels)})
            rows.append(row)
        self.optima = pd.DataFrame(rows, columns=["objective", "starts", "converged", *labels])
        converged = table["converged"].to_numpy() & finite
        pool = np.flatnonzero(converged) if converged.any() else np.flatnonzero(finite)
        if pool.size == 0:
            raise BLPSpecificationError(
                "no start reached a finite objective: every share inversion or optimisation failed. Narrow the "
                "starts (MultiStart(points=...)) or the bounds."
            )
        self.best = int(pool[np.argmin(q[pool])])
        self.table = table
        self.seconds = seconds

    def __repr__(self) -> str:
        ok = int(self.table["converged"].sum())
        return (
            f"StartsReport: {len(self.table)} starts, {ok} converged, {len(self.optima)} distinct optima "
            f"(best objective {self.optima['objective'].iloc[0]:.10g}), {self.seconds:.1f} s; the best 10 optima:\n"
            f"{self.optima.head(10).to_string()}"
        )


def run_starts(multistart: MultiStart, prep, optimizer, se_type: str, W_type: str):
    """The many-starts program of a prepared solve: (report, the best optimum x, the first step's W)."""
    if not isinstance(optimizer, OptaxOptimizer):
        raise BLPSpecificationError(
            "many starts run as one vmapped optax program: pass optimizer=blpjax.OptaxOptimizer(...) (or none) "
            "with starts=, not a ScipyOptimizer (which runs on the host, one start at a time)."
        )
    spec, engine = prep.spec, prep.engine
    X0 = multistart.draw(spec)
    W = prep.W
    if W is None:  # micro moments without W: the initial update at the given starting values, as solve does
        W, _ = initial_update(engine, spec.x0, prep.delta0, prep.initial_W, prep.MM, se_type, W_type, host=True)
    conc = engine.concentration(np.asarray(W))
    batch = multistart.batch_size or default_batch_size(X0.shape[0])
    t0 = time.perf_counter()
    out = minimize_starts(engine, optimizer, X0, prep.delta0, conc, spec.lower, spec.upper, batch)
    out = jax.tree_util.tree_map(np.asarray, out)  # one transfer to the host
    report = StartsReport(
        spec.labels, X0, out, np.asarray(spec.lower), np.asarray(spec.upper), time.perf_counter() - t0
    )
    return report, np.asarray(out.x[report.best]), np.asarray(W)
