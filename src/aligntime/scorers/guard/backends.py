"""Where a guard model runs: a local Hugging Face folder, or an OpenAI-compatible server.

Both take the format's rendered prompt texts and return each one's greedy
continuation with the top-k log-probabilities at every position
(:class:`~aligntime.scorers.guard.verdict.Continuation`), and both check, before
the first verdict, that the model is one the format fits.

- ``transformers`` loads through :mod:`aligntime.hf` (local folder, GGUF file,
  device and dtype rules, shared weights) and runs every prompt of a request in
  token-bounded batches of one ``generate`` call each.
- ``openai`` posts to ``/completions`` of a server such as vLLM with the rendered
  prompt as raw text (the format, not the server's chat template, writes it, so a
  custom taxonomy works), through the ``openai`` generator's HTTP client and retry
  rules. Its format check asks vLLM's ``/tokenize`` whether the served tokenizer
  knows the format's special tokens; a server without that endpoint is not checked.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from aligntime import hf
from aligntime.errors import BackendError, ConfigError, InputError
from aligntime.generators.hf_decoding import eos_ids, logaddexp
from aligntime.generators.http_retry import HTTPFailure, RetriesExhausted, post_json
from aligntime.generators.openai import OpenAIGenerator, OpenAIOptions
from aligntime.scorers.batching import run_batched
from aligntime.scorers.guard.formats import FORMATS, GuardFormat
from aligntime.scorers.guard.verdict import Continuation, Step, fixed_step

log = logging.getLogger(__name__)


def mismatch(fmt: GuardFormat, model: str, why: str, *, fits: Sequence[str] = ()) -> ConfigError:
    """The error for a model that the chosen format does not fit; ``fits`` are formats that
    do fit it, when known."""
    if fits:
        hint = f"the model looks like {' or '.join(repr(f) for f in fits)}: set format to that"
    else:
        hint = (
            "set format to the model's family (" + ", ".join(FORMATS) + "), or set "
            "check_template: false if you are sure the model takes this format"
        )
    return ConfigError(
        f"guard format {fmt.name!r} does not match model {model!r}: {why}", hint=hint
    )


class GuardBackend(ABC):
    """Runs a guard model on rendered prompts."""

    @abstractmethod
    async def check(self, fmt: GuardFormat) -> None:
        """Raise a :class:`ConfigError` if the model is not one ``fmt`` fits."""

    @abstractmethod
    async def complete(
        self, prompts: Sequence[str], max_tokens: int, top_k: int
    ) -> list[Continuation]:
        """The greedy continuation of each prompt, in order."""

    def load(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Load weights ahead of the first request."""

    def close(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Release resources."""


# --- transformers -----------------------------------------------------------------------


class TransformersGuardOptions(BaseModel):
    """``backend_options`` of a guard on the ``transformers`` backend."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field("auto", pattern=hf.DEVICE_PATTERN)
    """Torch device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N."""
    dtype: hf.Dtype = "auto"
    """Weights dtype; auto is bfloat16 on CUDA and float32 on the CPU."""
    gguf_file: str | None = None
    """A GGUF file inside the model folder, dequantised by transformers on load."""
    threads: int | None = Field(None, ge=1)
    """Torch CPU threads (process-wide); default: torch's own choice."""
    batch_tokens: int = Field(16384, ge=64)
    """Bound on padded tokens (longest prompt plus new tokens, times count) per batch."""


class TransformersGuard(GuardBackend):
    """A guard model in a local Hugging Face folder (or GGUF file)."""

    def __init__(self, model: str, options: TransformersGuardOptions) -> None:
        self.model = model
        self.options = options
        self._model = hf.LazyModel("causal_lm", model, options, gguf_file=options.gguf_file)

    @property
    def loaded(self) -> hf.LoadedModel:
        return self._model.get()

    def load(self) -> None:
        _ = self.loaded

    async def check(self, fmt: GuardFormat) -> None:
        await asyncio.to_thread(self.check_sync, fmt)

    def check_sync(self, fmt: GuardFormat) -> None:
        """The tokenizer must know the format's special tokens and carry its template."""
        why = self._misfit(fmt)
        if why is not None:
            fits = [
                name
                for name, other in FORMATS.items()
                if name != fmt.name and other.template_markers and self._misfit(other()) is None
            ]
            raise mismatch(fmt, self.model, why, fits=fits)

    def _misfit(self, fmt: GuardFormat) -> str | None:
        """Why the model's tokenizer does not fit ``fmt``; None when it does."""
        tokenizer = self.loaded.tokenizer
        split = [
            t
            for t in fmt.special_tokens
            if len(tokenizer(t, add_special_tokens=False)["input_ids"]) != 1
        ]
        if split:
            return (
                "its tokenizer does not have the format's special token"
                + ("s " if len(split) > 1 else " ")
                + ", ".join(repr(t) for t in split)
            )
        if not fmt.template_markers:
            return None
        template = tokenizer.chat_template
        if isinstance(template, dict):  # several named templates
            template = "\n".join(str(t) for t in template.values())
        if not template:
            return (
                f"its tokenizer has no chat template (a {fmt.title} model's contains "
                f"{fmt.template_markers[0]!r})"
            )
        missing = [m for m in fmt.template_markers if m not in template]
        if missing:
            return f"its chat template lacks {missing[0]!r}, which a {fmt.title} template has"
        return None

    async def complete(
        self, prompts: Sequence[str], max_tokens: int, top_k: int
    ) -> list[Continuation]:
        return await asyncio.to_thread(self.complete_sync, prompts, max_tokens, top_k)

    def complete_sync(
        self, prompts: Sequence[str], max_tokens: int, top_k: int
    ) -> list[Continuation]:
        """Blocking :meth:`complete`."""
        tokenizer = self.loaded.tokenizer
        # The format writes BOS and every special token itself.
        encoded: list[list[int]] = [
            list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts
        ]
        limit = getattr(self.loaded.model.config, "max_position_embeddings", None)
        for ids in encoded:
            if limit is not None and len(ids) + max_tokens > limit:
                raise InputError(
                    f"the guard prompt is {len(ids)} tokens; model {self.model!r} reads at "
                    f"most {limit} (with {max_tokens} new tokens)",
                    hint="the conversation is too long for this guard model",
                )
        return run_batched(
            encoded,
            [len(ids) + max_tokens for ids in encoded],
            self.options.batch_tokens,
            lambda batch: self._generate(batch, max_tokens, top_k),
        )

    def _generate(self, batch: list[list[int]], max_tokens: int, top_k: int) -> list[Continuation]:
        torch = hf.require_torch()
        from transformers import GenerationConfig

        loaded = self.loaded
        tokenizer = loaded.tokenizer
        ends = eos_ids(loaded.model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        width = max(len(ids) for ids in batch)
        # Left padding: every prompt ends where generation starts.
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=sorted(ends) or None,
            return_dict_in_generate=True,
            output_logits=True,
        )
        with loaded.lock, torch.inference_mode():
            out = loaded.model.generate(
                ids.to(loaded.device),
                attention_mask=mask.to(loaded.device),
                generation_config=config,
            )
        chosen = out.sequences[:, width:].tolist()
        # The model's own distribution at each step (raw logits, before any processor),
        # reduced to its top k per step at once: a full row is the whole vocabulary.
        values_list: list[list[list[float]]] = [[] for _ in batch]
        indices_list: list[list[list[int]]] = [[] for _ in batch]
        for step_logits in out.logits:
            logprobs = torch.log_softmax(step_logits.float(), dim=-1)
            values, indices = torch.topk(logprobs, min(top_k, int(logprobs.shape[-1])), dim=-1)
            for row, (v, i) in enumerate(
                zip(values.cpu().tolist(), indices.cpu().tolist(), strict=True)
            ):
                values_list[row].append(v)
                indices_list[row].append(i)
        continuations = []
        for row, tokens in enumerate(chosen):
            steps: list[Step] = []
            finished = False
            for position, token_id in enumerate(tokens):
                if token_id in ends:
                    finished = True
                    break
                steps.append(
                    Step(
                        self._text(token_id),
                        _TopK(self, indices_list[row][position], values_list[row][position]),
                    )
                )
            continuations.append(Continuation(steps, finished))
        return continuations

    def _text(self, token_id: int) -> str:
        # Special tokens print as "": the format's markers and verdicts are plain text.
        return str(self.loaded.tokenizer.decode([token_id], skip_special_tokens=True))


class _TopK:
    """Decodes one position's top-k ids only when the verdict is read there."""

    def __init__(self, backend: TransformersGuard, ids: list[int], logprobs: list[float]) -> None:
        self.backend, self.ids, self.logprobs = backend, ids, logprobs

    def __call__(self) -> dict[str, float]:
        top: dict[str, float] = {}
        for token_id, value in zip(self.ids, self.logprobs, strict=True):
            text = self.backend._text(token_id)
            # Distinct ids can print alike ("Yes" with and without a space marker).
            top[text] = value if text not in top else logaddexp(top[text], value)
        return top


# --- openai -----------------------------------------------------------------------------


class _Completions(OpenAIGenerator):
    """The ``openai`` backend's client, retries and error messages, aimed at /completions."""

    def __init__(self, options: OpenAIOptions) -> None:
        super().__init__(options)
        self._url = f"{options.base_url}/completions"

    async def complete(self, prompt: str, max_tokens: int, top_k: int) -> Continuation:
        body = {
            **self.options.extra_body,
            "model": self.options.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "logprobs": top_k,
            # The prompt carries its BOS token already (vLLM would add another).
            "add_special_tokens": False,
        }
        reply = await self._post(body)
        return _continuation(reply, self.options.base_url)

    async def token_count(self, text: str) -> int | None:
        """Tokens in ``text`` by the served tokenizer (vLLM's /tokenize); None if unsupported."""
        root = self.options.base_url.removesuffix("/v1")
        body = {"model": self.options.model, "prompt": text, "add_special_tokens": False}
        try:
            reply = await post_json(
                await self._client(), f"{root}/tokenize", body, self._headers, self._retry
            )
        except HTTPFailure as exc:
            if exc.status in (404, 405):
                return None
            raise BackendError(f"{root}/tokenize rejected the request: {exc.message}") from exc
        except RetriesExhausted as exc:
            raise BackendError(
                f"{root}/tokenize failed after {exc.attempts} attempts: {exc.last.message}"
            ) from exc
        count = reply.get("count")
        return int(count) if isinstance(count, int) else None


def _continuation(reply: dict[str, Any], where: str) -> Continuation:
    """The continuation in a /completions reply whose choice carries log-probabilities."""
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BackendError(
            f"{where} sent a completion without choices: {str(reply)[:200]}",
            hint="is base_url an OpenAI-compatible API root (usually ending in /v1)?",
        )
    choice = choices[0]
    logprobs = choice.get("logprobs") or {}
    tokens, tops = logprobs.get("tokens"), logprobs.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(tops, list) or len(tokens) != len(tops):
        raise BackendError(
            f"{where} returned no per-token log-probabilities for the guard's completion",
            hint="serve the guard model with a server that returns logprobs on /v1/completions "
            "(vLLM does; its --max-logprobs must be at least top_k)",
        )
    try:
        steps = [
            fixed_step(str(t), {str(k): float(v) for k, v in (top or {}).items()})
            for t, top in zip(tokens, tops, strict=True)
        ]
    except (AttributeError, TypeError, ValueError) as exc:
        raise BackendError(f"{where} returned malformed top_logprobs: {exc!r}") from exc
    return Continuation(steps, finished=choice.get("finish_reason") == "stop")


class OpenAIGuard(GuardBackend):
    """A guard model served by vLLM (or another server with /completions and logprobs)."""

    def __init__(self, options: OpenAIOptions) -> None:
        self.options = options
        self.client = _Completions(options)

    async def check(self, fmt: GuardFormat) -> None:
        tokens = "".join(fmt.special_tokens)
        count = await self.client.token_count(tokens)
        if count is None:
            log.info(
                "%s has no /tokenize endpoint; the guard format %r is not checked against it",
                self.options.base_url,
                fmt.name,
            )
            return
        if count != len(fmt.special_tokens):
            raise mismatch(
                fmt,
                self.options.model,
                f"the served tokenizer splits its special tokens {tokens!r} into {count} "
                f"tokens, not {len(fmt.special_tokens)}",
            )

    async def complete(
        self, prompts: Sequence[str], max_tokens: int, top_k: int
    ) -> list[Continuation]:
        gate = asyncio.Semaphore(self.options.concurrency)

        async def one(prompt: str) -> Continuation:
            async with gate:
                return await self.client.complete(prompt, max_tokens, top_k)

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    def close(self) -> None:
        self.client.close()
