"""Nonlinear parameters: which entries of Σ, Π and ρ are free, their bounds, labels and packing.

Follows PyBLP's conventions: entries of Σ above the diagonal are zero; an entry whose starting
value is zero is fixed at zero; an entry whose lower and upper bounds are equal is fixed at that
value. Free parameters are ordered Σ (lower triangle, row by row), Π (row by row), ρ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np

from .._base.errors import BLPSpecificationError
from .market import Theta


@dataclass(frozen=True, eq=False)
class ParameterSpec:
    """Static description of the free nonlinear parameters (hashable by identity)."""

    sigma0: np.ndarray
    pi0: np.ndarray
    rho0: np.ndarray
    sigma_free: tuple[tuple[int, int], ...]
    pi_free: tuple[tuple[int, int], ...]
    rho_free: tuple[int, ...]
    lower: np.ndarray
    upper: np.ndarray
    labels: tuple[str, ...]
    kinds: tuple[str, ...] = field(default=())
    n_nests: int = 0
    rc_types: tuple[str, ...] = ()  # per X2 column (empty: all linear)

    def _key(self):
        """What compiled programs depend on: structure, fixed values and bounds, not starting values."""
        sigma, pi, rho = self.sigma0.copy(), self.pi0.copy(), self.rho0.copy()
        for r, c in self.sigma_free:
            sigma[r, c] = 0
        for r, c in self.pi_free:
            pi[r, c] = 0
        rho[list(self.rho_free)] = 0
        return (
            self.sigma_free,
            self.pi_free,
            self.rho_free,
            self.n_nests,
            self.rc_types,
            sigma.shape,
            pi.shape,
            sigma.tobytes(),
            pi.tobytes(),
            rho.tobytes(),
            # bounds are read inside compiled optimiser loops (optax, Monte Carlo): a program compiled for
            # other bounds must never be reused
            self.lower.tobytes(),
            self.upper.tobytes(),
        )

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, ParameterSpec) and self._key() == other._key()

    @property
    def P(self) -> int:
        return len(self.labels)

    @property
    def x0(self) -> np.ndarray:
        return self.pack_numpy(self.sigma0, self.pi0, self.rho0)

    def pack_numpy(self, sigma, pi, rho) -> np.ndarray:
        out = [sigma[r, c] for r, c in self.sigma_free]
        out += [pi[r, c] for r, c in self.pi_free]
        out += [rho[h] for h in self.rho_free]
        return np.asarray(out, dtype=np.float64)

    def unpack(self, x, host: bool = False) -> Theta:
        """θ vector → :class:`Theta` (traceable; ``host=True`` fills the matrices in NumPy instead,
        for host-side results, so no XLA scatter program is compiled)."""
        xp = np if host else jnp
        x = xp.asarray(x)

        def filled(template, index, k):
            """``template`` with the entries at ``index`` set to x[k], x[k + 1], ..."""
            template = np.array(template, np.float64)
            n = len(index[0])
            if host:
                template[index] = x[k : k + n]
                return template
            # a gather with constant indices instead of a scatter: XLA fuses it into a loop under
            # every transformation (jacfwd's vmap included); a traced scatter becomes a while loop
            # on CPU, one more to compile per use
            position = np.full(template.shape, n)  # n: the appended placeholder
            position[index] = np.arange(n)
            gathered = jnp.concatenate([x[k : k + n], jnp.zeros(1, x.dtype)])[position]
            return jnp.where(position < n, gathered, jnp.asarray(template))

        k = 0
        sigma, pi, rho = self.sigma0, self.pi0, self.rho0
        if self.sigma_free:
            r, c = np.array(self.sigma_free).T
            sigma = filled(sigma, (r, c), k)
            k += len(r)
        if self.pi_free:
            r, c = np.array(self.pi_free).T
            pi = filled(pi, (r, c), k)
            k += len(r)
        if self.rho_free:
            idx = np.array(self.rho_free)
            rho = filled(rho, (idx,), k)
        sigma, pi, rho = (xp.asarray(a, dtype=xp.float64) for a in (sigma, pi, rho))
        if self.n_nests and rho.shape[0] == 1:
            rho = xp.broadcast_to(rho, (self.n_nests,))
        return Theta(jnp.asarray(sigma), jnp.asarray(pi), jnp.asarray(rho), self.rc_types)


RC_TYPES = ("linear", "log", "logit")


def check_rc_types(rc_types, x2_names) -> tuple[str, ...]:
    """``rc_types`` validated: one of :data:`RC_TYPES` per X2 column (``None``: all linear, stored as ``()``)."""
    if rc_types is None or (not isinstance(rc_types, str) and len(tuple(rc_types)) == 0):
        return ()
    if isinstance(rc_types, str):
        rc_types = (rc_types,)
    rc_types = tuple(rc_types)
    if len(rc_types) != len(x2_names) or any(t not in RC_TYPES for t in rc_types):
        raise BLPSpecificationError(
            f"rc_types must give one of {RC_TYPES} per nonlinear characteristic {list(x2_names)}; got {rc_types!r}."
        )
    return () if all(t == "linear" for t in rc_types) else rc_types


def _as_matrix(name, value, shape):
    if value is None:
        return np.zeros(shape)
    a = np.asarray(value, dtype=np.float64)
    if shape[1] == 1 and a.ndim == 1 and shape[0] == a.shape[0] and name == "rho":
        a = a[:, None]
    if a.shape != shape:
        raise BLPSpecificationError(f"{name} must have shape {shape} (got {a.shape}).")
    if not np.all(np.isfinite(a)):
        raise BLPSpecificationError(f"{name} has non-finite starting values.")
    return a


def build_parameters(
    x2_names,
    demographic_names,
    n_nests: int,
    sigma=None,
    pi=None,
    rho=None,
    sigma_bounds=None,
    pi_bounds=None,
    rho_bounds=None,
    rho_by_nest: bool = False,
    nest_labels=None,
    rc_types=None,
) -> ParameterSpec:
    """Validate starting values and bounds and build the :class:`ParameterSpec`."""
    K2, D = len(x2_names), len(demographic_names)
    rc_types = check_rc_types(rc_types, x2_names)
    if K2 == 0 and (sigma is not None and np.size(sigma) or pi is not None and np.size(pi)):
        raise BLPSpecificationError("sigma/pi were given but the model has no nonlinear (X2) characteristics.")
    sigma0 = _as_matrix("sigma", sigma, (K2, K2))
    if np.any(np.triu(sigma0, 1) != 0):
        raise BLPSpecificationError(
            "sigma must be lower triangular (a Cholesky root); entries above the diagonal are not zero."
        )
    if pi is not None and D == 0 and np.size(pi):
        raise BLPSpecificationError("pi was given but no demographics were specified.")
    pi0 = _as_matrix("pi", pi, (K2, D))
    H = (n_nests if rho_by_nest else 1) if n_nests > 0 else 0
    if rho is None and n_nests > 0:
        raise BLPSpecificationError("the data have nesting_ids, so a starting value for rho is needed.")
    if rho is not None and n_nests == 0:
        raise BLPSpecificationError("rho was given but product_data has no nesting_ids column.")
    rho0 = np.zeros(H) if rho is None else np.broadcast_to(np.asarray(rho, np.float64).ravel(), (H,)).copy()
    if np.any((rho0 < 0) | (rho0 >= 1)):
        raise BLPSpecificationError("rho must lie in [0, 1).")

    def bounds(name, b, value):
        lo = np.full(value.shape, -np.inf)
        hi = np.full(value.shape, np.inf)
        if b is not None:
            lo = np.broadcast_to(np.asarray(b[0], np.float64), value.shape).copy()
            hi = np.broadcast_to(np.asarray(b[1], np.float64), value.shape).copy()
            lo[np.isnan(lo)] = -np.inf
            hi[np.isnan(hi)] = np.inf
            if np.any((value < lo) | (value > hi)):
                raise BLPSpecificationError(f"the starting value of {name} lies outside {name}_bounds.")
        return lo, hi

    s_lo, s_hi = bounds("sigma", sigma_bounds, sigma0)
    p_lo, p_hi = bounds("pi", pi_bounds, pi0)
    r_lo, r_hi = bounds("rho", rho_bounds if rho_bounds is not None else (0.0, 0.99), rho0)
    sigma_free = tuple(
        (r, c) for r, c in zip(*np.tril_indices(K2), strict=True) if sigma0[r, c] != 0 and s_lo[r, c] != s_hi[r, c]
    )
    pi_free = tuple((r, c) for r, c in np.ndindex(K2, D) if pi0[r, c] != 0 and p_lo[r, c] != p_hi[r, c])
    rho_free = tuple(h for h in range(H) if r_lo[h] != r_hi[h])
    labels = [f"sigma[{x2_names[r]}, {x2_names[c]}]" for r, c in sigma_free]
    labels += [f"pi[{x2_names[r]}, {demographic_names[c]}]" for r, c in pi_free]
    if H == 1:
        labels += ["rho" for _ in rho_free]
    else:
        names = nest_labels if nest_labels is not None else list(range(H))
        labels += [f"rho[{names[h]}]" for h in rho_free]
    kinds = ["sigma"] * len(sigma_free) + ["pi"] * len(pi_free) + ["rho"] * len(rho_free)
    lower = np.r_[[s_lo[i] for i in sigma_free], [p_lo[i] for i in pi_free], [r_lo[h] for h in rho_free]]
    upper = np.r_[[s_hi[i] for i in sigma_free], [p_hi[i] for i in pi_free], [r_hi[h] for h in rho_free]]
    return ParameterSpec(
        sigma0,
        pi0,
        rho0,
        sigma_free,
        pi_free,
        rho_free,
        lower.astype(float),
        upper.astype(float),
        tuple(labels),
        tuple(kinds),
        n_nests,
        tuple(rc_types),
    )
