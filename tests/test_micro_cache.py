"""Micro weights and values are evaluated once per problem and list of micro moments."""

import jax.numpy as jnp
import numpy as np

import blpjax


def test_resolving_with_the_same_micro_moments_does_not_evaluate_them_again():
    products, agents, _ = blpjax.simulate(blpjax.SimulationConfig(markets=6, agents=15, seed=11))
    problem = blpjax.Problem(
        products, ("1", "x", "prices"), ("1", "prices"), agent_data=agents, demographics=("income",)
    )
    calls = []

    def values(m):
        calls.append(1)  # runs while JAX traces the function (a Python side effect per evaluation)
        return jnp.outer(m.agents["income"], jnp.ones(m.J))

    dataset = blpjax.MicroDataset("buyers", 500, lambda m: jnp.ones((m.I, m.J)))
    moments = [blpjax.MicroMoment("E[income | inside]", 0.1, blpjax.MicroPart("income", dataset, values))]
    args = dict(
        sigma=np.diag([0.5, 0.5]),
        pi=[[0.0], [0.2]],
        method="1s",
        optimizer=blpjax.ScipyOptimizer("bfgs", maxiter=2),
        throw=False,
    )
    first = problem.solve(micro_moments=moments, **args)
    evaluated = len(calls)
    assert evaluated > 0
    again = problem.solve(micro_moments=moments, **args)
    assert len(calls) == evaluated  # cached: the same MicroMoment objects
    np.testing.assert_array_equal(np.asarray(first.micro_values), np.asarray(again.micro_values))
    fresh = [blpjax.MicroMoment("E[income | inside]", 0.1, blpjax.MicroPart("income", dataset, values))]
    problem.solve(micro_moments=fresh, **args)
    assert len(calls) > evaluated  # new objects are evaluated
