"""Local Hugging Face models on CPU or GPU through ``transformers``.

The N candidates of a request are sampled in one ``generate`` call with
``num_return_sequences=n``: the shared prompt is encoded once (one prefill) and
the N continuations decode together as one batch, which is what makes N = 8
cost little more than N = 1 on a GPU. ``generate`` blocks, so it runs in a worker
thread, under the loaded model's lock so that concurrent requests (or a judge
sharing the weights) take turns instead of interleaving on one model.

Search strategies (reward-guided decoding, early rejection) drive it a few
tokens at a time with :meth:`TransformersGenerator.extend`, which continues
several partial answers in one batched ``generate`` call, and read each
candidate's ``logprob`` (the sum of its tokens' log-probabilities under the
model). The public attributes ``model``, ``tokenizer``, ``device`` and
:meth:`TransformersGenerator.chat_input_ids` give token-level access beyond that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from aligntime import hf
from aligntime.errors import InputError, ModelError
from aligntime.generators.base import Capabilities, Generator, PartialAnswers
from aligntime.generators.hf_decoding import (
    LogprobRecorder,
    decode_candidate,
    eos_ids,
    logaddexp,
    stop_criteria,
)
from aligntime.generators.options import SamplingOptions
from aligntime.types import Generation, GenerationParams, Message, Usage

log = logging.getLogger(__name__)


class TransformersOptions(SamplingOptions):
    """Options of the ``transformers`` backend."""

    model: str
    """Local model folder (saved with ``save_pretrained``), a ``.gguf`` file, a catalogue
    name, or a hub id (needs the hub or the local Hugging Face cache)."""
    seed: int | None = None
    """Random seed of a request's one ``generate`` call: the same seed gives the same set
    of N candidates."""
    gguf_file: str | None = None
    """A GGUF file inside the ``model`` folder, dequantised by transformers on load."""
    device: str = Field("auto", pattern=hf.DEVICE_PATTERN)
    """Torch device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N."""
    dtype: hf.Dtype = "auto"
    """Weights dtype; auto is bfloat16 on CUDA and float32 on the CPU."""
    threads: int | None = Field(None, ge=1)
    """Torch CPU threads (process-wide); default: torch's own choice."""
    chat_template: str | None = None
    """A Jinja chat template that replaces the tokenizer's own (for models without one)."""
    ignore_eos: bool = False
    """Never stop at end-of-sequence: every candidate gets exactly max_tokens tokens
    (benchmarks)."""


class TransformersGenerator(Generator):
    """Generates candidates with a local Hugging Face causal LM (CPU or CUDA)."""

    Options = TransformersOptions
    name = "transformers"
    capabilities = Capabilities(n_sampling=True, logprobs=True, token_steps=True)

    def __init__(self, options: TransformersOptions) -> None:
        self.options = options
        self._model = hf.LazyModel("causal_lm", options.model, options, gguf_file=options.gguf_file)

    # --- loading ----------------------------------------------------------------------

    @property
    def loaded(self) -> hf.LoadedModel:
        """The shared model, tokenizer and device, loaded on first use."""
        return self._model.get()

    @property
    def model(self) -> Any:
        """The ``transformers`` causal LM (in eval mode, on :attr:`device`)."""
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer."""
        return self.loaded.tokenizer

    @property
    def device(self) -> str:
        """The concrete torch device the model is on, e.g. ``cpu`` or ``cuda``."""
        return self.loaded.device

    def load(self) -> None:
        _ = self.loaded

    def chat_input_ids(self, messages: Sequence[Message]) -> Any:
        """Token ids (a ``1 x L`` tensor on :attr:`device`) of the chat prompt for ``messages``,
        ending where the assistant's reply begins.

        A final assistant message is a partial reply: its tokens follow the prompt, so
        that generation continues it.
        """
        torch = hf.require_torch()
        ids = self._prompt_ids(messages)
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def _prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        tokenizer = self.tokenizer
        template = self.options.chat_template or getattr(tokenizer, "chat_template", None)
        if not template:
            raise ModelError(
                f"the tokenizer of {self.options.model!r} has no chat template",
                hint="use an instruction-tuned model, or set the generator's chat_template "
                "option to a Jinja template",
            )
        partial = ""
        if messages and messages[-1].role == "assistant":
            partial, messages = messages[-1].content, messages[:-1]
        text = tokenizer.apply_chat_template(
            [m.to_dict() for m in messages],
            chat_template=template,
            tokenize=False,
            add_generation_prompt=True,
        )
        # The template writes any BOS token itself; the tokenizer must not add another.
        ids: list[int] = tokenizer(str(text), add_special_tokens=False)["input_ids"]
        if partial:
            ids = ids + list(tokenizer(partial, add_special_tokens=False)["input_ids"])
        if not ids:
            raise InputError("the chat template produced an empty prompt")
        return ids

    # --- generation -------------------------------------------------------------------

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        if n < 1:
            raise InputError(f"n must be at least 1, got {n}")
        return await asyncio.to_thread(self.generate_sync, messages, n, params)

    def generate_sync(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        """Blocking :meth:`generate`: one ``generate`` call samples all ``n`` candidates."""
        return self._sample([self._prompt_ids(messages)], n, params.max_tokens, params)

    async def continue_answers(self, partial: PartialAnswers) -> Generation:
        p = partial
        return await asyncio.to_thread(
            self.extend_sync, p.messages, p.prefixes, p.max_tokens, p.params
        )

    def extend_sync(
        self,
        messages: Sequence[Message],
        prefixes: Sequence[str],
        max_tokens: int,
        params: GenerationParams,
    ) -> Generation:
        """Blocking :meth:`extend`: every prefix continues in one batched ``generate`` call.

        Each prefix is re-read (no KV cache is kept between steps): a step costs one
        prefill of the prompt plus the answer so far.
        """
        base = self._prompt_ids(messages)
        tokenizer = self.tokenizer
        rows = [base + list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prefixes]
        return self._sample(rows, 1, max_tokens, params)

    def _sample(
        self,
        prompts: list[list[int]],
        n: int,
        max_tokens: int | None,
        params: GenerationParams,
    ) -> Generation:
        """One ``generate`` call: ``n`` samples of each prompt (left-padded into one batch)."""
        torch = hf.require_torch()
        from transformers import GenerationConfig, LogitsProcessorList

        loaded = self.loaded
        o = self.options
        tokenizer = loaded.tokenizer
        width = max(len(p) for p in prompts)
        sampling = o.resolve(params)
        max_new = max_tokens or sampling.max_tokens
        limit = getattr(loaded.model.config, "max_position_embeddings", None)
        if limit is not None:
            if width >= limit:
                raise InputError(
                    f"the prompt is {width} tokens; the model reads at most {limit}",
                    hint="shorten the request or the policy's prompt",
                )
            max_new = min(max_new, limit - width)
        temperature, stop, seed = sampling.temperature, list(sampling.stop), sampling.seed
        greedy = temperature <= 0.0
        ends = eos_ids(loaded.model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=max_new,
            min_new_tokens=max_new if o.ignore_eos else None,
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None if greedy else sampling.top_p,
            # 0 switches off transformers' default top-k of 50: the policy's top_p alone
            # shapes sampling, as on the other backends.
            top_k=None if greedy else 0,
            # Greedy decoding gives one answer however often it is asked for.
            num_return_sequences=1 if greedy else n,
            pad_token_id=pad,
            eos_token_id=sorted(ends) or None,
        )
        # Left padding: every row's prompt ends at the same position, where decoding starts.
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        recorder = LogprobRecorder()
        with loaded.lock, torch.inference_mode():
            if seed is not None:
                # One generate call draws all samples from one stream: seeding the
                # call makes the whole set reproducible.
                torch.manual_seed(seed)
            out = loaded.model.generate(
                ids.to(loaded.device),
                attention_mask=mask.to(loaded.device),
                generation_config=config,
                stopping_criteria=stop_criteria(tokenizer, stop),
                logits_processor=LogitsProcessorList([recorder]),
            )
            logprobs = recorder.per_row(out)
        rows = out[:, width:].tolist()
        if greedy and n > 1:
            rows = [row for row in rows for _ in range(n)]
            logprobs = [lp for lp in logprobs for _ in range(n)]

        def decode(token_ids: Sequence[int]) -> str:
            return str(tokenizer.decode(list(token_ids), skip_special_tokens=True))

        candidates = [
            decode_candidate(
                row,
                eos_ids=ends,
                pad_id=tokenizer.pad_token_id,
                stop=stop,
                max_new_tokens=max_new,
                decode=decode,
                token_logprobs=row_logprobs,
            )
            for row, row_logprobs in zip(rows, logprobs, strict=True)
        ]
        usage = Usage(sum(len(p) for p in prompts), sum(c.tokens for c in candidates))
        return Generation(candidates, usage)

    # --- log-probabilities ------------------------------------------------------------

    async def next_token_logprobs(
        self, messages: Sequence[Message], top_k: int = 20
    ) -> dict[str, float]:
        return await asyncio.to_thread(self.next_token_logprobs_sync, messages, top_k)

    def next_token_logprobs_sync(
        self, messages: Sequence[Message], top_k: int = 20
    ) -> dict[str, float]:
        """Blocking :meth:`next_token_logprobs`: one forward pass over the prompt."""
        torch = hf.require_torch()
        loaded = self.loaded
        input_ids = self.chat_input_ids(messages)
        with loaded.lock, torch.inference_mode():
            logits = loaded.model(input_ids).logits[0, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        values, ids = torch.topk(logprobs, min(top_k, int(logprobs.shape[0])))
        top: dict[str, float] = {}
        for token_id, value in zip(ids.tolist(), values.tolist(), strict=True):
            # Special tokens print as "": the end of the turn, as the contract has it.
            token = str(loaded.tokenizer.decode([token_id], skip_special_tokens=True))
            # Distinct ids can print alike (" Yes" and "Yes" after cleanup): add them up.
            top[token] = float(value) if token not in top else logaddexp(top[token], value)
        return top
