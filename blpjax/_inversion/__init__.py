"""Mean utilities δ(θ): fixed-point solvers and the implicit-function-theorem derivative."""
