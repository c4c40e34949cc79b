"""An OpenAI-compatible HTTP server with per-user memory and a web page
(``python -m mlx_synapse.server``); :func:`create_app` builds the ASGI app."""

from .app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
