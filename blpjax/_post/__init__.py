"""After estimation: the fitted model as a JAX value, counterfactuals and inference on them."""
