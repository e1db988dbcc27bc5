"""The playground served by ``aligntime serve``: pages, their assets, and the API they read.

:data:`pages_router` serves the page shell and its static files (turned off with
``--no-ui``); :data:`api_router` adds the authenticated ``/v1/aligntime/`` routes the
page reads besides the OpenAI ones (policies, the audit log, evaluation reports).
"""

from __future__ import annotations

from aligntime.server.ui.api import router as api_router
from aligntime.server.ui.pages import router as pages_router

__all__ = ["api_router", "pages_router"]
