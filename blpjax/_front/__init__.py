"""The pandas front: data validation, Problem, Results, micro-moment configuration, simulation and Monte Carlo studies, the CLI."""
