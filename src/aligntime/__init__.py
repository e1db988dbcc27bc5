"""aligntime: align a frozen language model at inference time.

Prompting (system information, principles, demonstrations, templates) and
reranking (sample N answers, score them with reward models, classifiers,
judges and rules, gate on safety, pick the best) behind one ``Aligner``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aligntime.types import Candidate, GenerationParams, Message, Result, Timings, Usage

__version__ = "0.1.0"

__all__ = [
    "Aligner",
    "Candidate",
    "GenerationParams",
    "Message",
    "Result",
    "Timings",
    "Usage",
    "__version__",
]

if TYPE_CHECKING:
    from aligntime.aligner import Aligner


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import aligntime` stays cheap for the CLI.
    if name == "Aligner":
        from aligntime.aligner import Aligner

        return Aligner
    raise AttributeError(name)
