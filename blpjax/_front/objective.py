"""The GMM objective of one step as a pure JAX function of the free parameters, for the caller's own loop.

:meth:`Problem.objective` builds an :class:`Objective` on the same engine :meth:`Problem.solve` uses (the
same per-market solution, IFT derivatives, supply side and micro moments, on any layout). ``obj(x)`` is q(x):
jittable, differentiable to any order, vmappable over x. The share inversion inside starts every call from
the same δ (``obj.delta0``); :meth:`Objective.value_and_grad` carries the warm start as explicit state.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, Float, Int

from .._engine.gmm import Concentration
from .._estimation.programs import Engine
from .._model.params import ParameterSpec
from .scores import results_at


class ObjectiveState(eqx.Module):
    """The warm start of the next share inversion and the outcome of the last one.

    Attributes:
        delta: mean utilities (T, J) on the padded layout, the next evaluation's starting δ.
        status: per market, 0 when the last inversion converged (see :class:`EstimationStatus` for codes).
    """

    delta: Float[Array, "T J"]
    status: Int[Array, " T"]


class ObjectiveAux(eqx.Module):
    """What an evaluation saw besides q: per-market inversion status and iterations, and the δ it solved."""

    status: Int[Array, " T"]
    evaluations: Int[Array, " T"]
    delta: Float[Array, "T J"]


class Objective(eqx.Module):
    """q(x) = N ḡ(x)'W ḡ(x) for one GMM step with a fixed W (see :meth:`Problem.objective`).

    - ``obj(x)``: q, a pure function of the free-parameter vector x (``obj.labels`` names its entries):
      ``jax.grad``, ``jax.hessian``, ``jax.jacfwd``, ``jax.vmap`` and ``jax.jit`` apply. When a market's share
      inversion fails at x (or q is not finite), ``obj(x)`` is ``+inf``; :meth:`value_and_aux` says which markets.
    - :meth:`value_and_grad` ``(x, state) -> (q, g, state)``: the compiled value-and-gradient program with the
      warm start carried as :class:`ObjectiveState` (what :meth:`Problem.solve` runs per evaluation).
    - ``x0``, ``lower``, ``upper``, ``labels``; :meth:`pack` and :meth:`unpack` between x and Σ, Π, ρ.
    - :meth:`results`: :class:`Results` at any x with this W (β, SEs, updated W, post-estimation).

    ``jax.jit(obj)`` and ``jax.jit(obj.value_and_grad)`` work as written (the object hashes by identity); to pass
    the object itself into a jitted function, use ``eqx.filter_jit``.
    """

    engine: Engine
    conc: Concentration
    delta0: Float[Array, "T J"]
    x0: Float[Array, " P"]
    lower: Float[Array, " P"]
    upper: Float[Array, " P"]
    spec: ParameterSpec = eqx.field(static=True)
    problem: object = eqx.field(static=True)
    options: tuple = eqx.field(static=True)  # (se_type, W_type, contraction, micro_moments, costs_bounds)

    # by identity, so that the object is a valid function for ``jax.jit(obj)`` (its fields hold arrays)
    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other) -> bool:
        return self is other

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.lower), np.asarray(self.upper)

    @property
    def W(self) -> np.ndarray:
        return np.asarray(self.conc.W)

    def value_and_aux(self, x) -> tuple[Array, ObjectiveAux]:
        """(q, :class:`ObjectiveAux`) at x from ``delta0``; q is ``+inf`` where any market's inversion failed."""
        q, (ev, _) = self.engine.value(jnp.asarray(x), self.delta0, self.conc)
        ok = jnp.all(ev.status == 0) & jnp.isfinite(q)
        return jnp.where(ok, q, jnp.inf), ObjectiveAux(ev.status, ev.evaluations, ev.delta)

    def __call__(self, x) -> Array:
        return self.value_and_aux(x)[0]

    def init_state(self) -> ObjectiveState:
        """The starting state: δ₀ (the logit inversion, or ``delta=``) and no failed markets."""
        return ObjectiveState(self.delta0, jnp.zeros(self.delta0.shape[0], jnp.int32))

    def value_and_grad(self, x, state: ObjectiveState | None = None) -> tuple[Array, Array, ObjectiveState]:
        """(q, ∂q/∂x, next state) from the state's warm start. A failed inversion gives q = +inf, its markets'
        codes in ``state.status`` and the previous warm start kept (a failed δ never seeds the next call)."""
        state = self.init_state() if state is None else state
        q, g, ev, _ = self.engine.value_and_grad(jnp.asarray(x), state.delta, self.conc)
        ok = jnp.all(ev.status == 0) & jnp.isfinite(q)
        delta = jnp.where(ok, ev.delta, state.delta)
        return jnp.where(ok, q, jnp.inf), g, ObjectiveState(delta, ev.status.astype(jnp.int32))

    def pack(self, sigma=None, pi=None, rho=None) -> np.ndarray:
        """x from Σ, Π, ρ (the free entries, in ``labels`` order; omitted ones from the starting values)."""
        theta = self.spec.unpack(np.asarray(self.x0), host=True)
        parts = [np.asarray(theta.sigma if sigma is None else sigma, np.float64)]
        parts.append(np.asarray(theta.pi if pi is None else pi, np.float64).reshape(np.shape(theta.pi)))
        parts.append(np.broadcast_to(np.asarray(theta.rho if rho is None else rho, np.float64), np.shape(theta.rho)))
        return self.spec.pack_numpy(*parts)

    def unpack(self, x) -> dict:
        """``{"sigma", "pi", "rho"}`` as arrays and ``"x"`` as a labelled Series."""
        x = np.asarray(x, np.float64)
        theta = self.spec.unpack(x, host=True)
        return {
            "sigma": np.asarray(theta.sigma),
            "pi": np.asarray(theta.pi),
            "rho": np.asarray(theta.rho),
            "x": pd.Series(x, index=self.labels, name="x"),
        }

    def results(self, x, delta=None):
        """:class:`Results` at x with this objective's W (one step, no optimisation: ``converged`` is False)."""
        se_type, W_type, contraction, micro_moments, costs_bounds = self.options
        theta = self.unpack(x)
        n_rho = len(self.spec.rho_free) or None
        return results_at(
            self.problem,
            theta["sigma"],
            theta["pi"],
            theta["rho"] if n_rho else None,
            W=self.W,
            se_type=se_type,
            W_type=W_type,
            contraction=contraction,
            micro_moments=micro_moments,
            costs_bounds=costs_bounds,
            delta=delta,
        )


__all__ = ["Objective", "ObjectiveAux", "ObjectiveState"]
