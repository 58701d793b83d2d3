"""Nonlinear parameters: which entries of Σ, Π and ρ are free, their bounds, labels and packing.

Follows PyBLP's conventions: entries of Σ above the diagonal are zero; an entry whose starting
value is zero is fixed at zero; an entry whose lower and upper bounds are equal is fixed at that
value. Free parameters are ordered Σ (lower triangle, row by row), Π (row by row), ρ, then the linear
parameters (β, then γ) that are optimised with θ instead of concentrated out (PyBLP's ``beta``/``gamma``: NaN
concentrates an entry out, zero fixes it at zero, another value is a starting value, equal bounds fix it).
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
    # (β, γ): NaN where concentrated out, else the fixed value or the starting value (empty: all concentrated out)
    linear0: np.ndarray = field(default_factory=lambda: np.zeros(0))
    linear_free: tuple[int, ...] = ()  # entries of (β, γ) optimised with θ

    def _key(self):
        """What compiled programs depend on: structure, fixed values and bounds, not starting values."""
        sigma, pi, rho = self.sigma0.copy(), self.pi0.copy(), self.rho0.copy()
        for r, c in self.sigma_free:
            sigma[r, c] = 0
        for r, c in self.pi_free:
            pi[r, c] = 0
        rho[list(self.rho_free)] = 0
        linear = self.linear0.copy()
        linear[list(self.linear_free)] = 0
        return (
            self.linear_free,
            linear.tobytes(),
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
        """Length of the optimiser's vector: the free nonlinear parameters, then the linear ones optimised with them."""
        return len(self.labels)

    @property
    def P_theta(self) -> int:
        """The free nonlinear parameters (Σ, Π, ρ): the first ``P_theta`` entries of the optimiser's vector, and of the
        (θ, β, γ) vector of results and their covariances."""
        return self.P - len(self.linear_free)

    @property
    def concentrated(self) -> np.ndarray:
        """Per (β, γ) entry: concentrated out of the GMM problem (all of them without ``linear0``)."""
        return np.isnan(self.linear0)

    @property
    def has_linear(self) -> bool:
        """Whether some of (β, γ) is fixed or optimised with θ (else all are concentrated out)."""
        return bool(self.linear0.size) and not np.all(np.isnan(self.linear0))

    @property
    def fixed_linear(self) -> np.ndarray:
        """Per (β, γ) entry: fixed by the user (neither concentrated out nor optimised)."""
        fixed = ~np.isnan(self.linear0)
        fixed[list(self.linear_free)] = False
        return fixed

    def linear_at(self, x):
        """``Theta.linear`` at the optimiser's vector x (None when every linear parameter is concentrated out)."""
        return self.unpack(x).linear if self.has_linear else None

    def estimate_bounds(self, K: int) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) of the results' (θ, β, γ) vector (K linear parameters): θ's bounds, those of linear
        parameters optimised with θ, and the values of fixed ones; unbounded where concentrated out."""
        P = self.P_theta
        lower, upper = np.r_[self.lower[:P], np.full(K, -np.inf)], np.r_[self.upper[:P], np.full(K, np.inf)]
        if self.has_linear:
            fixed = self.fixed_linear
            lower[P:][fixed] = upper[P:][fixed] = self.linear0[fixed]
            free = P + np.asarray(self.linear_free, np.int64)
            lower[free], upper[free] = self.lower[P:], self.upper[P:]
        return lower, upper

    @property
    def x0(self) -> np.ndarray:
        return np.r_[self.pack_numpy(self.sigma0, self.pi0, self.rho0), self.linear0[list(self.linear_free)]]

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
        linear = None
        if self.has_linear:  # fixed entries as given, concentrated ones 0, free ones from x (after θ)
            base = np.where(np.isnan(self.linear0), 0.0, self.linear0)
            if not self.linear_free:
                linear = xp.asarray(base, dtype=xp.float64)
            elif x.shape[0] == self.P:
                linear = xp.asarray(filled(base, (np.asarray(self.linear_free),), self.P_theta), dtype=xp.float64)
            # else: θ alone (the results' (θ, β, γ) vector carries β and γ itself)
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
        linear = None if linear is None else jnp.asarray(linear)
        return Theta(jnp.asarray(sigma), jnp.asarray(pi), jnp.asarray(rho), self.rc_types, linear)


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
    linear_names=(),
    cost_names=(),
    beta=None,
    beta_bounds=None,
    gamma=None,
    gamma_bounds=None,
) -> ParameterSpec:
    """Validate starting values and bounds and build the :class:`ParameterSpec`.

    ``beta``/``gamma`` (PyBLP's): per X1/X3 column, NaN (or None) concentrates the parameter out (the default for
    all), 0 fixes it at zero, another value is fixed when its bounds are equal and otherwise a starting value for a
    parameter optimised with θ.
    """
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
    linear0, linear_free = np.zeros(0), ()
    if beta is not None or gamma is not None:
        parts = []
        for name, value, names in (("beta", beta, linear_names), ("gamma", gamma, cost_names)):
            if value is not None and not names:
                raise BLPSpecificationError(
                    f"{name} was given but the model has no {'X3' if name == 'gamma' else 'X1'}."
                )
            v = np.full(len(names), np.nan) if value is None else _linear_values(name, value, len(names))
            b = beta_bounds if name == "beta" else gamma_bounds
            if b is not None and any(np.any(np.isnan(v) & np.isfinite(np.asarray(e, np.float64))) for e in b):
                raise BLPSpecificationError(
                    f"{name}_bounds bound a parameter that is concentrated out (NaN in {name}); give it a "
                    f"starting value in {name} to optimise it within the bounds (PyBLP's convention)."
                )
            lo, hi = bounds(name, b, np.where(np.isnan(v), 0.0, v))
            parts.append((name, v, lo, hi, names))
        linear0 = np.concatenate([v for _, v, _, _, _ in parts])
        k = 0
        free = []
        for name, v, lo, hi, names in parts:
            for j, n in enumerate(names):
                if not np.isnan(v[j]) and v[j] != 0 and lo[j] != hi[j]:
                    free.append(k)
                    labels.append(f"{name}[{n}]")
                    kinds.append(name)
                    lower = np.r_[lower, lo[j]]
                    upper = np.r_[upper, hi[j]]
                k += 1
        linear_free = tuple(free)
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
        linear0,
        linear_free,
    )


def _linear_values(name: str, value, size: int) -> np.ndarray:
    """``beta``/``gamma`` as floats, None → NaN (concentrated out)."""
    v = np.array([np.nan if e is None else e for e in np.ravel(np.asarray(value, dtype=object))], dtype=np.float64)
    if v.shape != (size,):
        raise BLPSpecificationError(
            f"{name} must give one value per {'X3' if name == 'gamma' else 'X1'} column ({size}), got {v.shape[0]}; "
            "NaN or None concentrates a parameter out."
        )
    if np.any(np.isinf(v)):
        raise BLPSpecificationError(f"{name} has infinite values; NaN or None concentrates a parameter out.")
    return v
