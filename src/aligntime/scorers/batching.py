"""Token-bounded batching for scorer forward passes.

A batch of padded sequences costs ``longest * count`` tokens of memory and
compute, so batches are bounded by that product (``batch_tokens``) rather than
by a count: many short answers go through in one pass, a few long ones in
several. Sequences are sorted by length first so that sequences of similar
length share a batch and little is spent on padding; results come back in the
caller's order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def token_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group indices of ``lengths`` so that ``max length * count <= batch_tokens`` per group.

    Longest sequences come first (a memory error shows up on the first batch, not
    the last). A sequence longer than the bound on its own still gets a batch of one.
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be at least 1, got {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        # Sorted descending, so the first member of a batch is its longest.
        width = longest if current else lengths[index]
        if current and width * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        if not current:
            longest = max(lengths[index], 1)
        current.append(index)
    if current:
        batches.append(current)
    return batches


def run_batched(
    items: Sequence[T],
    lengths: Sequence[int],
    batch_tokens: int,
    fn: Callable[[list[T]], Sequence[R]],
) -> list[R]:
    """Apply ``fn`` to token-bounded batches of ``items``; results in the order of ``items``."""
    if len(items) != len(lengths):
        raise ValueError(f"{len(items)} items but {len(lengths)} lengths")
    results: list[R | None] = [None] * len(items)
    for batch in token_batches(lengths, batch_tokens):
        outputs = fn([items[i] for i in batch])
        if len(outputs) != len(batch):
            raise ValueError(f"batch function returned {len(outputs)} results for {len(batch)}")
        for index, output in zip(batch, outputs, strict=True):
            results[index] = output
    return results  # type: ignore[return-value]  # every slot was filled above
