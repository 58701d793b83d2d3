"""Estimation: the compiled programs of an engine, the optimisers, the GMM driver and vmapped replications."""
