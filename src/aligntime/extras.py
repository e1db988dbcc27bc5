"""Optional dependencies: which extra brings which package, and the error when one is missing.

The core install carries no backend. Every backend imports its engine lazily and,
when the import fails, raises :func:`missing` so the user reads which extra to
install (``pip install 'aligntime[embedded]'``) instead of a bare ``ImportError``.
"""

from __future__ import annotations

import importlib.util

from aligntime.errors import ConfigError

EXTRA_OF: dict[str, str] = {
    "xllamacpp": "embedded",
    "profanity_check": "embedded",
    "sklearn": "embedded",
    "joblib": "embedded",
    "onnxruntime": "embedded",
    "tokenizers": "embedded",
    "torch": "hf",
    "transformers": "hf",
    "gguf": "hf",
    "accelerate": "hf",
    "safetensors": "embedded",
    "fastapi": "server",
    "starlette": "server",
    "uvicorn": "server",
    "prometheus_client": "server",
    "matplotlib": "eval",
}
# The openai client (and its httpx2) are core dependencies: the openai backend needs no extra.
"""Top-level module name -> the extra of ``pyproject.toml`` that installs it."""


def extra_for(exc: ImportError) -> str | None:
    """The extra that installs the module an import failed on, if aligntime knows it."""
    name = (exc.name or "").partition(".")[0]
    return EXTRA_OF.get(name)


def missing(what: str, exc: ImportError, *, extra: str | None = None) -> ConfigError:
    """The error for ``what`` (e.g. "the llamacpp backend") whose import failed with ``exc``."""
    extra = extra or extra_for(exc)
    module = exc.name or "a package"
    hint = (
        f"pip install 'aligntime[{extra}]'"
        if extra
        else f"install the package that provides {module!r}"
    )
    return ConfigError(f"{what} needs {module!r}, which is not installed", hint=hint)


def require(module: str, *, what: str) -> None:
    """Fail early, without importing it, when ``module`` is not installed."""
    if importlib.util.find_spec(module) is None:
        raise missing(what, ModuleNotFoundError(name=module), extra=EXTRA_OF.get(module))
