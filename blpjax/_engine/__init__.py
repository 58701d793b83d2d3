"""One engine: the per-market contribution and its reduction (moments, q), the θ-independent set-up, GMM algebra, micro-data scores."""
