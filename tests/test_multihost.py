"""Several hosts, for real: the README's multi-host recipe, run as two processes of two CPU devices each.

Each process calls ``jax.distributed.initialize`` (gloo collectives on CPU), builds the same Problem
with ``devices=4`` (the devices of both processes) and places only its own markets; both processes
must report the same estimates, equal to the padded single-device estimate.
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyblp

import blpjax

README = Path(__file__).resolve().parents[1] / "README.md"


def recipe() -> str:
    text = README.read_text()
    after = text[text.index("<!-- multi-host") :]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_the_readme_recipe_estimates_across_two_processes(tmp_path):
    script = tmp_path / "recipe.py"
    script.write_text(recipe())
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(k), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
            outputs.append(out)
    finally:
        for p in procs:
            p.kill()
    estimates = []
    for k, out in enumerate(outputs):
        line = next(line for line in out.splitlines() if line.startswith("ESTIMATES"))
        _, process_id, values, objective = line.split(" ", 3)
        assert int(process_id) == k
        estimates.append(np.r_[json.loads(values), float(objective)])
    np.testing.assert_array_equal(estimates[0], estimates[1])  # replicated results, identical in every process

    products = pd.read_csv(pyblp.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(pyblp.data.NEVO_AGENTS_LOCATION)
    problem = blpjax.Problem(
        products,
        linear=("prices",),
        nonlinear=("1", "prices", "sugar", "mushy"),
        absorb=("product_ids",),
        agent_data=agents,
        demographics=("income", "income_squared", "age", "child"),
    )
    sigma = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
    pi = [[5.4819, 0, 0.2037, 0], [15.8935, -1.2, 0, 2.6342], [-0.2506, 0, 0.0511, 0], [1.2650, 0, -0.8091, 0]]
    padded = problem.solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("bfgs", gtol=1e-5))
    expected = np.r_[padded.parameters["estimate"].to_numpy(), padded.objective]
    np.testing.assert_allclose(estimates[0], expected, rtol=1e-6, atol=1e-8)
