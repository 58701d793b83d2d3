"""Monte Carlo studies as one program: R replications estimated by one jitted, vmapped GMM run.

The numerical core is pandas-free. :func:`stack_problems` stacks R problems of the same shapes
(T markets, J products, I agents, N products in all) into one :class:`Replicated` pytree with a
leading replication axis R; :func:`estimate_replications` runs one- or two-step GMM for all of
them in a single ``jax.jit``: the optax outer loop of :class:`OptaxOptimizer` (the same program
``Problem.solve(optimizer=OptaxOptimizer())`` runs for one problem) and the post-estimation step
(β, standard errors, updated W), both ``vmap``ped over replications. A vmapped ``while_loop``
runs until its slowest replication stops; finished replications are frozen, so every replication
gets exactly the estimate it would get alone.

The pandas front is :func:`monte_carlo` (simulate R datasets from a :class:`SimulationConfig`
and estimate them) and :class:`MonteCarlo` (estimates, standard errors and diagnostics as
DataFrames labelled like ``Results.parameters``, ``summary()`` of bias, RMSE and coverage, and
``plot()`` of the sampling distributions).

Micro moments enter the same program: each replication gets its own :class:`._micro.MicroSetup`
(stacked on the replication axis like the set-ups), and without a user W each replication runs
the initial update at the starting values that :meth:`Problem.solve` runs. For studies of
simulated data, :func:`survey_micro_moments` gives a moment the observed value of a survey of
N_d consumers drawn from the true model in that replication (sampling noise of size N_d, the
size the micro covariance block assumes), and :func:`optimal_micro_moments_at_truth` builds
optimal (score) micro moments with the scores evaluated at the true parameters: an infeasible,
"oracle" simplification of Conlon & Gortmaker (2025), who evaluate them at a first-step θ̂.
See ``notebooks/monte_carlo.ipynb``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int

from ._config import check_x64, jit
from ._contraction import ContractionConfig
from ._errors import BLPSpecificationError
from ._estimate import _post_step, _value, _value_and_grad
from ._gmm import SE_TYPES, Concentration, check_weighting_matrix, symmetric_inverse
from ._micro import MicroSetup
from ._objective import Setup
from ._optimize import OptaxOptimizer, OptimizeResult, _projected_gradient_norm
from ._params import ParameterSpec

if TYPE_CHECKING:
    import pandas as pd

    from ._integration import Integration
    from ._micro_data import MicroDataset, MicroMoment
    from ._problem import Problem
    from ._simulate import SimulationConfig


# --- pandas-free core -------------------------------------------------------------------------------------
class Replicated(eqx.Module):
    """R estimation problems of identical shapes, stacked on a leading replication axis.

    Attributes:
        setup: the θ-independent :class:`Setup` of every replication (leaves gain an R axis).
        X1: linear characteristics before absorption (for the fixed effects in post-estimation).
        cluster_ids: cluster codes for clustered standard errors.
        W: initial weighting matrices (default per-replication 2SLS, (Z̃'Z̃/N)⁻¹).
        delta0: starting mean utilities (default the logit inversion of each replication).
        x0: starting values of the free nonlinear parameters.
        n_clusters: number of clusters (the same in every replication).
        micro: the micro moments of every replication (:class:`._micro.MicroSetup` with an R axis:
            observed values, survey weights and values may differ across replications), or None.
        initial_update: with micro moments and no user W, ``W`` holds the 2SLS matrices of the
            product moments and each replication first runs the initial update at the starting
            values, as :meth:`Problem.solve` does.
    """

    setup: Setup
    X1: Float[Array, "R T J K1"]
    cluster_ids: Int[Array, "R T J"]
    W: Float[Array, "R MW MW"]
    delta0: Float[Array, "R T J"]
    x0: Float[Array, "R P"]
    n_clusters: int = eqx.field(static=True)
    micro: MicroSetup | None = None
    initial_update: bool = eqx.field(static=True, default=False)

    @property
    def R(self) -> int:
        return self.W.shape[0]


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
    micro_values: Float[Array, "R MM"] | None = None

    @property
    def converged(self) -> Bool[Array, " R"]:
        """The optimiser succeeded and every market's share inversion converged."""
        return self.optimizer_success & jnp.all(self.contraction_status == 0, axis=-1)


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
    problems: Sequence[Problem], spec: ParameterSpec, W=None, delta0=None, micro: Sequence[MicroSetup] | None = None
) -> Replicated:
    """Stack R problems of identical shapes for :func:`estimate_replications`.

    Args:
        problems: R :class:`Problem` objects with the same specification and shapes.
        spec: the free nonlinear parameters (their starting values are used for every replication).
        W: initial weighting matrices, (MW, MW) for all or (R, MW, MW) with MW = M + MM (instruments,
            then micro moments); default each problem's 2SLS matrix, and with micro moments the
            initial update at the starting values that :meth:`Problem.solve` runs.
        delta0: starting δ, (R, T, J) padded; default each problem's logit inversion.
        micro: one :class:`._micro.MicroSetup` per replication (``Problem.build_micro``), with the
            same moments, functions and survey sizes N_d in every replication.

    Raises:
        BLPSpecificationError: the problems' shapes differ.
    """
    if not problems:
        raise BLPSpecificationError("a Monte Carlo needs at least one replication.")
    if any(p.setup.supply is not None for p in problems):
        raise BLPSpecificationError(
            "Monte Carlo replications with a supply side are not supported yet: estimate them one by one with "
            "Problem.solve, or drop costs=... for the vmapped study."
        )
    setup = _stack([p.setup for p in problems], "set-ups")
    R = len(problems)
    M = setup.Z.shape[-1]
    stacked_micro = None
    if micro is not None:
        if len(micro) != R:
            raise BLPSpecificationError(f"micro needs one MicroSetup per replication ({R}), got {len(micro)}.")
        stacked_micro = _stack(list(micro), "micro moments (datasets, survey sizes, parts or functions)")
    MM = 0 if stacked_micro is None else stacked_micro.MM
    initial_update = False
    if W is None:
        Z = setup.Z.reshape(R, -1, M)
        W = jax.vmap(lambda z: symmetric_inverse(z.T @ z / setup.N))(Z)
        initial_update = stacked_micro is not None
    else:
        W = np.asarray(W, np.float64)
        Ws = W.reshape((-1,) + W.shape[-2:]) if W.ndim == 3 else W[None]
        if W.ndim == 3 and W.shape[0] != R:
            raise BLPSpecificationError(
                f"W has {W.shape[0]} matrices for {R} replications: give one or one per replication."
            )
        for r, Wr in enumerate(Ws):
            check_weighting_matrix(Wr, M + MM, "W" if len(Ws) == 1 else f"W[{r}]")
        W = jnp.broadcast_to(jnp.asarray(W), (R, M + MM, M + MM))
    if delta0 is None:
        delta0 = jnp.stack([p.logit_delta() for p in problems])
    n_clusters = {p.products.n_clusters for p in problems}
    if len(n_clusters) != 1:
        raise BLPSpecificationError("the replications have different numbers of clusters.")
    return Replicated(
        setup,
        jnp.stack([p.products.X1 for p in problems]),
        jnp.stack([p.products.cluster_ids for p in problems]),
        W,
        jnp.asarray(delta0, jnp.float64),
        jnp.broadcast_to(jnp.asarray(spec.x0, jnp.float64), (R, spec.P)),
        n_clusters.pop(),
        stacked_micro,
        initial_update,
    )


def _batched_optax_minimize(value_and_grad, value, x0, delta0, lower, upper, opt: OptaxOptimizer) -> OptimizeResult:
    """:func:`._optimize.optax_minimize` made cheap to vmap; for one replication it computes the same.

    Under ``vmap`` a ``while_loop`` runs its body for every replication until the slowest one
    stops, and discards the results of those already done. Those replications would still run
    a full line search (and its share inversions) on every pass, and the batch's inner loops
    last as long as the slowest of them. Here a replication that is done is handed a zero
    gradient: its line search accepts at once and its inversions start at the solution, so it
    costs one cheap pass. Its carried state is unchanged (the batched loop discards the update), so
    every replication ends exactly where it would alone.
    """
    tx = optax.with_extra_args_support(opt.transform if opt.transform is not None else optax.lbfgs())
    lower = jnp.asarray(lower)
    upper = jnp.asarray(upper)
    x0 = jnp.clip(jnp.asarray(x0), lower, upper)
    q0, g0, ev0 = value_and_grad(x0, delta0)

    def active(x, g, k):
        gn = _projected_gradient_norm(x, g, lower, upper)
        return (k < opt.max_steps) & (gn > opt.gtol) & jnp.all(jnp.isfinite(g))

    def cond(c):
        x, _, _, g, _, k, _ = c
        return active(x, g, k)

    def body(c):
        x, state, q, g, delta, k, n = c
        g_in = jnp.where(active(x, g, k), g, 0.0)
        updates, state = tx.update(g_in, state, x, value=q, grad=g_in, value_fn=lambda y: value(y, delta))
        x = jnp.clip(optax.apply_updates(x, updates), lower, upper)
        q, g, ev = value_and_grad(x, delta)
        delta = jnp.where(jnp.all(ev.status == 0), ev.delta, delta)
        return x, state, q, g, delta, k + 1, n + 1

    init = (x0, tx.init(x0), q0, g0, ev0.delta, jnp.asarray(0), jnp.asarray(1))
    x, _, q, g, delta, k, n = jax.lax.while_loop(cond, body, init)
    success = (_projected_gradient_norm(x, g, lower, upper) <= opt.gtol) & jnp.isfinite(q)
    return OptimizeResult(x, delta, success, k, n)


def _gmm_step(spec, config, optimizer, se_type, W_type, n_clusters, step, x, delta0, W, setup, X1, cl, micro=None):
    """One GMM step of one replication, as :func:`._estimate.estimate` runs it with optax."""
    conc = Concentration.build(setup.ZX, W)
    if spec.P:
        res = _batched_optax_minimize(
            lambda y, d: _value_and_grad(spec, config, y, d, conc, setup, micro),
            lambda y, d: _value(spec, config, y, d, conc, setup, micro)[0],
            x,
            delta0,
            spec.lower,
            spec.upper,
            optimizer,
        )
        x_hat, success, iterations, evaluations = res.x, res.success, res.iterations, res.evaluations
    else:
        x_hat, success, iterations, evaluations = x, jnp.asarray(True), jnp.asarray(0), jnp.asarray(1)
    # a cold start from the step's δ₀ at the estimate, as estimate() does
    q, gradient, ev = _value_and_grad(spec, config, x_hat, delta0, conc, setup, micro)
    post = _post_step(
        x_hat,
        ev.delta,
        ev.g_delta,
        spec,
        setup,
        conc,
        X1,
        cl,
        n_clusters,
        se_type,
        W_type,
        se_type == "unadjusted" and step == 1,
        config,
        micro,
    )
    gnorm = _projected_gradient_norm(x_hat, gradient, jnp.asarray(spec.lower), jnp.asarray(spec.upper))
    record = ReplicationStep(
        x_hat,
        post["beta"],
        post["se"],
        q,
        gradient,
        gnorm,
        success,
        jnp.asarray(iterations, jnp.int32),
        jnp.asarray(evaluations, jnp.int32),
        ev.evaluations,
        ev.status,
        W,
        post["updated_W"],
        post["micro_values"],
    )
    return record, (x_hat, ev.delta, post["updated_W"])


def _initial_update(spec, config, se_type, W_type, n_clusters, x0, delta0, W_D, setup, X1, cl, micro):
    """W and δ₀ of the first step with micro moments and no user W, as :func:`._estimate.estimate`.

    Everything is evaluated at the starting values with the 2SLS matrix on the product moments
    (and zeros on the micro block); W is the inverse of the resulting moment covariances.
    """
    W = jax.scipy.linalg.block_diag(W_D, jnp.zeros((micro.MM, micro.MM)))
    conc = Concentration.build(setup.ZX, W)
    _, _, ev = _value_and_grad(spec, config, x0, delta0, conc, setup, micro)
    post = _post_step(
        x0, ev.delta, ev.g_delta, spec, setup, conc, X1, cl, n_clusters, se_type, W_type, False, config, micro
    )
    return post["updated_W"], ev.delta


def _one_replication(
    spec, config, optimizer, steps, se_type, W_type, n_clusters, initial, x0, delta0, W, setup, X1, cl, micro
):
    """Every GMM step of one replication; each step starts from the last one's θ, δ and updated W."""
    step_fn = partial(_gmm_step, spec, config, optimizer, se_type, W_type, n_clusters)
    if initial:
        W, delta0 = _initial_update(spec, config, se_type, W_type, n_clusters, x0, delta0, W, setup, X1, cl, micro)
    if steps == 1 or se_type == "unadjusted":  # unadjusted SEs differ between step 1 and later steps
        out, carry = [], (x0, delta0, W)
        for step in range(1, steps + 1):
            record, carry = step_fn(step, *carry, setup, X1, cl, micro)
            out.append(record)
        return tuple(out)

    # otherwise every step runs the same program: compile it once and scan over the steps
    def body(carry, _):
        record, carry = step_fn(steps, *carry, setup, X1, cl, micro)
        return carry, record

    _, records = jax.lax.scan(body, (x0, delta0, W), None, length=steps)
    return tuple(jax.tree_util.tree_map(lambda a, k=k: a[k], records) for k in range(steps))


@partial(jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def _program(spec, config, optimizer, steps, se_type, W_type, batch_size, data: Replicated):
    def one(args):
        x0, delta0, W, setup, X1, cl, micro = args
        return _one_replication(
            spec,
            config,
            optimizer,
            steps,
            se_type,
            W_type,
            data.n_clusters,
            data.initial_update,
            x0,
            delta0,
            W,
            setup,
            X1,
            cl,
            micro,
        )

    args = (data.x0, data.delta0, data.W, data.setup, data.X1, data.cluster_ids, data.micro)
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
        spec: the free nonlinear parameters (static: one compiled program per structure).
        data: the stacked replications (:func:`stack_problems`).
        steps: 1 or 2 GMM steps (the second uses each replication's updated W).
        se_type, W_type: as in :meth:`Problem.solve`.
        optimizer: an :class:`OptaxOptimizer` (default ``OptaxOptimizer()``: optax L-BFGS, gtol 1e-8).
        config: contraction settings (default SQUAREM, tol 1e-14).
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
    return _program(spec, config or ContractionConfig(), optimizer, steps, se_type, W_type, batch_size, data)


# --- pandas front -----------------------------------------------------------------------------------------
class MonteCarlo:
    """Per-replication estimates of a Monte Carlo study, with summaries against the truth.

    Attributes:
        labels: parameter labels, as in ``Results.parameters`` (free Σ, Π, ρ, then β).
        steps: one :class:`ReplicationStep` per GMM step; ``final`` is the last.
        truth: true parameter values in ``labels`` order (or None).
        seconds: wall time of the estimation (compilation included on the first run of a structure).
        micro_labels: names of the micro moments (empty without).
        micro_observed: R × MM observed values of the micro moments (None without).
    """

    def __init__(
        self,
        spec: ParameterSpec,
        linear: Sequence[str],
        steps,
        truth=None,
        seconds: float = float("nan"),
        micro_labels: Sequence[str] = (),
        micro_observed=None,
    ):
        self.spec, self.steps, self.seconds = spec, tuple(steps), seconds
        self.final: ReplicationStep = self.steps[-1]
        self.labels = list(spec.labels) + [f"beta[{n}]" for n in linear]
        self.truth = None if truth is None else self._truth_series(truth)
        self.micro_labels = list(micro_labels)
        self.micro_observed = None if micro_observed is None else np.asarray(micro_observed)

    @classmethod
    def from_problems(
        cls,
        problems: Sequence[Problem],
        sigma=None,
        pi=None,
        rho=None,
        *,
        method: str = "2s",
        W=None,
        se_type: str = "robust",
        W_type: str = "robust",
        optimizer: OptaxOptimizer | None = None,
        contraction: ContractionConfig | None = None,
        sigma_bounds=None,
        pi_bounds=None,
        rho_bounds=None,
        truth=None,
        batch_size: int | None = None,
        micro_moments: Sequence[Sequence[MicroMoment]] | Sequence[MicroMoment] | None = None,
    ) -> MonteCarlo:
        """Estimate R problems of identical shapes and specification in one vmapped program.

        Arguments are those of :meth:`Problem.solve` (starting values shared by every
        replication), plus ``truth`` (a mapping label → value, or values in ``labels`` order) and
        ``batch_size`` (see :func:`estimate_replications`). ``micro_moments`` is one list of
        :class:`MicroMoment` for every replication, or one list per replication (the same moments
        and survey sizes, e.g. with observed values from each replication's own survey); without
        ``W`` each replication starts with the initial update that :meth:`Problem.solve` runs.
        """
        check_x64()
        if method not in ("1s", "2s"):
            raise BLPSpecificationError("method must be '1s' or '2s'.")
        p0 = problems[0]
        for p in problems[1:]:
            if (p.linear, p.nonlinear, p.absorb, p.demographics, p.rho_by_nest) != (
                p0.linear,
                p0.nonlinear,
                p0.absorb,
                p0.demographics,
                p0.rho_by_nest,
            ):
                raise BLPSpecificationError("every replication must have the same specification.")
        spec = p0.parameter_spec(sigma, pi, rho, sigma_bounds, pi_bounds, rho_bounds)
        micro = micro_labels = None
        if micro_moments is not None:
            from ._micro_data import MicroMoment as _MicroMoment

            per = list(micro_moments)
            if per and all(isinstance(m, _MicroMoment) for m in per):
                per = [per] * len(problems)
            if len(per) != len(problems):
                raise BLPSpecificationError(
                    f"micro_moments needs one list of MicroMoment for all replications or one per replication "
                    f"({len(problems)}), got {len(per)}."
                )
            built = [p.build_micro(m) for p, m in zip(problems, per, strict=True)]
            micro = [b[0] for b in built]
            micro_labels = built[0][1].moments
        M = p0.setup.Z.shape[-1] + (0 if micro is None else micro[0].MM)
        if M < len(p0.linear) + spec.P:
            raise BLPSpecificationError(f"too few moments: {M} moments for {len(p0.linear) + spec.P} parameters.")
        data = stack_problems(problems, spec, W=W, micro=micro)
        t0 = time.perf_counter()
        steps = estimate_replications(
            spec,
            data,
            steps=1 if method == "1s" else 2,
            se_type=se_type,
            W_type=W_type,
            optimizer=optimizer,
            config=contraction,
            batch_size=batch_size,
        )
        steps = jax.block_until_ready(steps)
        seconds = time.perf_counter() - t0
        if micro is None:
            return cls(spec, p0.linear, steps, truth, seconds)
        return cls(spec, p0.linear, steps, truth, seconds, micro_labels, np.asarray(data.micro.observed))

    # --- tables ------------------------------------------------------------------------------------------
    def _truth_series(self, truth) -> pd.Series:
        import pandas as pd

        if isinstance(truth, dict):
            missing = [k for k in self.labels if k not in truth]
            if missing:
                raise BLPSpecificationError(f"truth has no value for {missing}.")
            values = [float(truth[k]) for k in self.labels]
        else:
            values = np.asarray(truth, np.float64).ravel()
            if values.shape != (len(self.labels),):
                raise BLPSpecificationError(f"truth needs {len(self.labels)} values, in the order {self.labels}.")
        return pd.Series(values, index=pd.Index(self.labels, name="parameter"), name="truth")

    def _frame(self, values) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(
            np.asarray(values),
            index=pd.RangeIndex(len(values), name="replication"),
            columns=pd.Index(self.labels, name="parameter"),
        )

    @property
    def R(self) -> int:
        return int(self.final.theta.shape[0])

    @property
    def estimates(self) -> pd.DataFrame:
        """R × (P + K1) estimates (free nonlinear parameters, then β)."""
        return self._frame(np.c_[np.asarray(self.final.theta), np.asarray(self.final.beta)])

    @property
    def standard_errors(self) -> pd.DataFrame:
        return self._frame(np.asarray(self.final.se))

    @property
    def converged(self) -> np.ndarray:
        return np.asarray(self.final.converged)

    @property
    def diagnostics(self) -> pd.DataFrame:
        """Per replication: objective, projected gradient norm, optimiser and contraction statistics."""
        import pandas as pd

        f = self.final
        status = np.asarray(f.contraction_status)
        ev = np.asarray(f.contraction_evaluations)
        return pd.DataFrame(
            {
                "objective": np.asarray(f.objective),
                "gradient_norm": np.asarray(f.gradient_norm),
                "optimizer_success": np.asarray(f.optimizer_success),
                "iterations": np.asarray(f.iterations),
                "evaluations": np.asarray(f.evaluations),
                "failed_markets": (status != 0).sum(axis=1),
                "max_contraction_evaluations": ev.max(axis=1),
                "converged": self.converged,
            },
            index=pd.RangeIndex(self.R, name="replication"),
        )

    def summary(self, truth=None, level: float = 0.95, converged_only: bool = True) -> pd.DataFrame:
        """Bias, RMSE, standard deviation, mean SE and CI coverage of every parameter.

        Args:
            truth: true values (mapping label → value or values in ``labels`` order); default
                the truth given when the study was run.
            level: confidence level of the normal intervals estimate ± z·SE.
            converged_only: summarise converged replications only (``n`` says how many).
        """
        import pandas as pd
        from scipy.stats import norm

        truth = self.truth if truth is None else self._truth_series(truth)
        if truth is None:
            raise BLPSpecificationError("summary() needs the true parameter values: pass truth=.")
        keep = self.converged if converged_only else np.ones(self.R, bool)
        est = self.estimates.to_numpy()[keep]
        se = self.standard_errors.to_numpy()[keep]
        t = truth.to_numpy()
        z = norm.ppf(0.5 + level / 2)
        err = est - t
        with np.errstate(invalid="ignore"):
            table = pd.DataFrame(
                {
                    "truth": t,
                    "mean": est.mean(axis=0),
                    "median": np.median(est, axis=0),
                    "bias": err.mean(axis=0),
                    "rmse": np.sqrt((err**2).mean(axis=0)),
                    "sd": est.std(axis=0, ddof=1) if len(est) > 1 else np.full(t.shape, np.nan),
                    "mean_se": se.mean(axis=0),
                    f"coverage_{round(100 * level)}": (np.abs(err) <= z * se).mean(axis=0),
                    "n": np.full(t.shape, len(est)),
                },
                index=pd.Index(self.labels, name="parameter"),
            )
        return table

    def plot(self, truth=None, bins: int = 30, converged_only: bool = True):
        """Histograms of the sampling distribution of every parameter (needs matplotlib).

        Returns:
            The matplotlib ``Figure``; the truth is drawn as a vertical line when known.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError("MonteCarlo.plot needs matplotlib: pip install matplotlib") from e
        truth = self.truth if truth is None else self._truth_series(truth)
        keep = self.converged if converged_only else np.ones(self.R, bool)
        est = self.estimates[keep]
        n = len(self.labels)
        cols = min(n, 3)
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax, label in zip(axes.ravel(), self.labels, strict=False):
            ax.hist(est[label], bins=bins, color="0.6")
            if truth is not None:
                ax.axvline(truth[label], color="C3", label="truth")
            ax.axvline(est[label].mean(), color="C0", linestyle="--", label="mean")
            ax.set_title(label)
        for ax in axes.ravel()[n:]:
            ax.set_visible(False)
        axes.ravel()[0].legend()
        fig.suptitle(f"Monte Carlo sampling distributions ({int(keep.sum())} of {self.R} replications)")
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        f = self.final
        return (
            f"MonteCarlo: {self.R} replications, {len(self.steps)}-step GMM, "
            f"{int(self.converged.sum())} converged, {self.seconds:.2f}s; mean optimizer iterations "
            f"{float(np.mean(np.asarray(f.iterations))):.1f}"
        )


SIMULATED_SPECIFICATION = {
    "linear": ("1", "x", "prices"),
    "nonlinear": ("1", "prices"),
    "demographics": ("income",),
}


def _drop_constant_instruments(products: pd.DataFrame) -> pd.DataFrame:
    """Drop excluded instruments that are constant (the product count, with a fixed design) and renumber."""
    columns = [c for c in products.columns if c.startswith("demand_instruments")]
    keep = [c for c in columns if products[c].nunique() > 1]
    out = products.drop(columns=columns)
    for k, c in enumerate(keep):
        out[f"demand_instruments{k}"] = products[c].to_numpy()
    return out


def simulate_replications(
    config: SimulationConfig, replications: int, seed: int = 0
) -> tuple[list[tuple[pd.DataFrame, pd.DataFrame]], dict]:
    """Simulate ``replications`` datasets with seeds ``seed``, ``seed + 1``, ...

    Excluded instruments that are constant (the number of products, in a fixed design) are
    dropped and the rest renumbered, so that the instruments have full rank.

    Returns:
        ``(product_data, agent_data)`` per replication, and the truth: a mapping from parameter
        label (as in ``Results.parameters``) to value, for every Σ, Π entry and β.
    """
    from dataclasses import replace

    from ._simulate import simulate

    data = []
    for r in range(replications):
        products, agents, _ = simulate(replace(config, seed=seed + r))
        data.append((_drop_constant_instruments(products), agents))
    x2, dem = SIMULATED_SPECIFICATION["nonlinear"], SIMULATED_SPECIFICATION["demographics"]
    sigma, pi = np.diag(config.sigma), np.asarray(config.pi, np.float64).reshape(len(x2), len(dem))
    truth = {f"sigma[{x2[r]}, {x2[c]}]": sigma[r, c] for r, c in zip(*np.tril_indices(len(x2)), strict=True)}
    truth |= {f"pi[{x2[r]}, {dem[c]}]": pi[r, c] for r, c in np.ndindex(pi.shape)}
    truth |= {f"beta[{n}]": b for n, b in zip(SIMULATED_SPECIFICATION["linear"], config.beta, strict=True)}
    return data, truth


def simulated_problems(config: SimulationConfig, replications: int, seed: int = 0) -> tuple[list[Problem], dict]:
    """:func:`simulate_replications`, each dataset made a :class:`Problem` of the simulated specification."""
    from ._problem import Problem

    data, truth = simulate_replications(config, replications, seed)
    problems = [Problem(products, agent_data=agents, **SIMULATED_SPECIFICATION) for products, agents in data]
    return problems, truth


def income_price_covariance(observations: int) -> MicroMoment:
    """A micro moment of the simulated model: Cov(income, price of the product bought | inside purchase).

    A survey of ``observations`` buyers (weights 1 on every inside good of every market, 0 on the
    outside good) records each buyer's income and the price paid. With π on prices × income,
    richer buyers are less price sensitive and buy dearer products, so the covariance moves with
    π: this is the kind of statistic that identifies Π beyond the cross-market variation of
    incomes. Three parts (E[income·price], E[income], E[price]) combined by f(v) = v₀ − v₁v₂; the
    delta method (autodiff) gives its covariance. The observed value here is a placeholder:
    :func:`survey_micro_moments` replaces it with a simulated survey's.
    """
    from ._micro_data import MicroDataset, MicroMoment, MicroPart

    buyers = MicroDataset("buyers survey", int(observations), lambda m: jnp.ones((m.I, m.J)))
    parts = [
        MicroPart("E[income × prices | j > 0]", buyers, lambda m: jnp.outer(m.agents["income"], m.products["prices"])),
        MicroPart("E[income | j > 0]", buyers, lambda m: jnp.outer(m.agents["income"], jnp.ones(m.J))),
        MicroPart("E[prices | j > 0]", buyers, lambda m: jnp.outer(jnp.ones(m.I), m.products["prices"])),
    ]
    return MicroMoment("Cov(income, prices | j > 0)", 0.0, parts, _covariance)


def _covariance(v):
    return v[0] - v[1] * v[2]


_NO_STEP: OptaxOptimizer | None = None


def results_at_truth(problem: Problem, sigma=None, pi=None, **solve_options):
    """:func:`._scores.results_at` with one optimiser instance, so every replication reuses its compiled program.

    ``solve_options`` go to :meth:`Problem.solve` (e.g. ``micro_moments``).

    (``results_at`` builds a new ``optax.set_to_zero()`` per call; the optimiser is a static
    argument of the jitted loop, so each call would compile it again, seconds per replication.)
    """
    global _NO_STEP
    if _NO_STEP is None:
        _NO_STEP = OptaxOptimizer(optax.set_to_zero(), max_steps=0)
    solve_options.setdefault("throw", False)
    return problem.solve(sigma, pi, method="1s", optimizer=_NO_STEP, **solve_options)


def _micro_config(moments: Sequence[MicroMoment]):
    """Datasets and parts in the order :func:`._micro_data.build_micro` numbers them."""
    datasets, parts = [], []
    for m in moments:
        for p in m.part_list:
            if p not in parts:
                parts.append(p)
            if p.dataset not in datasets:
                datasets.append(p.dataset)
    return datasets, parts


def survey_micro_moments(
    problem: Problem, moments: Sequence[MicroMoment], sigma=None, pi=None, seed: int = 0, truth_results=None
) -> list[MicroMoment]:
    """``moments`` with observed values from a survey simulated from the true model.

    Each micro dataset d draws N_d = ``observations`` consumers (market, agent, choice) with
    probability ∝ w_it s_ijt(θ₀) w_dijt at the true parameters (:func:`._scores.simulate_micro_data`
    on the problem's own agents, which generated its shares); every part's values are averaged
    over its dataset's draws and each moment's function applied to the averages. The observed
    values therefore carry the sampling noise of a survey of N_d, the size the micro block of the
    moment covariances assumes.

    Args:
        problem: one replication.
        moments: the micro moments (their observed values are ignored).
        sigma, pi: the true parameters.
        seed: seed of the survey draws (dataset k of the moments uses ``seed + k``).
        truth_results: :func:`results_at_truth` if already computed.
    """
    from ._micro import moment_values
    from ._micro_data import MicroMoment
    from ._scores import simulate_micro_data

    moments = list(moments)
    results = truth_results if truth_results is not None else results_at_truth(problem, sigma, pi)
    setup, _ = problem.build_micro(moments)
    datasets, _ = _micro_config(moments)
    position = {m: t for t, m in enumerate(problem.index.market_ids.tolist())}
    means = []
    for d, (dataset, arrays) in enumerate(zip(datasets, setup.datasets, strict=True)):
        draws = simulate_micro_data(results, dataset, seed=seed + d)
        local = {int(t): k for k, t in enumerate(np.asarray(arrays.markets))}
        td = np.asarray([local[position[m]] for m in draws["market_ids"]])
        index = (td, draws["agent_indices"].to_numpy(), draws["choice_indices"].to_numpy())
        if arrays.second:
            index = index + (draws["second_choice_indices"].to_numpy(),)
        values = np.asarray(arrays.values)
        means.append(values[(slice(None),) + index].mean(axis=1))
    v = jnp.asarray([means[d][k] for d, k in setup.parts])
    observed = np.asarray(moment_values(v, setup))
    return [MicroMoment(m.name, float(o), m.parts, m.function) for m, o in zip(moments, observed, strict=True)]


def optimal_micro_moments_at_truth(
    problem: Problem,
    dataset: MicroDataset,
    sigma=None,
    pi=None,
    seed: int = 0,
    integration: Integration | None = None,
    truth_results=None,
) -> list[MicroMoment]:
    """Optimal micro moments (one per parameter) with scores evaluated at the true parameters.

    A survey of ``dataset.observations`` consumers is simulated from the true model
    (:func:`._scores.simulate_micro_data`); each moment's observed value is the survey's mean score
    ∂ log P_n/∂θ and its model analogue averages the agent scores with the dataset's weights
    (:func:`._scores.optimal_micro_moments`).

    Simplification: Conlon & Gortmaker (2025) evaluate the scores at a first-step estimate θ̂
    (feasible); here they are evaluated at the truth θ₀ (infeasible, the moment an oracle would
    choose), which is what a first step converges to and avoids a preliminary estimation per
    replication. The scores are then fixed values of the parts: the estimation treats them as data.

    Args:
        problem: one replication.
        dataset: the micro dataset that is surveyed (its ``observations`` is N_d).
        sigma, pi: the true parameters.
        seed: seed of the survey draws.
        integration: integrates each surveyed consumer's unobserved tastes ν (the survey records
            market, demographics and choice, not ν); default None treats the drawn agent's own ν
            as observed, as :func:`._scores.simulate_micro_data`'s output does.
        truth_results: :func:`results_at_truth` if already computed.
    """
    from ._scores import optimal_micro_moments, simulate_micro_data

    results = truth_results if truth_results is not None else results_at_truth(problem, sigma, pi)
    micro_data = simulate_micro_data(results, dataset, seed=seed)
    return optimal_micro_moments(results, dataset, micro_data, integration)


def simulated_micro_moments(
    problems: Sequence[Problem],
    sigma=None,
    pi=None,
    *,
    moments: Sequence[MicroMoment] | None = None,
    optimal: MicroDataset | None = None,
    integration: Integration | None = None,
    seed: int = 0,
) -> list[list[MicroMoment]]:
    """Per replication, micro moments whose observed values come from surveys simulated at the truth.

    ``moments`` get their observed values from :func:`survey_micro_moments`; ``optimal`` adds one
    optimal micro moment per parameter (:func:`optimal_micro_moments_at_truth`) for that dataset.
    Replication r draws its surveys with seeds from ``seed + 1000 r``.
    """
    if moments is None and optimal is None:
        raise BLPSpecificationError("give moments= (micro moments to survey) and/or optimal= (a MicroDataset).")
    out = []
    for r, problem in enumerate(problems):
        truth_results = results_at_truth(problem, sigma, pi)
        these = []
        if moments is not None:
            these += survey_micro_moments(problem, moments, seed=seed + 1000 * r, truth_results=truth_results)
        if optimal is not None:
            these += optimal_micro_moments_at_truth(
                problem, optimal, seed=seed + 1000 * r + 500, integration=integration, truth_results=truth_results
            )
        out.append(these)
    return out


def monte_carlo(
    config: SimulationConfig,
    replications: int,
    seed: int = 0,
    *,
    sigma=None,
    pi=None,
    method: str = "2s",
    se_type: str = "robust",
    W_type: str = "robust",
    optimizer: OptaxOptimizer | None = None,
    contraction: ContractionConfig | None = None,
    sigma_bounds=None,
    pi_bounds=None,
    batch_size: int | None = None,
    micro_moments: Sequence[MicroMoment] | None = None,
    optimal_micro: MicroDataset | None = None,
    micro_integration: Integration | None = None,
    micro_seed: int | None = None,
) -> MonteCarlo:
    """Simulate R datasets from known truth and estimate all of them in one vmapped program.

    Every replication is :func:`simulate` with ``config`` and seed ``seed + r``, estimated with
    X1 = (1, x, prices), X2 = (1, prices) and demographic ``income`` (the simulated model),
    starting from the truth unless ``sigma`` / ``pi`` are given (zeros are fixed at zero, as in
    :meth:`Problem.solve`, so a zero true Π entry is not estimated).

    Args:
        config: the simulation design. Replications must have identical shapes, so give a fixed
            number of products per market: ``products=(J, J)``.
        replications: R.
        seed: seed of the first replication.
        method, se_type, W_type, optimizer, contraction, sigma_bounds, pi_bounds: as in
            :meth:`Problem.solve` (the optimiser must be an :class:`OptaxOptimizer`).
        batch_size: see :func:`estimate_replications`.
        micro_moments: micro moments stacked with the product moments in every replication, their
            observed values taken from a survey of N_d consumers simulated from the true model in
            that replication (:func:`survey_micro_moments`; e.g. :func:`income_price_covariance`).
        optimal_micro: a :class:`MicroDataset` whose optimal micro moments (one per parameter, scores
            at the truth: see :func:`optimal_micro_moments_at_truth`) are added in every replication.
        micro_integration: integration of the surveyed consumers' unobserved tastes in the optimal
            moments' scores (default: their own ν treated as observed).
        micro_seed: seed of the surveys (default ``seed``).

    Example:
        >>> mc = blpjax.monte_carlo(blpjax.SimulationConfig(markets=20, products=(5, 5), agents=50), 100)
        >>> mc.summary()      # bias, RMSE, mean SE and 95% coverage per parameter
        >>> mc.plot()         # sampling distributions (matplotlib)
    """
    if config.products[0] != config.products[1]:
        raise BLPSpecificationError(
            f"SimulationConfig.products={config.products} draws a different number of products per market in each "
            "replication; a vmapped Monte Carlo needs identical shapes: use products=(J, J)."
        )
    if replications < 1:
        raise BLPSpecificationError("replications must be at least 1.")
    problems, truth = simulated_problems(config, replications, seed)
    x2 = SIMULATED_SPECIFICATION["nonlinear"]
    sigma = np.diag(config.sigma) if sigma is None else sigma
    pi = np.asarray(config.pi, np.float64).reshape(len(x2), -1) if pi is None else pi
    micro = None
    if micro_moments is not None or optimal_micro is not None:
        micro = simulated_micro_moments(
            problems,
            np.diag(config.sigma),
            np.asarray(config.pi, np.float64).reshape(len(x2), -1),
            moments=micro_moments,
            optimal=optimal_micro,
            integration=micro_integration,
            seed=seed if micro_seed is None else micro_seed,
        )
    return MonteCarlo.from_problems(
        problems,
        sigma,
        pi,
        method=method,
        se_type=se_type,
        W_type=W_type,
        optimizer=optimizer,
        contraction=contraction,
        sigma_bounds=sigma_bounds,
        pi_bounds=pi_bounds,
        truth=truth,
        batch_size=batch_size,
        micro_moments=micro,
    )
