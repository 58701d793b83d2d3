"""blpjax: BLP random-coefficients logit demand estimation in pure JAX.

Importing blpjax turns on float64 in JAX (``jax_enable_x64``): share inversions are solved to
1e-14, which float32 cannot represent. See :mod:`blpjax._config`.
"""

from . import _config as _config  # noqa: F401  (enables float64 first)
from ._allocator import ALLOCATOR_TUNABLES as ALLOCATOR_TUNABLES
from ._allocator import allocator_tuned as allocator_tuned
from ._allocator import relaunch_with_tuned_allocator as relaunch_with_tuned_allocator
from ._config import enable_compilation_cache as enable_compilation_cache
from ._contraction import ContractionConfig as ContractionConfig
from ._errors import BLPDataError as BLPDataError
from ._errors import BLPDataWarning as BLPDataWarning
from ._errors import BLPEstimationError as BLPEstimationError
from ._errors import BLPSpecificationError as BLPSpecificationError
from ._errors import Status as Status
from ._implicit import Market as Market
from ._implicit import Theta as Theta
from ._implicit import solve_delta as solve_delta
from ._implicit import solve_delta_unrolled as solve_delta_unrolled
from ._integration import Integration as Integration
from ._markets import Agents as Agents
from ._markets import Products as Products
from ._micro_data import MicroDataset as MicroDataset
from ._micro_data import MicroMarket as MicroMarket
from ._micro_data import MicroMoment as MicroMoment
from ._micro_data import MicroPart as MicroPart
from ._montecarlo import MonteCarlo as MonteCarlo
from ._montecarlo import monte_carlo as monte_carlo
from ._optimize import OptaxOptimizer as OptaxOptimizer
from ._optimize import ScipyOptimizer as ScipyOptimizer
from ._problem import Problem as Problem
from ._results import Results as Results
from ._scaleout import ScaleOut as ScaleOut
from ._simulate import SimulationConfig as SimulationConfig
from ._simulate import simulate as simulate

__version__ = "0.1.0"

__all__ = [
    "Agents",
    "BLPDataError",
    "BLPDataWarning",
    "BLPEstimationError",
    "BLPSpecificationError",
    "ContractionConfig",
    "Integration",
    "Market",
    "MicroDataset",
    "MicroMarket",
    "MicroMoment",
    "MicroPart",
    "MonteCarlo",
    "OptaxOptimizer",
    "Problem",
    "Products",
    "Results",
    "ScaleOut",
    "ScipyOptimizer",
    "Status",
    "Theta",
    "SimulationConfig",
    "monte_carlo",
    "simulate",
    "solve_delta",
    "solve_delta_unrolled",
]
