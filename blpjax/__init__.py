"""blpjax: BLP random-coefficients logit demand estimation in pure JAX.

Importing blpjax turns on float64 in JAX (``jax_enable_x64``): share inversions are solved to
1e-14, which float32 cannot represent. See :mod:`blpjax._config`.
"""

from ._base import config as _config  # noqa: F401  (enables float64 first)
from ._base.allocator import ALLOCATOR_TUNABLES as ALLOCATOR_TUNABLES
from ._base.allocator import allocator_tuned as allocator_tuned
from ._base.allocator import relaunch_with_tuned_allocator as relaunch_with_tuned_allocator
from ._base.config import enable_compilation_cache as enable_compilation_cache
from ._base.errors import BLPDataError as BLPDataError
from ._base.errors import BLPDataWarning as BLPDataWarning
from ._base.errors import BLPEstimationError as BLPEstimationError
from ._base.errors import BLPNumericalWarning as BLPNumericalWarning
from ._base.errors import BLPSpecificationError as BLPSpecificationError
from ._base.errors import EstimationStatus as EstimationStatus
from ._base.errors import Status as Status
from ._estimation.optimize import OptaxOptimizer as OptaxOptimizer
from ._estimation.optimize import ScipyOptimizer as ScipyOptimizer
from ._front.builders import build_blp_instruments as build_blp_instruments
from ._front.builders import build_differentiation_instruments as build_differentiation_instruments
from ._front.builders import build_id_data as build_id_data
from ._front.builders import build_matrix as build_matrix
from ._front.builders import build_ownership as build_ownership
from ._front.micro_data import MicroDataset as MicroDataset
from ._front.micro_data import MicroMoment as MicroMoment
from ._front.micro_data import MicroPart as MicroPart
from ._front.montecarlo import MonteCarlo as MonteCarlo
from ._front.montecarlo import monte_carlo as monte_carlo
from ._front.objective import Objective as Objective
from ._front.objective import ObjectiveAux as ObjectiveAux
from ._front.objective import ObjectiveState as ObjectiveState
from ._front.problem import Problem as Problem
from ._front.results import Results as Results
from ._front.simulate import SimulationConfig as SimulationConfig
from ._front.simulate import simulate as simulate
from ._front.simulation import Simulation as Simulation
from ._front.simulation import SimulationResults as SimulationResults
from ._front.starts import MultiStart as MultiStart
from ._front.starts import StartsReport as StartsReport
from ._inversion.contraction import ContractionConfig as ContractionConfig
from ._inversion.implicit import solve_delta as solve_delta
from ._inversion.implicit import solve_delta_unrolled as solve_delta_unrolled
from ._layouts.scaleout import ScaleOut as ScaleOut
from ._micro.core import MicroMarket as MicroMarket
from ._model.containers import Agents as Agents
from ._model.containers import Products as Products
from ._model.integration import Integration as Integration
from ._model.market import Market as Market
from ._model.market import Theta as Theta
from ._post.fitted import Fitted as Fitted
from ._post.inference import Bootstrap as Bootstrap
from ._post.inference import DeltaMethod as DeltaMethod

__version__ = "0.1.0"

__all__ = [
    "Agents",
    "BLPDataError",
    "Bootstrap",
    "BLPDataWarning",
    "BLPEstimationError",
    "BLPNumericalWarning",
    "BLPSpecificationError",
    "ContractionConfig",
    "DeltaMethod",
    "EstimationStatus",
    "Fitted",
    "Integration",
    "Market",
    "MicroDataset",
    "MicroMarket",
    "MicroMoment",
    "MicroPart",
    "MonteCarlo",
    "MultiStart",
    "Objective",
    "ObjectiveAux",
    "ObjectiveState",
    "OptaxOptimizer",
    "Problem",
    "Products",
    "Results",
    "StartsReport",
    "ScaleOut",
    "ScipyOptimizer",
    "Status",
    "Theta",
    "Simulation",
    "SimulationConfig",
    "SimulationResults",
    "monte_carlo",
    "simulate",
    "solve_delta",
    "solve_delta_unrolled",
    "build_blp_instruments",
    "build_differentiation_instruments",
    "build_id_data",
    "build_matrix",
    "build_ownership",
]
