"""Benchmarks against named peers; ``python -m mlx_synapse.benchmarks.speed``."""
