"""The public entry point: :class:`Problem` (data + specification) and its ``solve``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.linalg

from .._base.config import check_x64
from .._base.errors import BLPEstimationError, BLPSpecificationError
from .._engine.gmm import check_weighting_matrix, symmetric_inverse_host
from .._engine.setup import Setup
from .._estimation.driver import initial_update, run_steps
from .._estimation.optimize import OptaxOptimizer, ScipyOptimizer
from .._estimation.programs import Engine
from .._inversion.contraction import ContractionConfig
from .._layouts.scaleout import ScaleOut, make_layout
from .._micro.core import MicroSetup
from .._model.integration import Integration
from .._model.logit import logit_delta
from .._model.params import ParameterSpec, build_parameters, check_rc_types
from .._supply.bertrand import build_supply_setup
from .agent_data import build_agents
from .checks import check_epsilon_scale, check_solve_options
from .data import Specification, build_products
from .formulas import expand, is_formula, padded_terms
from .micro_data import MicroMoment, build_micro, market_views
from .objective import Objective
from .results import Results
from .starts import MultiStart, run_starts
from .summary import format_problem
from .supply_data import (
    build_supply_arrays,
    check_price_coefficients,
    endogenous_columns,
    price_derivative_arrays,
    warn_price_functions,
)


class _Prepared(NamedTuple):
    spec: ParameterSpec
    setup: Setup
    micro: MicroSetup | None
    micro_labels: object
    MM: int
    W: np.ndarray | None
    initial_W: np.ndarray
    delta0: jnp.ndarray
    config: ContractionConfig
    engine: Engine


class Problem:
    """A demand estimation problem: PyBLP-convention data and a specification by column names.

    Args:
        product_data: one row per product and market (``market_ids``, ``shares``, ``prices``,
            ``demand_instruments0``..., characteristics; optional ``product_ids``, ``firm_ids``,
            ``nesting_ids`` (makes the model nested), ``clustering_ids``).
        linear: columns of X1 (mean utility); ``"1"`` is the constant. ``prices`` is endogenous,
            every other X1 column is its own instrument. Every specification argument (``linear``,
            ``nonlinear``, ``costs``, ``absorb``, ``demographics``) also takes a formula string as PyBLP's
            ``Formulation`` (``"1 + prices + I(prices**2) + C(brand)"``): terms that involve prices are
            endogenous and differentiated by autodiff (README "Formulas").
        nonlinear: columns of X2 (random coefficients / demographic interactions).
        absorb: columns whose fixed effects are absorbed (e.g. ``("market_ids", "product_ids")``).
        agent_data: ``market_ids``, ``weights``, ``nodes0``.. and demographics.
        demographics: demographic columns of ``agent_data`` (columns of Π).
        integration: an :class:`Integration` rule to build nodes instead of ``nodes*`` columns.
        rho_by_nest: one ρ per nest instead of one shared ρ.
        costs: columns of X3 (marginal-cost characteristics; ``"1"`` is the constant). Non-empty adds
            a Bertrand–Nash supply side: needs ``firm_ids`` and ``supply_instruments0``..; the X3
            columns are their own instruments. Prices must enter utility through X2 only.
        costs_type: ``"linear"`` (c = X3γ + ω) or ``"log"`` (log c = X3γ + ω).
        costs_absorb: columns (or a formula such as ``"C(firm_ids)"``) whose fixed effects are absorbed from the
            cost equation, as PyBLP's ``absorb`` in the X3 formulation: f(c) = X3γ + FE + ω.
        price_derivatives: ∂column/∂price of X1/X2 columns other than ``prices`` (a number, or a
            column name for interactions), e.g. ``{"neg_prices": -1}`` for a column of −prices. Used by
            the supply side and by every price counterfactual (costs, markups, equilibrium prices). An X1
            column with a non-zero price derivative is endogenous: it is never its own instrument.
        rc_types: per X2 column, ``"linear"`` (default), ``"log"`` (the coefficient Σν_i + Πd_i is exponentiated:
            log-normal; its mean is a Π entry on a demographic column of ones) or ``"logit"``, as PyBLP's.
        epsilon_scale: λ, the scale of the logit error (PyBLP's): utility δ + μ + λε, so choice probabilities are those
            of (δ + μ)/λ; below 1 approaches the pure characteristics model. Not with nesting.
        endogenous: other X1 columns that are endogenous (not their own instruments; each needs an excluded
            instrument), e.g. a quality measure correlated with ξ. ``prices`` always is.
        devices: spread markets over devices: ``None`` (default device), an int n (the first n of
            ``jax.devices()``, all hosts after ``jax.distributed.initialize()``) or a list of devices.
        buckets: solve markets in at most this many (J, I) size classes (``"auto"``: up to 8), one
            program each, instead of padding all to the largest market. Not with ``devices``.
        market_batch_size: solve and differentiate this many markets at a time (bounds memory).
            See README "Large problems"; estimates equal the default path's to rounding.

    Example:
        >>> problem = Problem(df, linear=("prices",), absorb=("market_ids", "product_ids"))
        >>> results = problem.solve(method="1s")
    """

    def __init__(
        self,
        product_data: pd.DataFrame,
        linear: Sequence[str] = ("1", "prices"),
        nonlinear: Sequence[str] = (),
        absorb: Sequence[str] = (),
        agent_data: pd.DataFrame | None = None,
        demographics: Sequence[str] = (),
        integration: Integration | None = None,
        rho_by_nest: bool = False,
        costs: Sequence[str] = (),
        costs_type: str = "linear",
        price_derivatives: dict | None = None,
        endogenous: Sequence[str] = (),
        rc_types: Sequence[str] | None = None,
        costs_absorb: Sequence[str] | str = (),
        epsilon_scale: float = 1.0,
        devices=None,
        buckets: int | str | None = None,
        market_batch_size: int | None = None,
    ):
        check_x64()
        arguments = {"linear": linear, "nonlinear": nonlinear, "costs": costs, "absorb": absorb}
        arguments.update(demographics=demographics)
        self.formulas = {k: v for k, v in arguments.items() if is_formula(v)}
        self.expanded = expand(product_data, agent_data, *arguments.values(), price_derivatives, costs_absorb)
        if self.expanded is not None:  # formulas evaluated: their columns added to the data, by name
            e = self.expanded
            product_data, agent_data, price_derivatives = e.product_data, e.agent_data, e.price_derivatives
            linear, nonlinear, costs, absorb, demographics = e.linear, e.nonlinear, e.costs, e.absorb, e.demographics
            endogenous, costs_absorb = e.with_endogenous(endogenous), e.costs_absorb
        self.costs_absorb = tuple(costs_absorb)
        if self.costs_absorb and not costs:
            raise BLPSpecificationError("costs_absorb absorbs fixed effects from the cost equation: give costs= too.")
        self.linear, self.nonlinear = tuple(linear), tuple(nonlinear)
        self.absorb, self.demographics = tuple(absorb), tuple(demographics)
        self.rho_by_nest = rho_by_nest
        self.product_data = product_data
        self.endogenous = endogenous_columns(self.linear, price_derivatives, endogenous)
        self.products, self.index = build_products(
            product_data, self.linear, self.nonlinear, self.absorb, self.endogenous
        )
        if "linear" not in self.formulas:
            warn_price_functions(product_data, self.linear, self.endogenous)
        self.rc_types = check_rc_types(rc_types, self.nonlinear)
        self.agents = build_agents(agent_data, self.index, len(self.nonlinear), self.demographics, integration)
        if self.agents.availability is not None and self.products.n_nests > 0:
            raise BLPSpecificationError(
                "agent-specific availability (availability0, ...) is not yet supported with nesting."
            )
        self.costs, self.costs_type = tuple(costs), costs_type
        # how prices move X1 and X2 (post-estimation and counterfactuals; the supply side's markups)
        dX1, dX2 = price_derivative_arrays(product_data, self.index, price_derivatives)
        self.price_derivatives = (self.index.padded(dX1), self.index.padded(dX2))
        # formulas of prices (X1, X2) and of shares (X3), re-evaluated by counterfactuals
        self.price_terms, self.cost_terms = padded_terms(self.expanded, self.index, costs_type)
        self.has_firm_ids = "firm_ids" in product_data.columns
        self.firm_labels = product_data["firm_ids"].to_numpy() if self.has_firm_ids else None
        supply = None
        if self.costs:
            share_columns = () if self.cost_terms is None else self.cost_terms.names
            arrays = build_supply_arrays(
                product_data, self.index, self.costs, costs_type, price_derivatives, share_columns, self.costs_absorb
            )
            self.zs_names = arrays["zs_names"]
            supply = build_supply_setup(self.products, arrays, costs_type)
        self.epsilon_scale = check_epsilon_scale(epsilon_scale, self.products.n_nests)
        self.setup = Setup.build(self.products, self.agents, supply, self.epsilon_scale)
        self.specification = Specification(
            self.linear,
            self.nonlinear,
            self.absorb,
            self.demographics,
            self.costs,
            costs_type,
            self.zs_names if self.costs else (),
            rho_by_nest,
            self.costs_absorb,
        )
        self.scale = ScaleOut(devices, buckets, market_batch_size)  # validated here, before any numerics
        self._layout_cache: dict = {}  # (scale, micro) -> the layout and its prepared arrays
        self.agent_data = agent_data
        self._views = None
        self._micro_cache: dict[tuple, tuple] = {}  # MicroMoment objects (frozen, by identity) -> build_micro

    def __repr__(self) -> str:
        return format_problem(self)

    def micro_market_views(self):
        """Every market as the :class:`MicroMarket` that micro weights/values functions receive (batched)."""
        if self._views is None:
            self._views = market_views(self.products, self.agents, self.index, self.product_data, self.agent_data)
        return self._views

    def build_micro(self, micro_moments: Sequence[MicroMoment]):
        """Validate micro moments and evaluate their weights and values once per problem.

        The evaluated arrays are kept for the same (frozen) :class:`MicroMoment` objects, so a
        re-solve with other starting values or options does not evaluate them again; weights and
        values functions must not depend on anything but the market they receive.
        """
        key = (micro_moments,) if isinstance(micro_moments, MicroMoment) else tuple(micro_moments)
        built = self._micro_cache.get(key)
        if built is None:
            built = build_micro(micro_moments, self.micro_market_views(), self.index)
            if len(self._micro_cache) >= 4:
                self._micro_cache.pop(next(iter(self._micro_cache)))
            self._micro_cache[key] = built
        return built

    def engine(self, spec, config: ContractionConfig, setup: Setup | None = None, micro=None) -> Engine:
        """The problem laid out for evaluation on ``self.scale``'s layout (:class:`._estimate.Engine`).

        The layout's market arrays are prepared once per (layout, micro moments) and reused.
        """
        setup = self.setup if setup is None else setup
        key = (self.scale, id(micro))
        cached = self._layout_cache.get(key)
        if cached is None or cached[2] is not micro:
            layout = make_layout(self.scale, setup.mask, setup.market.weights)
            engine = Engine.build(layout, spec, config, setup, self.products, micro)
            if len(self._layout_cache) >= 4:
                self._layout_cache.pop(next(iter(self._layout_cache)))
            self._layout_cache[key] = (layout, engine.ldata, micro, engine.micro, engine.products)
            return engine
        layout, ldata, _, reduction, products = cached
        return Engine.build(layout, spec, config, setup, self.products, micro, prepared=(ldata, reduction, products))

    def parameter_spec(
        self, sigma=None, pi=None, rho=None, sigma_bounds=None, pi_bounds=None, rho_bounds=None, **linear
    ):
        """The free parameters of this specification (a :class:`._params.ParameterSpec`); ``linear``: ``beta``,
        ``beta_bounds``, ``gamma``, ``gamma_bounds`` as :meth:`solve` takes them."""
        spec = build_parameters(
            self.nonlinear,
            self.demographics,
            self.products.n_nests,
            sigma,
            pi,
            rho,
            sigma_bounds,
            pi_bounds,
            rho_bounds,
            self.rho_by_nest,
            list(self.index.nest_labels),
            self.rc_types,
            self.linear,
            self.costs,
            **linear,
        )
        if self.supply:
            check_price_coefficients(spec, self.setup.supply.market.dX1, self.linear)
        return spec

    @property
    def supply(self) -> bool:
        """Whether the problem has a supply side."""
        return self.setup.supply is not None

    @property
    def N(self) -> int:
        return self.products.n_products

    @property
    def T(self) -> int:
        return self.products.T

    @property
    def nested(self) -> bool:
        return self.products.n_nests > 0

    def logit_delta(self) -> jnp.ndarray:
        """The plain-logit inversion log s_j − log s_0 (PyBLP's default starting δ), (T, J), 0 on padding.

        Computed in NumPy (host-side set-up: no XLA program to compile for it).
        """
        delta = logit_delta(np.asarray(self.products.shares), np.asarray(self.products.mask), xp=np)
        return jnp.asarray(self.epsilon_scale * delta)  # δ/λ is the logit inversion when the error has scale λ

    def _prepare(
        self, parameters: dict, *, W, se_type, W_type, contraction, delta, micro_moments, costs_bounds
    ) -> _Prepared:
        """What a solve and an :class:`Objective` share: checked options, the parameter structure, the micro
        moments, W (None: the initial update decides it), the starting δ and the engine (see :meth:`solve`)."""
        check_x64()
        check_solve_options(contraction, se_type, W_type, "clustering_ids" in self.product_data.columns)
        spec = self.parameter_spec(**parameters)
        setup = self.setup
        if costs_bounds is not None:
            if setup.supply is None:
                raise BLPSpecificationError("costs_bounds needs a supply side (Problem(..., costs=[...])).")
            lo, hi = costs_bounds
            bounds = (-float("inf") if lo is None else float(lo), float("inf") if hi is None else float(hi))
            setup = eqx.tree_at(lambda s: s.supply, setup, dataclasses.replace(setup.supply, costs_bounds=bounds))
        K1, M = len(self.linear) + (setup.supply.K3 if setup.supply else 0), setup.M
        micro, micro_labels = (None, None) if not micro_moments else self.build_micro(micro_moments)
        MM = micro.MM if micro is not None else 0
        if spec.has_linear:
            K1 = int(spec.concentrated.sum())
        if M + MM < K1 + spec.P:
            raise BLPSpecificationError(
                f"too few moments: {M} instruments (exogenous X1 columns + demand_instruments, and X3 columns + "
                f"supply_instruments with a supply side) for {K1} concentrated linear and "
                f"{spec.P} other parameters. Add excluded instruments (demand_instruments*)."
            )
        # host-side set-up in NumPy: small matrices, and no XLA program to compile per shape
        ZD = np.asarray(setup.Z).reshape(-1, setup.Z.shape[-1])
        W_2sls = symmetric_inverse_host(ZD.T @ ZD / self.N)
        if setup.supply is not None:
            ZS = np.asarray(setup.supply.ZS).reshape(-1, setup.supply.MS)
            W_2sls = scipy.linalg.block_diag(W_2sls, symmetric_inverse_host(ZS.T @ ZS / self.N))
        if W is None:
            W = None if micro is not None else W_2sls
        else:
            W = check_weighting_matrix(W, M + MM)
        delta0 = self.logit_delta() if delta is None else jnp.asarray(self.index.per_product(delta, "delta"))
        config = contraction or ContractionConfig()
        engine = self.engine(spec, config, setup, micro)
        return _Prepared(spec, setup, micro, micro_labels, MM, W, W_2sls, delta0, config, engine)

    def objective(
        self,
        sigma=None,
        pi=None,
        rho=None,
        *,
        W=None,
        se_type: str = "robust",
        W_type: str = "robust",
        contraction: ContractionConfig | None = None,
        sigma_bounds=None,
        pi_bounds=None,
        rho_bounds=None,
        beta=None,
        beta_bounds=None,
        gamma=None,
        gamma_bounds=None,
        delta=None,
        micro_moments: Sequence[MicroMoment] | None = None,
        costs_bounds: tuple[float | None, float | None] | None = None,
    ) -> Objective:
        """The GMM objective of one step as a pure JAX function q(x) of the free parameters (an :class:`Objective`),
        for optimisers, derivatives and many starting points run by the caller.

        Arguments as :meth:`solve`'s: ``sigma``, ``pi``, ``rho`` say which entries are free (and give ``obj.x0``);
        W is ``W``, or the first step's W of :meth:`solve` (2SLS; with micro moments the initial update at the
        starting values). ``se_type``, ``W_type`` and ``costs_bounds`` are those of ``obj.results(x)``.
        """
        parameters = dict(sigma=sigma, pi=pi, rho=rho, sigma_bounds=sigma_bounds, pi_bounds=pi_bounds)
        parameters.update(rho_bounds=rho_bounds, beta=beta, beta_bounds=beta_bounds, gamma=gamma)
        parameters.update(gamma_bounds=gamma_bounds)
        prep = self._prepare(
            parameters,
            W=W,
            se_type=se_type,
            W_type=W_type,
            contraction=contraction,
            delta=delta,
            micro_moments=micro_moments,
            costs_bounds=costs_bounds,
        )
        spec, engine = prep.spec, prep.engine
        W = prep.W
        if W is None:
            W, _ = initial_update(engine, spec.x0, prep.delta0, prep.initial_W, prep.MM, se_type, W_type, host=True)
        conc = engine.concentration(np.asarray(W))
        options = (se_type, W_type, contraction, tuple(micro_moments) if micro_moments else None, costs_bounds)
        return Objective(
            engine,
            conc,
            prep.delta0,
            jnp.asarray(spec.x0),
            jnp.asarray(spec.lower),
            jnp.asarray(spec.upper),
            spec,
            self,
            options,
        )

    def solve(
        self,
        sigma=None,
        pi=None,
        rho=None,
        *,
        method: str = "2s",
        W=None,
        se_type: str = "robust",
        W_type: str = "robust",
        optimizer: ScipyOptimizer | OptaxOptimizer | None = None,
        contraction: ContractionConfig | None = None,
        sigma_bounds=None,
        pi_bounds=None,
        rho_bounds=None,
        beta=None,
        beta_bounds=None,
        gamma=None,
        gamma_bounds=None,
        delta=None,
        micro_moments: Sequence[MicroMoment] | None = None,
        costs_bounds: tuple[float | None, float | None] | None = None,
        throw: bool = True,
        starts: MultiStart | int | np.ndarray | None = None,
    ) -> Results:
        """Estimate by one-step (``"1s"``) or two-step (``"2s"``) GMM.

        Args:
            sigma, pi, rho: starting values (zeros are fixed at zero, as in PyBLP).
            method: ``"1s"`` or ``"2s"``.
            W: initial weighting matrix; default (Z̃'Z̃/N)⁻¹ (2SLS).
            se_type / W_type: ``"robust"``, ``"unadjusted"`` or ``"clustered"`` (needs
                ``clustering_ids``) for standard errors / the updated weighting matrix.
            optimizer: default ``ScipyOptimizer()`` (BFGS without bounds, L-BFGS-B with them; gtol 1e-8).
            contraction: default ``ContractionConfig()`` (Anderson for large markets, SQUAREM for small; tol 1e-14).
            sigma_bounds, pi_bounds, rho_bounds: ``(lower, upper)`` like the parameters.
            beta, gamma: PyBLP's: per X1 (X3) column, NaN or None concentrates the parameter out (the default for
                all), 0 fixes it at zero, another value is a starting value for a parameter optimised with θ (needed
                for a coefficient on a price column in X1 under a supply side), or fixed there when its bounds are
                equal. Fixed parameters have zero standard errors.
            beta_bounds, gamma_bounds: ``(lower, upper)`` for the entries with starting values.
            delta: starting mean utilities (default: the logit inversion).
            micro_moments: :class:`MicroMoment` s stacked with the product moments. Without ``W``, an
                initial update at the starting values sets W (as PyBLP).
            costs_bounds: ``(lower, upper)`` to clip marginal costs to (e.g. ``(1e-3, None)`` with log
                costs); clipped counts are reported.
            throw: raise :class:`BLPEstimationError` when the estimate is not converged (the default);
                ``False`` returns the results with ``converged`` False and the reasons in ``message``.
            starts: many starting points (K random ones, an array (K, P) of free-parameter vectors, or a
                :class:`MultiStart`): the first step's q is minimised from every start in one vmapped optax program
                (``optimizer`` must be an :class:`OptaxOptimizer`, default ``OptaxOptimizer()``), the estimation then
                goes on from the best optimum, and ``results.starts`` (a :class:`StartsReport`) lists every start
                and the distinct local optima.

        Raises:
            BLPSpecificationError: inconsistent parameters, too few moments, bad options.
            BLPEstimationError: with ``throw=True``, when the optimiser failed, a share inversion failed, or
                the objective, gradient, moments, estimates or standard errors are not finite (the error
                says which, and carries the flagged results as ``error.results``).
        """
        if method not in ("1s", "2s"):
            raise BLPSpecificationError("method must be '1s' or '2s'.")
        if optimizer is not None and not isinstance(optimizer, ScipyOptimizer | OptaxOptimizer):
            hint = f" (e.g. blpjax.ScipyOptimizer({optimizer!r}))" if isinstance(optimizer, str) else ""
            raise BLPSpecificationError(
                f"optimizer must be a blpjax.ScipyOptimizer or blpjax.OptaxOptimizer, not {type(optimizer).__name__}"
                f"{hint}."
            )
        parameters = dict(sigma=sigma, pi=pi, rho=rho, sigma_bounds=sigma_bounds, pi_bounds=pi_bounds)
        parameters.update(rho_bounds=rho_bounds, beta=beta, beta_bounds=beta_bounds, gamma=gamma)
        parameters.update(gamma_bounds=gamma_bounds)
        prep = self._prepare(
            parameters,
            W=W,
            se_type=se_type,
            W_type=W_type,
            contraction=contraction,
            delta=delta,
            micro_moments=micro_moments,
            costs_bounds=costs_bounds,
        )
        spec, engine = prep.spec, prep.engine
        x0, W0, report = spec.x0, prep.W, None
        if starts is not None:
            optimizer = optimizer or OptaxOptimizer()
            report, x0, W0 = run_starts(MultiStart.of(starts), prep, optimizer, se_type, W_type)
        steps = run_steps(
            engine,
            x0,
            prep.delta0,
            W=W0,
            initial_W=prep.initial_W,
            steps=1 if method == "1s" else 2,
            se_type=se_type,
            W_type=W_type,
            optimizer=optimizer or ScipyOptimizer(),
            lower=spec.lower,
            upper=spec.upper,
            host=True,
            MM=prep.MM,
        )
        results = Results(self, spec, steps, prep.config, prep.micro, prep.micro_labels, prep.setup, engine)
        results.starts = report
        if throw and not results.converged:
            raise BLPEstimationError(
                f"the estimation did not converge: {results.message}. Pass throw=False to get the flagged results "
                "(results.converged is False and results.message says why).",
                results,
            )
        return results
