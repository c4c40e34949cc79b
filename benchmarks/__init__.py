"""Benchmarks against named peers; ``python -m mlx_synapse.bench`` runs the suite (``suite.py``)."""
