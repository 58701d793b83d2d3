"""blpjax's documented internal face: the engine's pieces, for tests, benchmarks and researchers who
build on them. Names here may change between versions; the public names are those of :mod:`blpjax`.

- configuration: :data:`settings` (every ``BLPJAX_*`` variable and tuning constant), :func:`override`,
  :func:`jit` (blpjax's compiler options), :func:`inline_nested`;
- the model for one market: :class:`Market`, :class:`Theta`, :func:`market_log_shares`, :func:`shares`,
  :func:`mu`, :func:`logit_delta`, :class:`ParameterSpec`;
- inversion: :func:`contraction_map`, :func:`fixed_point`, :class:`FixedPoint`;
- the supply side: :func:`markups`, :func:`bertrand_markups` (the JVP-ruled markups, of (J, I) arrays),
  :func:`bertrand_parts`, :func:`ownership_matrix`, :func:`firm_membership`;
- prices and equilibrium for one market: :class:`PriceDemand`, :class:`Ownership`, :func:`shares_at`, :func:`demand_derivatives`, :func:`equilibrium_prices` (implicit
  derivative), :func:`equilibrium_prices_unrolled`, :func:`first_order_conditions`, :func:`zeta_map`,
  :func:`ownership_from_firms`;
- micro moments: :class:`MicroSetup`, :class:`DatasetMarket`, :class:`DatasetSpec`,
  :func:`choice_probabilities`;
- the engine: :class:`Engine` (one problem laid out for evaluation: ``value_and_grad``, ``value``,
  ``hessian``, ``statistics``), :class:`StatisticsOptions`, :class:`Concentration` (the maps of a
  weighting matrix), the per-market functions :func:`market_pieces` / :func:`market_solution`,
  :func:`market_data` and the reduction :func:`reduce`, :func:`deltas_at_solution`;
- layouts: :class:`Padded`, :class:`Bucketed`, :class:`Sharded`, :func:`make_layout`,
  :func:`plan_buckets`, :func:`market_sizes`, :func:`market_mesh`, :func:`jacobian_with_aux`;
- estimation: the GMM driver :func:`run_steps`, :class:`StepResult`, the optimiser loops
  :func:`optax_minimize` and :func:`scipy_minimize` (warm starts from :func:`predicted_start`), replications :func:`stack_problems`,
  :func:`estimate_replications`, :func:`default_batch_size`;
- the front's helpers: :func:`results_at` (results at given parameters), the simulated studies
  (:func:`simulated_problems`, :func:`simulate_replications`, :data:`SIMULATED_SPECIFICATION`,
  :func:`income_price_covariance`, :func:`simulated_micro_moments`, :func:`results_at_truth`),
  :func:`cli_main` (the ``blpjax`` command) and :func:`glibc_supports_hugetlb`.
"""

from ._base import config as _config
from ._base.allocator import _glibc_supports_hugetlb as glibc_supports_hugetlb
from ._base.config import Settings, inline_nested, jit, override
from ._engine.gmm import Concentration, symmetric_inverse
from ._engine.pieces import (
    MarketData,
    Pieces,
    deltas_at_solution,
    market_data,
    market_pieces,
    market_solution,
    reduce,
)
from ._estimation.driver import StepResult, run_steps
from ._estimation.optimize import optax_minimize, predicted_start, scipy_minimize
from ._estimation.programs import Engine, StatisticsOptions
from ._estimation.replications import default_batch_size, estimate_replications, stack_problems
from ._front.cli import main as cli_main
from ._front.scores import results_at
from ._front.studies import (
    SIMULATED_SPECIFICATION,
    income_price_covariance,
    results_at_truth,
    simulate_replications,
    simulated_micro_moments,
    simulated_problems,
)
from ._inversion.contraction import FixedPoint, fixed_point
from ._inversion.implicit import contraction_map
from ._layouts.buckets import Bucketed, BucketPlan, market_sizes, plan_buckets
from ._layouts.devices import Sharded, market_mesh
from ._layouts.layouts import Padded, jacobian_with_aux
from ._layouts.scaleout import make_layout
from ._micro.core import DatasetMarket, DatasetSpec, MicroSetup, choice_probabilities
from ._model.logit import logit_delta
from ._model.market import Market, Theta, market_log_shares
from ._model.params import ParameterSpec
from ._model.shares import mu, shares
from ._post.fitted import ownership_from_firms
from ._supply.bertrand import _bertrand_markups as bertrand_markups
from ._supply.bertrand import _bertrand_parts as bertrand_parts
from ._supply.bertrand import firm_membership, markups, ownership_matrix
from ._supply.equilibrium import (
    Ownership,
    PriceDemand,
    demand_derivatives,
    equilibrium_prices,
    equilibrium_prices_unrolled,
    first_order_conditions,
    shares_at,
    zeta_map,
)

__all__ = [
    "SIMULATED_SPECIFICATION",
    "BucketPlan",
    "Bucketed",
    "Concentration",
    "DatasetMarket",
    "DatasetSpec",
    "Engine",
    "FixedPoint",
    "Market",
    "MarketData",
    "MicroSetup",
    "Padded",
    "Ownership",
    "ParameterSpec",
    "Pieces",
    "PriceDemand",
    "Settings",
    "Sharded",
    "StatisticsOptions",
    "StepResult",
    "Theta",
    "bertrand_markups",
    "bertrand_parts",
    "choice_probabilities",
    "cli_main",
    "contraction_map",
    "default_batch_size",
    "demand_derivatives",
    "deltas_at_solution",
    "equilibrium_prices",
    "equilibrium_prices_unrolled",
    "estimate_replications",
    "firm_membership",
    "first_order_conditions",
    "fixed_point",
    "glibc_supports_hugetlb",
    "income_price_covariance",
    "inline_nested",
    "jacobian_with_aux",
    "jit",
    "logit_delta",
    "make_layout",
    "market_data",
    "market_log_shares",
    "market_mesh",
    "market_pieces",
    "market_sizes",
    "market_solution",
    "markups",
    "mu",
    "optax_minimize",
    "predicted_start",
    "override",
    "ownership_from_firms",
    "ownership_matrix",
    "plan_buckets",
    "reduce",
    "results_at",
    "results_at_truth",
    "run_steps",
    "scipy_minimize",
    "shares",
    "shares_at",
    "simulate_replications",
    "simulated_micro_moments",
    "simulated_problems",
    "stack_problems",
    "symmetric_inverse",
    "zeta_map",
]


def __getattr__(name: str):
    if name == "settings":  # the current settings (``override`` replaces the object)
        return _config.settings
    raise AttributeError(f"module 'blpjax.internal' has no attribute {name!r}")
