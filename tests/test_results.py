"""Results read what they need and pickle: a result saved after estimation answers post-estimation questions."""

import pickle

import numpy as np
import pandas as pd
import pytest

import blpjax


@pytest.fixture(scope="module")
def solved():
    products, agents, _ = blpjax.simulate(blpjax.SimulationConfig(markets=8, agents=30, products=(3, 6), seed=2))
    problem = blpjax.Problem(
        products, ("1", "x", "prices"), ("1", "prices"), agent_data=agents, demographics=("income",)
    )
    return problem, problem.solve(np.diag([1.0, 0.3]), [[0.0], [0.4]], method="1s")


def test_a_pickled_result_answers_post_estimation_questions(solved):
    problem, results = solved
    loaded = pickle.loads(pickle.dumps(results))
    assert loaded.problem is None and loaded.converged
    pd.testing.assert_frame_equal(loaded.parameters, results.parameters)
    market = problem.index.market_ids[3]
    pd.testing.assert_frame_equal(loaded.elasticity_matrix(market), results.elasticity_matrix(market))
    np.testing.assert_allclose(
        loaded.compute_diversion_ratios(layout="padded"), results.compute_diversion_ratios(layout="padded")
    )
    prices = problem.product_data["prices"] * 1.05
    np.testing.assert_allclose(loaded.compute_shares("prices", prices), results.compute_shares("prices", prices))
    pd.testing.assert_series_equal(loaded.compute_consumer_surplus(), results.compute_consumer_surplus())
    np.testing.assert_allclose(loaded.hessian, results.hessian, rtol=1e-10)  # rebuilt from the arrays it carries
    with pytest.raises(blpjax.BLPSpecificationError, match="needs the Problem"):
        loaded.compute_optimal_instruments()
