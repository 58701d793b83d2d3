"""Layouts: how markets are batched (vmap, chunks, size buckets, devices) around the one engine."""
