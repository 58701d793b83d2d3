"""Foundations: float64 and compiler configuration (every setting read once), errors and result codes, the allocator."""
