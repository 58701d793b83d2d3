"""R estimations of identical shapes as one jitted, vmapped program (the core of a Monte Carlo study).

:func:`stack_problems` lays out R problems with the same shapes (T markets, J products, I agents,
N products in all) as one :class:`._estimate.Engine` per replication and stacks them on a leading
replication axis; :func:`estimate_replications` runs the GMM driver of :mod:`._driver` (the one
:meth:`Problem.solve` runs, with the optax loop) ``vmap``-ped over replications in a single
``jax.jit``. Supply sides and micro moments come with the engines. A vmapped ``while_loop`` runs
until its slowest replication stops; finished replications are frozen, so every replication gets
exactly the estimate it would get alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._base.config import check_x64, jit
from .._base.errors import BLPSpecificationError, EstimationStatus
from .._engine.gmm import SE_TYPES, check_weighting_matrix, symmetric_inverse_host
from .._inversion.contraction import ContractionConfig
from .._layouts.layouts import Padded, Work
from .._micro.core import MicroSetup
from .._model.params import ParameterSpec
from .diagnosis import step_status
from .driver import StepResult, run_steps
from .optimize import OptaxOptimizer, _projected_gradient_norm
from .programs import Engine


class Replicated(eqx.Module):
    """R estimation problems of identical shapes, stacked on a leading replication axis.

    Attributes:
        engine: every replication's :class:`._estimate.Engine` (leaves gain an R axis).
        W: initial weighting matrices (default per-replication 2SLS, (Z̃'Z̃/N)⁻¹, on the product moments).
        delta0: starting mean utilities (default the logit inversion of each replication).
        x0: starting values of the free nonlinear parameters.
        MM: the number of micro moments.
        initial_update: with micro moments and no user W, ``W`` holds the 2SLS matrices of the product
            moments and each replication first runs the initial update at the starting values, as
            :meth:`Problem.solve` does.
    """

    engine: Engine
    W: Float[Array, "R MW MW"]
    delta0: Float[Array, "R T J"]
    x0: Float[Array, "R P"]
    MM: int = eqx.field(static=True, default=0)
    initial_update: bool = eqx.field(static=True, default=False)

    @property
    def R(self) -> int:
        return self.W.shape[0]

    @property
    def micro(self) -> MicroSetup | None:
        return self.engine.micro


class ReplicationStep(eqx.Module):
    """One GMM step of every replication (leading axis R).

    Attributes:
        theta: free nonlinear parameters, in ``ParameterSpec.labels`` order.
        beta: linear parameters (concentrated out).
        se: standard errors of (θ, β).
        objective: q = N ḡ'Wḡ at the estimate.
        gradient: ∇q at the estimate.
        gradient_norm: largest absolute projected gradient entry (what the optimiser's ``gtol`` bounds).
        optimizer_success: the optax loop stopped on ``gtol`` with a finite objective.
        iterations: optimiser updates.
        evaluations: objective evaluations of the optimiser.
        contraction_evaluations: contraction evaluations per market, cold start at the estimate.
        contraction_status: :class:`Status` code per market at the estimate (0 = converged).
        W: the step's weighting matrix.
        updated_W: the weighting matrix for a next step.
        micro_values: model values f(v(θ̂)) of the micro moments at the estimate (None without).
        gamma: marginal-cost parameters with a supply side (None without).
        status: :class:`EstimationStatus` code per replication (0 = converged; ``.explain()`` says why not).
        conditions: condition numbers of S and of G'WG (inverted by their pseudo-inverses; large values,
            above 1/eps, flag parameters or moments the data do not identify).
    """

    theta: Float[Array, "R P"]
    beta: Float[Array, "R K1"]
    se: Float[Array, "R PK"]
    objective: Float[Array, " R"]
    gradient: Float[Array, "R P"]
    gradient_norm: Float[Array, " R"]
    optimizer_success: Bool[Array, " R"]
    iterations: Int[Array, " R"]
    evaluations: Int[Array, " R"]
    contraction_evaluations: Int[Array, "R T"]
    contraction_status: Int[Array, "R T"]
    W: Float[Array, "R MW MW"]
    updated_W: Float[Array, "R MW MW"]
    status: Int[Array, " R"]
    conditions: Float[Array, "R 2"]
    micro_values: Float[Array, "R MM"] | None = None
    gamma: Float[Array, "R K3"] | None = None

    @property
    def converged(self) -> Bool[Array, " R"]:
        """The optimiser succeeded, every market's share inversion converged and every output is finite."""
        return self.status == EstimationStatus.CONVERGED

    @classmethod
    def of(cls, record: StepResult, lower, upper) -> ReplicationStep:
        """The replication-level view of one (traced) :class:`._driver.StepResult`."""
        return cls(
            theta=record.theta,
            beta=record.beta,
            se=record.se,
            objective=record.objective,
            gradient=record.gradient,
            gradient_norm=_projected_gradient_norm(record.theta, record.gradient, lower, upper),
            optimizer_success=jnp.asarray(record.optimizer_success),
            iterations=jnp.asarray(record.optimizer_iterations, jnp.int32),
            evaluations=jnp.asarray(record.objective_evaluations, jnp.int32),
            contraction_evaluations=record.evaluations,
            contraction_status=record.status,
            W=record.W,
            updated_W=record.updated_W,
            status=step_status(record),
            conditions=record.conditions,
            micro_values=record.micro_values,
            gamma=record.gamma,
        )


def _stack(trees: Sequence, what: str):
    structures = {jax.tree_util.tree_structure(t) for t in trees}
    if len(structures) != 1:
        raise BLPSpecificationError(
            f"the replications' {what} differ in structure (number of products N, fixed-effect levels or clusters): "
            "a vmapped Monte Carlo needs identical shapes. Simulate a fixed design, e.g. "
            "SimulationConfig(products=(J, J)), so that every replication has the same T, J, I and N."
        )
    shapes = {tuple(np.shape(leaf) for leaf in jax.tree_util.tree_leaves(t)) for t in trees}
    if len(shapes) != 1:
        raise BLPSpecificationError(
            f"the replications' {what} differ in shape (T markets, J products per market or I agents): "
            "a vmapped Monte Carlo needs identical shapes, e.g. SimulationConfig(products=(J, J))."
        )
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def stack_problems(
    problems: Sequence,
    spec: ParameterSpec,
    W=None,
    delta0=None,
    micro: Sequence[MicroSetup] | None = None,
    market_batch_size: int | None = None,
) -> Replicated:
    """Stack R problems of identical shapes for :func:`estimate_replications`.

    Args:
        problems: R :class:`Problem` objects with the same specification and shapes (supply sides included).
        spec: the free nonlinear parameters (their starting values are used for every replication).
        W: initial weighting matrices, (MW, MW) for all or (R, MW, MW) with MW = M + MM (instruments,
            then micro moments); default each problem's 2SLS matrix, and with micro moments the
            initial update at the starting values that :meth:`Problem.solve` runs.
        delta0: starting δ, (R, T, J) padded; default each problem's logit inversion.
        micro: one :class:`._micro.MicroSetup` per replication (``Problem.build_micro``), with the
            same moments, functions and survey sizes N_d in every replication.
        market_batch_size: solve each replication's markets that many at a time (bounded memory).

    Raises:
        BLPSpecificationError: the problems' shapes differ, or a bad W.
    """
    if not problems:
        raise BLPSpecificationError("a Monte Carlo needs at least one replication.")
    R = len(problems)
    if micro is not None and len(micro) != R:
        raise BLPSpecificationError(f"micro needs one MicroSetup per replication ({R}), got {len(micro)}.")
    micro = [None] * R if micro is None else list(micro)
    layout = Padded(batch=market_batch_size)
    engines = [
        Engine.build(layout, spec, ContractionConfig(), p.setup, p.products, m)
        for p, m in zip(problems, micro, strict=True)
    ]
    engine = _stack(
        _common_firm_axis(engines),
        "set-ups (data, supply sides and micro moments: datasets, survey sizes, parts, functions)",
    )
    M = problems[0].setup.M
    MM = 0 if micro[0] is None else micro[0].MM
    initial_update = False
    if W is None:
        W = np.stack([_initial_W(p) for p in problems])
        initial_update = MM > 0
    else:
        W = np.asarray(W, np.float64)
        Ws = W if W.ndim == 3 else W[None]
        if W.ndim == 3 and W.shape[0] != R:
            raise BLPSpecificationError(
                f"W has {W.shape[0]} matrices for {R} replications: give one or one per replication."
            )
        for r, Wr in enumerate(Ws):
            check_weighting_matrix(Wr, M + MM, "W" if len(Ws) == 1 else f"W[{r}]")
        W = np.broadcast_to(W, (R, M + MM, M + MM))
    if delta0 is None:
        delta0 = jnp.stack([p.logit_delta() for p in problems])
    return Replicated(
        engine,
        jnp.asarray(W),
        jnp.asarray(delta0, jnp.float64),
        jnp.broadcast_to(jnp.asarray(spec.x0, jnp.float64), (R, spec.P)),
        MM,
        initial_update,
    )


def _common_firm_axis(engines: list[Engine]) -> list[Engine]:
    """Engines whose supply sides' firm memberships (T, J, F) are padded to one F (empty firms change nothing)."""
    if engines[0].ldata.markets.supply is None:
        return engines
    F = max(e.ldata.markets.supply.firms.shape[-1] for e in engines)

    def pad(e: Engine) -> Engine:
        firms = e.ldata.markets.supply.firms
        wider = jnp.pad(firms, ((0, 0), (0, 0), (0, F - firms.shape[-1])))
        return eqx.tree_at(lambda e_: e_.ldata.markets.supply.firms, e, wider)

    return [pad(e) for e in engines]


def _initial_W(problem) -> np.ndarray:
    """The 2SLS weighting matrix of a problem's product moments (demand, then supply)."""
    import scipy.linalg

    setup = problem.setup
    ZD = np.asarray(setup.Z).reshape(-1, setup.Z.shape[-1])
    W = symmetric_inverse_host(ZD.T @ ZD / setup.N)
    if setup.supply is not None:
        ZS = np.asarray(setup.supply.ZS).reshape(-1, setup.supply.MS)
        W = scipy.linalg.block_diag(W, symmetric_inverse_host(ZS.T @ ZS / setup.N))
    return W


@partial(jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _program(optimizer, steps, se_type, W_type, batch_size, work: Work, data: Replicated, lower, upper):
    engine = dataclasses.replace(data.engine, work=work)

    def one(args):
        eng, x0, delta0, W = args
        records = run_steps(
            eng,
            x0,
            delta0,
            W=None if data.initial_update else W,
            initial_W=W,
            steps=steps,
            se_type=se_type,
            W_type=W_type,
            optimizer=optimizer,
            lower=lower,
            upper=upper,
            host=False,
            MM=data.MM,
        )
        return tuple(ReplicationStep.of(r, lower, upper) for r in records)

    args = (engine, data.x0, data.delta0, data.W)
    if batch_size == 1:  # a plain scan: no batched control flow at all
        return jax.lax.map(one, args)
    if batch_size >= data.R:
        return jax.vmap(one)(args)
    return jax.lax.map(one, args, batch_size=batch_size)


def default_batch_size(R: int) -> int:
    """How many replications to vmap at once by default: all on an accelerator, one on CPU.

    On CPU one replication's markets already fill the vector units, and a vmapped loop costs as
    much as its slowest member on every pass (L-BFGS iterations, line-search steps, contraction
    evaluations; under ``vmap`` both branches of optax's zoom line search run too): measured on 2
    cores (T=20, J=5, I=50), 6 ms per replication one at a time, 18 ms vmapped 8 at a time and
    60 ms vmapped 50 at a time. On a GPU the batch is what fills the device.
    """
    return 1 if jax.default_backend() == "cpu" else R


def estimate_replications(
    spec: ParameterSpec,
    data: Replicated,
    *,
    steps: int = 2,
    se_type: str = "robust",
    W_type: str = "robust",
    optimizer: OptaxOptimizer | None = None,
    config: ContractionConfig | None = None,
    batch_size: int | None = None,
) -> tuple[ReplicationStep, ...]:
    """Estimate every replication by one- or two-step GMM in one jitted, vmapped program.

    Args:
        spec: the free nonlinear parameters (static: one compiled program per structure; bounds are inputs).
        data: the stacked replications (:func:`stack_problems`).
        steps: 1 or 2 GMM steps (the second uses each replication's updated W).
        se_type, W_type: as in :meth:`Problem.solve`.
        optimizer: an :class:`OptaxOptimizer` (default ``OptaxOptimizer()``: optax L-BFGS, gtol 1e-8).
        config: contraction settings (default ``ContractionConfig()``: "auto", tol 1e-14).
        batch_size: vmap this many replications at a time (``lax.map`` over batches; 1 is a plain
            ``lax.map``); default :func:`default_batch_size` (all on an accelerator, 1 on CPU). A
            batch runs until its slowest replication stops; smaller batches also bound memory.

    Returns:
        One :class:`ReplicationStep` per GMM step (arrays with a leading axis R; not synchronised:
        call ``jax.block_until_ready`` to time them).
    """
    check_x64()
    if steps not in (1, 2):
        raise BLPSpecificationError("steps must be 1 or 2.")
    if se_type not in SE_TYPES or W_type not in SE_TYPES:
        raise BLPSpecificationError(f"se_type and W_type must be one of {SE_TYPES}.")
    optimizer = OptaxOptimizer() if optimizer is None else optimizer
    if not isinstance(optimizer, OptaxOptimizer):
        raise BLPSpecificationError("a vmapped Monte Carlo needs an OptaxOptimizer (SciPy runs on the host).")
    if batch_size is None:
        batch_size = default_batch_size(data.R)
    if batch_size < 1:
        raise BLPSpecificationError("batch_size must be a positive integer or None.")
    batch_size = min(batch_size, data.R)
    work = Work(spec, data.engine.work.statics, config or ContractionConfig())
    lower, upper = jnp.asarray(spec.lower), jnp.asarray(spec.upper)
    return _program(optimizer, steps, se_type, W_type, batch_size, work, data, lower, upper)
