"""Integration rules for the unobserved taste shocks ν ~ N(0, I_K2).

Each rule returns ``(nodes, weights)`` for one market: nodes (I, K2) and weights (I,) summing to
one. Monte Carlo, scrambled Halton and Latin hypercube draws use SciPy's ``qmc`` (a dependency of
JAX already); MLHS is the modified Latin hypercube of Hess, Train and Polak (2006); ``product`` is
the tensor Gauss–Hermite rule; ``grid`` is a Smolyak sparse grid built from Gauss–Hermite rules
by the combination technique, with coincident nodes merged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from math import comb

import numpy as np
from scipy.special import roots_hermitenorm
from scipy.stats import norm, qmc

from .._base.errors import BLPSpecificationError

RULES = ("monte_carlo", "halton", "lhs", "mlhs", "product", "grid")


@dataclass(frozen=True)
class Integration:
    """An integration rule.

    Args:
        rule: one of ``monte_carlo``, ``halton``, ``lhs``, ``mlhs``, ``product``, ``grid``.
        size: draws per market (simulation rules), points per dimension (``product``) or the
            accuracy level (``grid``).
        seed: seed of NumPy's generator for the simulation rules (markets get independent streams).

    Example:
        >>> nodes, weights = Integration("halton", 100, seed=0).build(dimension=2)
    """

    rule: str
    size: int
    seed: int = 0

    def __post_init__(self):
        if self.rule not in RULES:
            raise BLPSpecificationError(f"Integration rule must be one of {RULES}, got {self.rule!r}.")
        if int(self.size) < 1:
            raise BLPSpecificationError("Integration size must be a positive integer.")

    @property
    def simulated(self) -> bool:
        return self.rule in ("monte_carlo", "halton", "lhs", "mlhs")

    def build(self, dimension: int, market: int = 0, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Nodes and weights of one market (``market`` selects an independent random stream)."""
        n = int(self.size if size is None else size)
        if dimension == 0:
            return np.zeros((n if self.simulated else 1, 0)), np.full(
                n if self.simulated else 1, 1 / (n if self.simulated else 1)
            )
        rng = np.random.default_rng([self.seed, market])
        if self.rule == "monte_carlo":
            return rng.standard_normal((n, dimension)), np.full(n, 1 / n)
        if self.rule == "halton":
            u = qmc.Halton(d=dimension, scramble=True, seed=rng).random(n)
        elif self.rule == "lhs":
            u = qmc.LatinHypercube(d=dimension, seed=rng).random(n)
        elif self.rule == "mlhs":
            u = np.column_stack([rng.permutation((np.arange(n) + rng.uniform()) / n) for _ in range(dimension)])
        elif self.rule == "product":
            return product_rule(dimension, n)
        else:
            return sparse_grid(dimension, n)
        u = np.clip(u, 1e-12, 1 - 1e-12)
        return norm.ppf(u), np.full(n, 1 / n)


def _hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite rule for the standard normal with n points."""
    x, w = roots_hermitenorm(n)
    return x, w / w.sum()


def product_rule(dimension: int, points: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = _hermite(points)
    nodes = np.array(list(itertools.product(x, repeat=dimension)))
    weights = np.prod(np.array(list(itertools.product(w, repeat=dimension))), axis=1)
    return nodes, weights


def sparse_grid(dimension: int, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Smolyak combination of Gauss–Hermite rules with 1, 3, 5, ... points (exact for
    polynomials of total degree 2·level − 1)."""
    acc: dict[tuple, float] = {}
    q = level + dimension - 1
    for total in range(max(dimension, q - dimension + 1), q + 1):
        coef = (-1) ** (q - total) * comb(dimension - 1, q - total)
        for levels in itertools.product(range(1, total + 1), repeat=dimension):
            if sum(levels) != total:
                continue
            rules = [_hermite(2 * k - 1) for k in levels]
            for combo in itertools.product(*[range(len(r[0])) for r in rules]):
                node = tuple(round(float(rules[d][0][i]), 12) for d, i in enumerate(combo))
                weight = coef * np.prod([rules[d][1][i] for d, i in enumerate(combo)])
                acc[node] = acc.get(node, 0.0) + weight
    nodes = np.array([k for k, v in acc.items() if abs(v) > 1e-15])
    weights = np.array([v for v in acc.values() if abs(v) > 1e-15])
    return nodes, weights / weights.sum()
