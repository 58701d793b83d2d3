"""Micro moments, the numerical core: survey weights and values per market, choice probabilities of first and second choices."""
