"""The public entry point: :class:`Problem` (data + specification) and its ``solve``."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import pandas as pd

from ._config import check_x64
from ._contraction import ContractionConfig
from ._data import build_agents, build_products
from ._errors import BLPSpecificationError
from ._estimate import estimate
from ._gmm import symmetric_inverse
from ._integration import Integration
from ._logit import logit_delta
from ._micro_data import MicroMoment, build_micro, market_views
from ._objective import Setup
from ._optimize import OptaxOptimizer, ScipyOptimizer
from ._params import build_parameters
from ._results import Results


class Problem:
    """A demand estimation problem: PyBLP-convention data and a specification by column names.

    Args:
        product_data: one row per product and market (``market_ids``, ``shares``, ``prices``,
            ``demand_instruments0``..., characteristics; optional ``product_ids``, ``firm_ids``,
            ``nesting_ids`` (makes the model nested), ``clustering_ids``).
        linear: columns of X1 (mean utility); ``"1"`` is the constant. ``prices`` is endogenous,
            every other X1 column is its own instrument.
        nonlinear: columns of X2 (random coefficients / demographic interactions).
        absorb: columns whose fixed effects are absorbed (e.g. ``("market_ids", "product_ids")``).
        agent_data: ``market_ids``, ``weights``, ``nodes0``.. and demographics.
        demographics: demographic columns of ``agent_data`` (columns of Π).
        integration: an :class:`Integration` rule to build nodes instead of ``nodes*`` columns.
        rho_by_nest: one ρ per nest instead of one shared ρ.

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
    ):
        check_x64()
        for name, v in (
            ("linear", linear),
            ("nonlinear", nonlinear),
            ("absorb", absorb),
            ("demographics", demographics),
        ):
            if isinstance(v, str):
                raise BLPSpecificationError(f"{name} must be a sequence of column names, not the string {v!r}.")
        self.linear, self.nonlinear = tuple(linear), tuple(nonlinear)
        self.absorb, self.demographics = tuple(absorb), tuple(demographics)
        self.rho_by_nest = rho_by_nest
        self.product_data = product_data
        self.products, self.index = build_products(product_data, self.linear, self.nonlinear, self.absorb)
        self.agents = build_agents(agent_data, self.index, len(self.nonlinear), self.demographics, integration)
        self.setup = Setup.build(self.products, self.agents)
        self.agent_data = agent_data
        self._views = None

    def micro_market_views(self):
        """Every market as the :class:`MicroMarket` that micro weights/values functions receive (batched)."""
        if self._views is None:
            self._views = market_views(self.products, self.agents, self.index, self.product_data, self.agent_data)
        return self._views

    def build_micro(self, micro_moments: Sequence[MicroMoment]):
        """Validate micro moments and evaluate their weights and values once."""
        return build_micro(micro_moments, self.micro_market_views(), self.index)

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
        """The plain-logit inversion log s_j − log s_0 (PyBLP's default starting δ)."""
        return jax.vmap(logit_delta)(self.products.shares, self.products.mask)

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
        delta=None,
        micro_moments: Sequence[MicroMoment] | None = None,
    ) -> Results:
        """Estimate by one-step (``"1s"``) or two-step (``"2s"``) GMM.

        Args:
            sigma, pi, rho: starting values (zeros are fixed at zero, as in PyBLP).
            method: ``"1s"`` or ``"2s"``.
            W: initial weighting matrix; default (Z̃'Z̃/N)⁻¹ (2SLS).
            se_type / W_type: ``"robust"``, ``"unadjusted"`` or ``"clustered"`` (needs
                ``clustering_ids``) for standard errors / the updated weighting matrix.
            optimizer: default ``ScipyOptimizer("l-bfgs-b", gtol=1e-8)``.
            contraction: default ``ContractionConfig()`` (SQUAREM, tol 1e-14).
            sigma_bounds, pi_bounds, rho_bounds: ``(lower, upper)`` like the parameters.
            delta: starting mean utilities (default: the logit inversion).
            micro_moments: :class:`MicroMoment` s stacked with the product moments. Without ``W``, an
                initial update at the starting values sets W (as PyBLP).

        Raises:
            BLPSpecificationError: inconsistent parameters, too few moments, bad options.
        """
        check_x64()
        if method not in ("1s", "2s"):
            raise BLPSpecificationError("method must be '1s' or '2s'.")
        if "clustered" in (se_type, W_type) and "clustering_ids" not in self.product_data.columns:
            raise BLPSpecificationError("clustered standard errors need a 'clustering_ids' column in product_data.")
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
        )
        K1, M = len(self.linear), self.setup.Z.shape[-1]
        micro, micro_labels = (None, None) if not micro_moments else self.build_micro(micro_moments)
        MM = micro.MM if micro is not None else 0
        if M + MM < K1 + spec.P:
            raise BLPSpecificationError(
                f"too few moments: {M} instruments (exogenous X1 columns + demand_instruments) for {K1} linear and "
                f"{spec.P} nonlinear parameters. Add excluded instruments (demand_instruments*)."
            )
        Z = self.setup.Z.reshape(-1, M)
        W_2sls = symmetric_inverse(Z.T @ Z / self.N)
        if W is None:
            W = None if micro is not None else W_2sls
        else:
            W = jnp.asarray(W, dtype=jnp.float64)
            if W.shape != (M + MM, M + MM):
                raise BLPSpecificationError(
                    f"W must be {M + MM}×{M + MM} (one row per instrument, then one per micro moment)."
                )
        delta0 = self.logit_delta() if delta is None else jnp.asarray(delta)
        if delta0.ndim == 1:  # flat, in product_data's row order
            delta0 = jnp.asarray(self.index.padded(delta0))
        steps = estimate(
            spec,
            self.setup,
            self.products,
            W=W,
            steps=1 if method == "1s" else 2,
            se_type=se_type,
            W_type=W_type,
            optimizer=optimizer or ScipyOptimizer(),
            config=contraction or ContractionConfig(),
            delta0=delta0,
            micro=micro,
            initial_W=W_2sls,
        )
        return Results(self, spec, steps, contraction or ContractionConfig(), micro, micro_labels)
