"""Request bodies and reply readers of the served scorers' endpoints.

Shapes as the projects document them:

vLLM (``vllm serve`` with a pooling model; endpoints at the server root):

- ``POST /pooling`` ``{"model", "input": [text, ...]}`` ->
  ``{"data": [{"index", "data": [float, ...] | [[float, ...], ...]}]}``: a pooled
  vector per text (a reward model's outputs; one row per token for a token-level head,
  of which the last is read).
- ``POST /classify`` ``{"model", "input": [text, ...]}`` ->
  ``{"data": [{"index", "label", "probs": [float, ...], "num_classes"}]}``: class
  probabilities per text, in the model's class order.
- ``POST /score`` ``{"model", "text_1": query, "text_2": [text, ...]}`` ->
  ``{"data": [{"index", "object": "score", "score": float}]}``: one score per pair
  (a cross-encoder's, or the cosine of an embedding model).
- ``POST /rerank`` ``{"model", "query", "documents": [text, ...], "top_n"}`` ->
  ``{"results": [{"index", "document", "relevance_score"}]}``, sorted by relevance.

Text-embeddings-inference (replies are bare JSON arrays):

- ``POST /predict`` ``{"inputs": [[text], ...] | [[a, b], ...], "raw_scores", "truncate"}``
  -> ``[[{"label", "score"}, ...], ...]``: every label's score per input (sorted by score).
- ``POST /rerank`` ``{"query", "texts": [text, ...], "raw_scores", "truncate"}`` ->
  ``[{"index", "score"}, ...]``, sorted by score.
- ``POST /embed`` ``{"inputs": [text, ...], "normalize", "truncate"}`` -> ``[[float, ...], ...]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"not a finite number: {value!r}")
    return out


def _by_index(entries: Any, count: int, key: str) -> list[Any]:
    """Entries carrying an ``index`` put back in input order (a reranker sorts them)."""
    if not isinstance(entries, list):
        raise TypeError(f"expected a list of results, got {type(entries).__name__}")
    out: list[Any] = [None] * count
    for entry in entries:
        index = entry["index"]
        if not isinstance(index, int) or not 0 <= index < count or out[index] is not None:
            raise ValueError(f"result index {index!r} is out of range or repeated")
        out[index] = entry[key]
    if any(v is None for v in out):
        raise ValueError(f"{out.count(None)} of {count} results are missing")
    return out


# --- vLLM ------------------------------------------------------------------------------


def vllm_inputs(model: str | None, texts: Sequence[str]) -> dict[str, Any]:
    """Body of ``/pooling`` and ``/classify``."""
    return {"model": model, "input": list(texts)}


def vllm_pooling(reply: Any, count: int) -> list[list[float]]:
    """One vector per text; a token-level output gives its last token's row."""
    rows = _by_index(reply["data"], count, "data")
    out = []
    for row in rows:
        if isinstance(row, list) and row and isinstance(row[0], list):
            row = row[-1]
        out.append([_number(x) for x in row])
    return out


def vllm_classify(reply: Any, count: int) -> list[list[float]]:
    """Class probabilities per text, in the model's class order."""
    return [[_number(p) for p in probs] for probs in _by_index(reply["data"], count, "probs")]


def vllm_score_body(model: str | None, query: str, texts: Sequence[str]) -> dict[str, Any]:
    return {"model": model, "text_1": query, "text_2": list(texts)}


def vllm_score(reply: Any, count: int) -> list[float]:
    return [_number(v) for v in _by_index(reply["data"], count, "score")]


def vllm_rerank_body(model: str | None, query: str, texts: Sequence[str]) -> dict[str, Any]:
    return {"model": model, "query": query, "documents": list(texts), "top_n": len(texts)}


def vllm_rerank(reply: Any, count: int) -> list[float]:
    return [_number(v) for v in _by_index(reply["results"], count, "relevance_score")]


# --- text-embeddings-inference ---------------------------------------------------------


def tei_predict_body(
    inputs: Sequence[Sequence[str]], *, raw: bool, truncate: bool
) -> dict[str, Any]:
    """Body of ``/predict``: each input a one-text list, or a two-text pair."""
    return {"inputs": [list(i) for i in inputs], "raw_scores": raw, "truncate": truncate}


def tei_predict(reply: Any, count: int) -> list[dict[str, float]]:
    """Each input's score per label."""
    if not isinstance(reply, list):
        raise TypeError(f"expected a list of predictions, got {type(reply).__name__}")
    if count == 1 and reply and isinstance(reply[0], dict):
        reply = [reply]  # one input may come back unbatched
    return [{str(p["label"]): _number(p["score"]) for p in labels} for labels in reply]


def tei_rerank_body(
    query: str, texts: Sequence[str], *, raw: bool, truncate: bool
) -> dict[str, Any]:
    return {"query": query, "texts": list(texts), "raw_scores": raw, "truncate": truncate}


def tei_rerank(reply: Any, count: int) -> list[float]:
    return [_number(v) for v in _by_index(reply, count, "score")]


def tei_embed_body(texts: Sequence[str], *, truncate: bool) -> dict[str, Any]:
    return {"inputs": list(texts), "normalize": True, "truncate": truncate}


def tei_embed(reply: Any, count: int) -> list[list[float]]:
    if not isinstance(reply, list):
        raise TypeError(f"expected a list of vectors, got {type(reply).__name__}")
    return [[_number(x) for x in row] for row in reply]
