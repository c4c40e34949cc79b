"""Shared fixtures: the real default model (SmolLM2-135M-Instruct) when it can be had."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def smollm2_dir():
    """The converted default model directory (first use imports the GGUF).

    Outside CI a machine without the model (offline, nothing cached) skips;
    in CI (``CI=true``) that is a failure, since .ci/run provides the model.
    """
    from mlx_synapse.defaults import default_model_path

    try:
        return default_model_path()
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"default model unavailable: {e}")


@pytest.fixture(scope="session")
def smollm2_gguf():
    from mlx_synapse.defaults import find_default_gguf

    try:
        return find_default_gguf()
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"default model unavailable: {e}")
