"""Pieces of the ``transformers`` backend around ``generate``: ends, stops, log-probabilities.

Kept apart from the generator so that each can be read, and tested, on its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from aligntime.types import Candidate

log = logging.getLogger(__name__)


def decode_candidate(
    new_ids: Sequence[int],
    *,
    eos_ids: set[int],
    pad_id: int | None,
    stop: Sequence[str],
    max_new_tokens: int,
    decode: Callable[[Sequence[int]], str],
    token_logprobs: Sequence[float] | None = None,
) -> Candidate:
    """Turn one row of generated token ids into a candidate.

    The answer ends at the first end-of-sequence token or at the first stop
    string, whichever comes first; what follows (padding of a row that finished
    before the others) is not counted. ``finish_reason`` is "length" only when
    the answer ran to ``max_new_tokens`` without ending. With ``token_logprobs``
    (one per generated position), ``logprob`` is the sum over the counted tokens.
    """
    ids = list(new_ids)
    end = next((i for i, t in enumerate(ids) if t in eos_ids), None)
    if end is not None:
        ids = ids[:end]
    elif pad_id is not None:
        # A row stopped by a stop string is padded to the batch's length.
        while ids and ids[-1] == pad_id:
            ids.pop()
    text = decode(ids)
    cut = _first_stop(text, stop)
    tokens = len(ids)
    if cut is not None:
        # The fewest tokens whose text contains a stop string: what the model spent.
        low, high = 1, len(ids)
        while low < high:
            mid = (low + high) // 2
            if _first_stop(decode(ids[:mid]), stop) is None:
                low = mid + 1
            else:
                high = mid
        text, tokens, finish = text[:cut], low, "stop"
    elif end is None and len(ids) >= max_new_tokens:
        finish = "length"
    else:
        finish = "stop"
    logprob = None
    if token_logprobs is not None and tokens:
        logprob = float(sum(token_logprobs[:tokens]))
    return Candidate(text=text, tokens=tokens, finish_reason=finish, logprob=logprob)


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(found) if found else None


def stop_criteria(tokenizer: Any, stop: Sequence[str]) -> Any:
    """transformers' stop-string criterion, so a row stops decoding at its stop string.

    Stop strings are also cut out after decoding (:func:`decode_candidate`), so a
    tokenizer the criterion cannot handle only costs the tokens past the stop.
    """
    from transformers import StoppingCriteriaList
    from transformers.generation.stopping_criteria import StopStringCriteria

    if not stop:
        return None
    try:
        return StoppingCriteriaList([StopStringCriteria(tokenizer, list(stop))])
    except Exception as exc:  # the criterion reads the whole vocabulary; some can't be read
        log.warning("stop strings are applied after generation only: %s", exc)
        return None


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token id that ends an answer: the model's generation config's and the tokenizer's."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


class LogprobRecorder:
    """A logits processor that records the log-probability of each sampled token.

    transformers runs custom processors before temperature and top-p, so it sees
    the model's own distribution (after only the processors that forbid or penalise
    tokens: ``min_new_tokens``, the model's repetition penalty). The token
    chosen at one step shows up in ``input_ids`` at the next; the last step's is
    read from the finished sequences in :meth:`per_row`.
    """

    def __init__(self) -> None:
        self.steps: list[Any] = []
        self._previous: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self._previous is not None:
            self.steps.append(self._gather(input_ids[:, -1]))
        self._previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _gather(self, chosen: Any) -> Any:
        return self._previous.gather(1, chosen.unsqueeze(1)).squeeze(1)

    def per_row(self, sequences: Any) -> list[list[float]]:
        """Log-probability of every generated token, one list per row of ``sequences``."""
        import torch

        steps = list(self.steps)
        if self._previous is not None:
            steps.append(self._gather(sequences[:, -1]))
        if not steps:
            return [[] for _ in range(int(sequences.shape[0]))]
        table: list[list[float]] = torch.stack(steps, dim=1).cpu().tolist()
        return table


def logaddexp(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without overflow."""
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))
