"""The OpenAI-compatible alignment server (``aligntime serve``).

``protocol`` holds the request and response models, ``service`` turns a
request into Aligner calls, ``routes`` and ``app`` are the thin HTTP layer.
"""

from aligntime.server.app import app_from_policies, create_app
from aligntime.server.config import ServerOptions

__all__ = ["ServerOptions", "app_from_policies", "create_app"]
