"""PyBLP's ``Simulation``: synthetic markets at known parameters, with Bertrand–Nash prices and shares
(``replace_endogenous``) or with the exogenous characteristic that makes given prices and shares consistent
(``replace_exogenous``), turned into a :class:`Problem`.

The numerics are the post-estimation ones: demand at other prices and the ζ-markup fixed point of
:mod:`.._supply.equilibrium` through :class:`.._post.fitted.Fitted` (per market, vmapped, a status per market), and
the share inversion of :mod:`.._inversion` for ``replace_exogenous``.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._base.errors import BLPEstimationError, BLPNumericalWarning, BLPSpecificationError, Status
from .._inversion.contraction import ContractionConfig
from .._inversion.implicit import solve_delta
from .._post.fitted import CostTerms, Fitted
from .data import CONSTANT
from .formulas import (
    check_costs_design,
    compile_terms,
    evaluate,
    is_formula,
    parse,
    referenced_columns,
    referenced_terms,
    symbols_design,
)
from .problem import Problem
from .supply_data import endogenous_columns


@dataclasses.dataclass(frozen=True)
class SimulationResults:
    """What :meth:`Simulation.replace_endogenous` / :meth:`Simulation.replace_exogenous` return.

    Attributes:
        product_data: the simulation's product data with the replaced columns (``prices`` and ``shares``, or the
            exogenous characteristics), in the input's row order and index.
        costs: marginal costs per row (replace_endogenous: those used; replace_exogenous: those the first-order
            conditions imply at the given prices, when ``X3_name`` is given), else None.
        delta: mean utilities per row at the simulated prices.
        status: per market, the fixed point's :class:`Status` code (0: converged).
        evaluations: per market, the fixed point's evaluations.
        simulation: the :class:`Simulation`.
    """

    product_data: pd.DataFrame
    costs: np.ndarray | None
    delta: np.ndarray
    status: np.ndarray
    evaluations: np.ndarray
    simulation: Simulation

    def to_problem(self, linear=None, nonlinear=None, costs=None, **kwargs) -> Problem:
        """A :class:`Problem` on the simulated data: the simulation's specification, agents and integration unless
        given (``kwargs`` go to :class:`Problem`, e.g. ``absorb``). The product data must carry instruments
        (``demand_instruments*``, and ``supply_instruments*`` with costs) for estimation."""
        sim = self.simulation
        options = dict(
            agent_data=sim.agent_data,
            demographics=sim.demographics,
            integration=sim.integration,
            costs_type=sim.costs_type,
            price_derivatives=sim.price_derivatives,
            rho_by_nest=sim.rho_by_nest,
            rc_types=sim.rc_types,
        )
        options.update(kwargs)
        return Problem(
            self.product_data,
            sim.linear if linear is None else linear,
            sim.nonlinear if nonlinear is None else nonlinear,
            costs=sim.costs if costs is None else costs,
            **options,
        )


class Simulation:
    """Synthetic markets at known parameters (PyBLP's ``Simulation``, its argument names where the concept is the same).

    Args:
        product_data: ``market_ids``, ``firm_ids`` and every characteristic of ``linear``, ``nonlinear`` and ``costs``
            (``prices`` and ``shares`` are needed only by :meth:`replace_exogenous`; optional ``nesting_ids``,
            ``product_ids``, instruments, which :meth:`SimulationResults.to_problem` carries over).
        linear, nonlinear, costs: column names of X1, X2 and X3 (``"1"`` is the constant), as in :class:`Problem`.
        agent_data, demographics, integration: agents, as in :class:`Problem`.
        beta, sigma, pi, rho, gamma: the true parameters (β one per X1 column, γ one per X3 column).
        xi, omega: demand and cost unobservables per row (aligned by the index of a Series); when None both are
            drawn from a bivariate normal with ``xi_variance``, ``omega_variance`` and ``correlation`` (NumPy's
            generator with ``seed``: not PyBLP's stream; pass them to reproduce a PyBLP simulation).
        costs_type: ``"linear"`` (c = X3γ + ω) or ``"log"`` (log c = X3γ + ω).
        price_derivatives, rho_by_nest, rc_types: as in :class:`Problem`. ``linear``, ``nonlinear`` and ``costs`` may be
            formulas, as in :class:`Problem`: terms of prices are re-evaluated at the simulated prices, and cost terms of
            shares (``costs="1 + z + log(shares)"``) at the simulated shares with ``constant_costs=False``.
    """

    def __init__(
        self,
        product_data: pd.DataFrame,
        linear: Sequence[str],
        nonlinear: Sequence[str] = (),
        costs: Sequence[str] = (),
        *,
        beta,
        sigma=None,
        pi=None,
        rho=None,
        gamma=None,
        agent_data: pd.DataFrame | None = None,
        demographics: Sequence[str] = (),
        integration=None,
        xi=None,
        omega=None,
        xi_variance: float = 1.0,
        omega_variance: float = 1.0,
        correlation: float = 0.9,
        seed: int | None = None,
        costs_type: str = "linear",
        price_derivatives: dict | None = None,
        rho_by_nest: bool = False,
        rc_types=None,
    ):
        if not isinstance(product_data, pd.DataFrame):
            raise BLPSpecificationError(f"product_data must be a pandas DataFrame, not {type(product_data).__name__}.")
        for name in ("market_ids", "firm_ids"):
            if name not in product_data.columns:
                raise BLPSpecificationError(f"Simulation needs a '{name}' column in product_data.")
        if costs_type not in ("linear", "log"):
            raise BLPSpecificationError(f"costs_type must be 'linear' or 'log', not {costs_type!r}.")
        self.product_data = product_data
        # each a column-name tuple or a formula string (as in Problem)
        self.linear, self.nonlinear, self.costs = (v if is_formula(v) else tuple(v) for v in (linear, nonlinear, costs))
        self.costs_type = costs_type
        self.agent_data, self.integration = agent_data, integration
        self.demographics = demographics if is_formula(demographics) else tuple(demographics)
        self.price_derivatives, self.rho_by_nest, self.rc_types = price_derivatives, rho_by_nest, rc_types
        self.sigma, self.pi, self.rho = sigma, pi, rho
        # the layout (rows, markets, agents) and the parameters' structure; characteristics replace_exogenous may
        # solve for can be missing from the data, so they get placeholders
        base = self._problem(product_data, placeholders=tuple(sorted(self._referenced(categorical=False))))
        self._base = base
        self.linear_names = base.linear
        self.cost_names = self._designs["costs"].names if self.costs else ()
        self.beta = _vector(beta, len(self.linear_names), "beta", "linear")
        self.gamma = _vector(np.zeros(0) if gamma is None else gamma, len(self.cost_names), "gamma", "costs")
        N = base.N
        if xi is None or omega is None:
            rng = np.random.default_rng(seed)
            covariance = np.array(
                [
                    [xi_variance, correlation * np.sqrt(xi_variance * omega_variance)],
                    [correlation * np.sqrt(xi_variance * omega_variance), omega_variance],
                ]
            )
            draws = rng.multivariate_normal(np.zeros(2), covariance, size=N)
        self.xi = draws[:, 0] if xi is None else base.index.aligned(xi, "xi")
        self.omega = draws[:, 1] if omega is None else base.index.aligned(omega, "omega")
        self.spec = base.parameter_spec(sigma, pi, rho)

    # --- internal: a Problem on the data with placeholders where replace_* supplies values ------------------
    def _referenced(self, categorical: bool = True) -> set[str]:
        """The data columns X1 and X2 read (besides prices and the constant)."""
        names: set[str] = set()
        for spec in (self.linear, self.nonlinear):
            names |= referenced_columns(spec, categorical) if is_formula(spec) else set(spec)
        return names - {CONSTANT, "prices", "shares"}

    @functools.cached_property
    def _designs(self) -> dict:
        """The parsed X1, X2 and X3 on the data (missing characteristics and shares as placeholders)."""
        names = set(self._referenced())
        if is_formula(self.costs):
            names |= referenced_columns(self.costs)
        else:
            names |= set(self.costs)
        missing = sorted(c for c in names - {CONSTANT, "prices", "shares"} if c not in self.product_data.columns)
        df = self.product_data.assign(**{c: 1.0 for c in missing})
        if "shares" not in df.columns:
            df = df.assign(shares=0.5)
        if "prices" not in df.columns:
            df = df.assign(prices=1.0)
        return {
            role: parse(spec, df, "product_data") if is_formula(spec) else symbols_design(tuple(spec))
            for role, spec in (("linear", self.linear), ("nonlinear", self.nonlinear), ("costs", self.costs))
        }

    def _readers(self, name: str) -> dict[str, list[str]]:
        """Per part (linear, nonlinear, costs): the columns that read the data column ``name``."""
        return {
            role: [n for n, r in zip(design.names, design.reads(name), strict=True) if r]
            for role, design in self._designs.items()
        }

    def _problem(self, data: pd.DataFrame, prices=None, shares=None, placeholders=()) -> Problem:
        df = data.copy()
        # characteristics being solved for: any values (random and positive: not collinear, finite under log)
        for k, column in enumerate(placeholders):
            df[column] = np.random.default_rng([k, 271828]).uniform(0.5, 1.5, len(df))
        counts = df.groupby("market_ids", sort=False)["market_ids"].transform("size").to_numpy()
        if shares is not None:
            df["shares"] = shares
        elif "shares" not in df.columns:
            df["shares"] = 1.0 / (counts + 1.0)  # a placeholder: replace_endogenous computes them
        if prices is not None:
            df["prices"] = prices
        elif "prices" not in df.columns:
            df["prices"] = np.linspace(1.0, 2.0, len(df))  # a placeholder (not collinear with a constant)
        if is_formula(self.linear):  # at most one endogenous column per term
            needed = len(referenced_terms(self.linear))
        else:
            needed = len([c for c in self.linear if c in endogenous_columns(self.linear, self.price_derivatives, ())])
        have = [c for c in df.columns if str(c).startswith("demand_instruments")]
        # placeholders (random, so not collinear with X1): the internal problem is never estimated
        if len(have) < needed:
            df = df.drop(columns=have)
            for k in range(needed):
                df[f"demand_instruments{k}"] = np.random.default_rng([99, k, 271828]).standard_normal(len(df))
        return Problem(
            df,
            self.linear,
            self.nonlinear,
            agent_data=self.agent_data,
            demographics=self.demographics,
            integration=self.integration,
            price_derivatives=self.price_derivatives,
            rho_by_nest=self.rho_by_nest,
            rc_types=self.rc_types,
        )

    def _cost_design(self, data: pd.DataFrame):
        """(X3 Terms, inputs (N, C), X3 (N, K3)) on ``data`` (shares 1/(J + 1) where the data have none)."""
        df = data
        if "shares" not in df.columns:
            counts = df.groupby("market_ids", sort=False)["market_ids"].transform("size").to_numpy()
            df = df.assign(shares=1.0 / (counts + 1.0))
        design = parse(self.costs, df, "product_data") if is_formula(self.costs) else symbols_design(self.costs)
        check_costs_design(design, self.costs)
        (terms,), inputs = compile_terms([design], df, "product_data")
        return terms, inputs, evaluate(terms, inputs, df, str(self.costs), "product_data")

    def _X3(self, problem: Problem, data: pd.DataFrame | None = None) -> np.ndarray:
        return self._cost_design(self.product_data if data is None else data)[2]

    def _fitted(self, problem: Problem, delta_rows) -> Fitted:
        dX1, dX2 = problem.price_derivatives
        return Fitted.build(
            self.spec,
            jnp.asarray(self.spec.x0),
            jnp.asarray(self.beta),
            jnp.asarray(self.gamma),
            jnp.asarray(problem.index.padded(delta_rows)),
            problem.setup.market,
            problem.products.prices,
            jnp.asarray(dX1),
            jnp.asarray(dX2),
            problem.products.firm_ids,
            problem.products.shares,
            problem.price_terms,
        )

    def _linear_utility(self, problem: Problem) -> np.ndarray:
        X1 = problem.index.flat(np.asarray(problem.products.X1))
        return X1 @ self.beta + self.xi

    def _costs(self, problem: Problem, data: pd.DataFrame | None = None) -> np.ndarray:
        index = self._X3(problem, data) @ self.gamma + self.omega
        return index if self.costs_type == "linear" else np.exp(index)

    def _check(self, status, problem: Problem, what: str, throw: bool):
        status = np.asarray(status)
        if not status.any():
            return
        bad = np.flatnonzero(status)
        markets = list(np.asarray(problem.index.market_ids)[bad][:5])
        explanation = "; ".join(sorted({Status(int(s)).explain() for s in status[bad]}))
        message = f"{what} did not converge in {len(bad)} market(s) {markets}: {explanation}"
        if throw:
            raise BLPEstimationError(message + ". Pass throw=False to get the last iterates with a warning.")
        warnings.warn(message, BLPNumericalWarning, stacklevel=3)

    # --- the two routes ---------------------------------------------------------------------------------------
    def replace_endogenous(
        self,
        costs=None,
        prices=None,
        iteration: ContractionConfig | None = None,
        constant_costs: bool = True,
        throw=True,
    ) -> SimulationResults:
        """Bertrand–Nash prices and the shares at them, given X1, X2, X3, ξ, ω and the parameters.

        ``costs`` (per row; default X3γ + ω, or its exponential with log costs) and starting ``prices`` (default: the
        costs, as PyBLP); ``iteration``: a simple-iteration :class:`ContractionConfig` (default tol 1e-12 on the
        |Λ|-weighted step, as PyBLP). A market whose prices do not converge raises (``throw=True``) or warns.
        """
        if iteration is not None and not isinstance(iteration, ContractionConfig):
            raise BLPSpecificationError("iteration must be a blpjax.ContractionConfig(method='simple', ...).")
        if not self.costs and (costs is None or not constant_costs):
            raise BLPSpecificationError(
                "replace_endogenous needs costs: give costs= or cost characteristics and gamma"
                + ("" if constant_costs else " (constant_costs=False re-evaluates the cost characteristics)")
                + "."
            )
        c = self._costs(self._base) if costs is None else self._base.index.aligned(costs, "costs")
        p0 = c if prices is None else self._base.index.aligned(prices, "prices")
        problem = self._problem(self.product_data, prices=p0)  # X1 and X2 at the starting prices
        index = problem.index
        delta0 = self._linear_utility(problem)
        fitted = self._fitted(problem, delta0)
        share_costs = None
        if not constant_costs:
            terms, inputs, _ = self._cost_design(self.product_data)
            if not any(terms.reads("shares")):
                raise BLPSpecificationError(
                    "constant_costs=False re-evaluates cost characteristics that depend on shares, but none does here: "
                    "drop the argument, or state them in the costs formula (e.g. costs='1 + z + log(shares)')."
                )
            padded = index.padded(inputs)
            padded = np.where((index.rows >= 0)[..., None], padded, padded[:, :1, :])
            moving = tuple(n for n, r in zip(terms.names, terms.reads("shares"), strict=True) if r)
            share_costs = CostTerms(jnp.asarray(padded), terms, self.costs_type == "log", moving)
        solved = jax.jit(Fitted.compute_prices)(
            fitted, None, jnp.asarray(index.padded(c)), None, iteration, share_costs
        )
        self._check(solved.status, problem, "equilibrium prices", throw)
        shares = jax.jit(Fitted.compute_shares)(fitted, solved.x)
        out = self.product_data.copy()
        out["prices"] = index.flat(np.asarray(solved.x))
        out["shares"] = index.flat(np.asarray(shares))
        if share_costs is not None:  # the costs at the simulated shares
            change = (self._X3(problem, out) - self._X3(problem)) @ self.gamma
            c = c * np.exp(change) if self.costs_type == "log" else c + change
        # δ at the new prices: X1 re-evaluated (formulas), or moved as price_derivatives says (∂δ/∂p = ∂X1/∂p · β)
        if problem.price_terms is not None:
            x1_terms, _, inputs = problem.price_terms
            moved = x1_terms.with_input(inputs, "prices", solved.x)
            delta = index.flat(np.asarray(x1_terms(moved))) @ self.beta + self.xi
        else:
            d_delta = index.flat(np.asarray(problem.price_derivatives[0])) @ self.beta
            delta = delta0 + d_delta * (out["prices"].to_numpy() - p0)
        return SimulationResults(out, c, delta, np.asarray(solved.status), np.asarray(solved.evaluations), self)

    def replace_exogenous(
        self, X1_name: str, X3_name: str | None = None, iteration: ContractionConfig | None = None, throw=True
    ) -> SimulationResults:
        """The X1 characteristic ``X1_name`` (and X3 characteristic ``X3_name``) that make the data's ``prices`` and
        ``shares`` consistent with the true parameters: δ is solved from the shares at the true θ and the
        characteristic from δ = X1β + ξ; with ``X3_name``, costs from the first-order conditions at the data's prices
        and ownership, and the characteristic from c = X3γ + ω (log c with log costs). The characteristics may appear
        only linearly (``X1_name`` not in X2 or X3, ``X3_name`` only in X3), with a non-zero coefficient.
        """
        for column in ("prices", "shares"):
            if column not in self.product_data.columns:
                raise BLPSpecificationError(f"replace_exogenous needs '{column}' in product_data.")
        readers = self._readers(X1_name)
        if readers["linear"] != [X1_name] or X1_name in (CONSTANT, "prices") or readers["nonlinear"]:
            raise BLPSpecificationError(
                f"X1_name must be an exogenous X1 column that no other X1 column and no X2 column reads (one of "
                f"{[c for c in self.linear_names if self._readers(c)['linear'] == [c] and c not in (CONSTANT, 'prices') and not self._readers(c)['nonlinear']]}), not {X1_name!r}."
            )
        if readers["costs"] and X3_name != X1_name:
            raise BLPSpecificationError(f"{X1_name!r} is also in X3: replace it in both (X3_name={X1_name!r}).")
        k1 = self.linear_names.index(X1_name)
        if self.beta[k1] == 0:
            raise BLPSpecificationError(f"beta on {X1_name!r} is zero: the characteristic does not move mean utility.")
        config = iteration or ContractionConfig()
        problem = self._problem(self.product_data, placeholders=(X1_name,))
        index = problem.index
        theta = self.spec.unpack(jnp.asarray(self.spec.x0))
        delta0 = jnp.asarray(problem.logit_delta())
        solved = jax.jit(jax.vmap(solve_delta, in_axes=(None, 0, 0, None)))(theta, problem.setup.market, delta0, config)
        self._check(solved.status, problem, "the share inversion", throw)
        delta = index.flat(np.asarray(solved.x))
        out = self.product_data.copy()
        X1 = index.flat(np.asarray(problem.products.X1))
        rest = X1 @ self.beta - X1[:, k1] * self.beta[k1]
        out[X1_name] = (delta - self.xi - rest) / self.beta[k1]
        costs = None
        if X3_name is not None:
            if self._readers(X3_name)["costs"] != [X3_name] or X3_name == CONSTANT:
                raise BLPSpecificationError(
                    f"X3_name must be a cost characteristic in {list(self.cost_names)} that no other X3 column reads, "
                    f"not {X3_name!r}."
                )
            k3 = self.cost_names.index(X3_name)
            if self.gamma[k3] == 0:
                raise BLPSpecificationError(f"gamma on {X3_name!r} is zero: the characteristic does not move costs.")
            fitted = self._fitted(problem, delta)
            costs = index.flat(np.asarray(jax.jit(Fitted.compute_costs)(fitted)))
            target = costs if self.costs_type == "linear" else np.log(costs)
            X3 = self._X3(problem, self.product_data.assign(**{X3_name: 1.0}))  # its own column is not used
            rest3 = X3 @ self.gamma - X3[:, k3] * self.gamma[k3]
            value = (target - self.omega - rest3) / self.gamma[k3]
            if X3_name == X1_name and not np.allclose(value, out[X1_name], rtol=1e-8, atol=1e-12):
                raise BLPSpecificationError(
                    f"{X1_name!r} is in X1 and X3, and no single value is consistent with both the shares and the costs."
                )
            out[X3_name] = value
        return SimulationResults(out, costs, delta, np.asarray(solved.status), np.asarray(solved.evaluations), self)


def _vector(values, size: int, name: str, columns: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size != size:
        raise BLPSpecificationError(f"{name} must have one value per {columns} column ({size}), not {v.size}.")
    if not np.all(np.isfinite(v)):
        raise BLPSpecificationError(f"{name} must be finite.")
    return v
