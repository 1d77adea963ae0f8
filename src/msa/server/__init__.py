"""msa.server: an OpenAI-compatible HTTP server with a memory API, thin over ``Engine`` and ``MemoryBank``.

Needs the ``serve`` extra (FastAPI, uvicorn). ``msa serve`` runs it; ``create_app`` builds the ASGI app.
"""

from msa.server.config import ServerConfig
from msa.server.main import add_arguments, main, serve

__all__ = ["ServerConfig", "add_arguments", "create_app", "main", "serve"]


def __getattr__(name: str):
    if name == "create_app":  # imports FastAPI: only when asked for
        from msa.server.app import create_app

        return create_app
    raise AttributeError(name)
