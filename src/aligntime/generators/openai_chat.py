"""What the OpenAI chat-completions API looks like: request bodies and replies.

Every backend that speaks this API builds its requests and reads its replies
here, whoever carries them: the ``openai`` backend over HTTP, the ``llamacpp``
backend in process (llama.cpp's own server loop takes the same JSON). How a
request is sent (retries, fan-out, slots) is each backend's own business.

Replies: each candidate's ``tokens`` is exact when its choice carries per-token
log-probabilities, or when it came alone in its reply (the reply's
``usage.completion_tokens``). Otherwise it is an *estimate*: the reply's
completion tokens shared out by text length, or about four characters per
token when the server sends no usage at all (logged at debug level). Usage is
the server's own, summed over replies; where every candidate's count is exact
their sum is used instead, because some servers (llama.cpp) count only the
first choice of an ``n`` request.

Continuing a partial answer: the conversation ends with the partial answer as
an assistant message. vLLM, SGLang and TGI continue it when asked with
``continue_final_message: true`` and ``add_generation_prompt: false``;
llama.cpp's server continues a final assistant message by itself (its
"assistant prefill") and ignores both fields. Some servers echo the partial
answer at the start of the reply; only the new text is kept.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from aligntime.errors import BackendError, ContextLengthError
from aligntime.generators.options import Sampling, seed_at
from aligntime.types import Candidate, Generation, GenerationParams, Message, ToolCall, Usage

log = logging.getLogger(__name__)

# How servers say a prompt is too long: OpenAI and vLLM ("maximum context length is
# 2048 tokens. However, you requested 2300 tokens"), llama.cpp ("request (631 tokens)
# exceeds the available context size (512 tokens)"), OpenAI's code and llama.cpp's type.
_OVERFLOW = re.compile(
    r"context_length_exceeded|exceed_context_size|maximum context length|context size|"
    r"context window",
    re.IGNORECASE,
)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_LIMIT = re.compile(
    r"(?:maximum context length is|context size \(|context window of)\s*(\d+)", re.IGNORECASE
)
_NEEDED = re.compile(r"(?:you requested|resulted in|request has|request \()\s*(\d+)", re.IGNORECASE)


CONTINUE_FINAL_MESSAGE: dict[str, Any] = {
    "continue_final_message": True,
    "add_generation_prompt": False,
}
"""Fields that ask vLLM, SGLang and TGI to continue the final assistant message."""


def chat_body(
    messages: Sequence[Message],
    sampling: Sampling,
    *,
    logprobs: bool,
    fixed: Mapping[str, Any] | None = None,
    params: GenerationParams | None = None,
) -> dict[str, Any]:
    """The body of a sampling request; ``fixed`` fields (the model name) come first and lose to
    none of the sampling fields. The shape ``params`` ask for (``response_format``,
    ``tools`` and ``tool_choice``) goes in as OpenAI spells it."""
    body: dict[str, Any] = {
        **(fixed or {}),
        "messages": [m.to_chat() for m in messages],
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    if logprobs:
        body["logprobs"] = True
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if params is not None and params.response_format is not None:
        body["response_format"] = params.response_format.to_openai()
    if params is not None and params.tools is not None:
        body.update(params.tools.to_openai())
    return body


def part_body(body: dict[str, Any], n: int, first: int) -> dict[str, Any]:
    """``body`` asking for ``n`` of its request's candidates, those from position ``first``
    on, seeded as :func:`~aligntime.generators.options.seed_at` says."""
    part = {**body, "n": n}
    if body.get("seed") is not None:
        part["seed"] = seed_at(int(body["seed"]), first)
    return part


def continuation_body(body: dict[str, Any], prefix: str, index: int) -> dict[str, Any]:
    """``body`` asking for one continuation of ``prefix``, the request's partial answer
    number ``index``.

    It is asked without the request's shape (``response_format``, ``tools``): a grammar
    would start again at the prefix's end; the finished answer is checked by the gates.
    """
    messages = [*body["messages"], {"role": "assistant", "content": prefix}]
    plain = {k: v for k, v in body.items() if k not in _SHAPE}
    return part_body({**plain, "messages": messages}, 1, index)


_SHAPE = ("response_format", "tools", "tool_choice")
"""The fields of a body that ask for a shape of the whole answer."""


def logprobs_body(
    messages: Sequence[Message], top_k: int, fixed: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A greedy one-token request for the top ``top_k`` first tokens of the reply."""
    return {
        **(fixed or {}),
        "messages": [m.to_dict() for m in messages],
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": True,
        "top_logprobs": top_k,
    }


def top_logprobs(reply: dict[str, Any], where: str) -> dict[str, float]:
    """The first token's top log-probabilities in a reply to :func:`logprobs_body`."""
    choices = choices_of(reply)
    if not choices:
        raise BackendError(f"{where} returned no choices for a logprobs request")
    content = (choices[0].get("logprobs") or {}).get("content") or []
    if not content or not isinstance(content[0], dict):
        raise BackendError(
            f"{where} returned no log-probabilities",
            hint="the server or model does not support logprobs/top_logprobs; "
            "judge with a backend that does",
        )
    try:
        return {str(e["token"]): float(e["logprob"]) for e in content[0]["top_logprobs"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise BackendError(f"{where} returned malformed top_logprobs: {exc!r}") from exc


def continuations(replies: Sequence[dict[str, Any]], prefixes: Sequence[str]) -> Generation:
    """One candidate per prefix from the replies to :func:`continuation_body`, new text only."""
    candidates: list[Candidate] = []
    prompt_tokens = 0
    for reply, prefix in zip(replies, prefixes, strict=True):
        found, usage = collect([reply])
        if len(found) != 1:
            raise BackendError(
                f"the server returned {len(found)} choices for one continuation, not 1"
            )
        candidate = found[0]
        if prefix and candidate.text.startswith(prefix):
            # The server echoed the partial answer; the contract returns new text only.
            candidate = replace(candidate, text=candidate.text[len(prefix) :])
        candidates.append(candidate)
        prompt_tokens += usage.prompt_tokens
    return Generation(candidates, Usage(prompt_tokens, sum(c.tokens for c in candidates)))


def choices_of(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """The reply's choices, checked for the fields aligntime reads."""
    choices = reply.get("choices")
    if not isinstance(choices, list):
        raise BackendError(
            f"the server's reply has no 'choices' list: {str(reply)[:200]}",
            hint="is base_url an OpenAI-compatible API root (usually ending in /v1)?",
        )
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise BackendError(f"the server's reply has a choice without a message: {choice!r}")
    return choices


def context_length_error(
    message: str,
    *,
    prompt_tokens: int | None = None,
    context_tokens: int | None = None,
    known: bool = False,
) -> ContextLengthError | None:
    """A :class:`ContextLengthError` when a backend's refusal says the prompt is too long.

    ``known``: the backend said so in a structured field, whatever the message.
    The token counts come from the arguments or, failing that, from the
    message's text; either may stay unknown.
    """
    if not known and not _OVERFLOW.search(message):
        return None
    if context_tokens is None and (found := _LIMIT.search(message)):
        context_tokens = int(found.group(1))
    if prompt_tokens is None and (found := _NEEDED.search(message)):
        prompt_tokens = int(found.group(1))
    needed = f"{prompt_tokens} tokens" if prompt_tokens is not None else "more tokens"
    limit = f" of {context_tokens} tokens" if context_tokens is not None else ""
    return ContextLengthError(
        f"the conversation needs {needed}, more than the model's context{limit}; "
        "shorten the messages or lower max_tokens",
        prompt_tokens=prompt_tokens,
        context_tokens=context_tokens,
        hint="the context size is set where the model runs (llamacpp: generator.context)",
    )


def collect(replies: list[dict[str, Any]]) -> tuple[list[Candidate], Usage]:
    """Candidates and summed usage from one native reply or several fan-out replies."""
    candidates: list[Candidate] = []
    prompt_tokens = server_completion = 0
    all_exact = True
    textless: list[str] = []
    for reply in replies:
        choices = sorted(choices_of(reply), key=lambda c: int(c.get("index", 0) or 0))
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else None
        completion = _int(usage, "completion_tokens") if usage else None
        prompt_tokens += (_int(usage, "prompt_tokens") if usage else None) or 0
        server_completion += completion or 0
        answered = [c for c in choices if _text(c) is not None or _calls(c)]
        textless += [str(c.get("finish_reason")) for c in choices if c not in answered]
        choices = answered
        texts = [_text(c) or "" for c in choices]
        counts: list[int] = []
        for choice, text in zip(choices, texts, strict=True):
            exact = (choice.get("logprobs") or {}).get("content")
            if isinstance(exact, list):
                counts.append(len(exact))
            elif len(choices) == 1 and completion is not None:
                counts.append(completion)
            else:
                all_exact = False
                counts.append(_estimate(text, texts, completion))
        for choice, text, tokens in zip(choices, texts, counts, strict=True):
            finish = choice.get("finish_reason")
            calls = _calls(choice)
            candidates.append(
                Candidate(
                    text=text,
                    tokens=tokens,
                    finish_reason=str(finish or ("tool_calls" if calls else "unknown")),
                    logprob=_sequence_logprob(choice),
                    tool_calls=calls,
                )
            )
    if textless:
        log.warning("%d choice(s) without text content were dropped", len(textless))
        if not candidates:
            raise BackendError(
                f"the server's reply has no text: every choice's content was null "
                f"(finish_reason: {', '.join(sorted(set(textless)))})",
                hint="a reasoning model may have spent max_tokens before answering (raise "
                "max_tokens), or the model answered with tool calls instead of text",
            )
    completion_tokens = (
        sum(c.tokens for c in candidates)
        if all_exact or not server_completion
        else server_completion
    )
    return candidates, Usage(prompt_tokens, completion_tokens)


def _text(choice: dict[str, Any]) -> str | None:
    """A choice's answer: its content, or its refusal when content is null; ``None``
    when it holds no text at all (tool calls, a reasoning model cut off).

    A null content is no answer, and an empty candidate standing for it could be
    chosen, so such a choice yields no candidate.
    """
    message = choice["message"]
    for key in ("content", "refusal"):
        value = message.get(key)
        if isinstance(value, str):
            # JSON can carry a lone surrogate that no encoder takes further: replace it.
            return _LONE_SURROGATE.sub("\ufffd", value)
    return None


def _calls(choice: dict[str, Any]) -> tuple[ToolCall, ...]:
    """The tool calls of a choice's message (none when it has none, or only malformed ones:
    a call without a function name is no call, and is logged)."""
    found = []
    for entry in choice["message"].get("tool_calls") or ():
        function = entry.get("function") if isinstance(entry, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            log.warning("a tool call without a function name was dropped: %r", entry)
            continue
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if not isinstance(arguments, str):
            # Some servers send the arguments as an object; the contract is its JSON text.
            arguments = json.dumps(arguments if arguments is not None else {})
        found.append(ToolCall(name, arguments, str(entry.get("id") or "")))
    return tuple(found)


def _sequence_logprob(choice: dict[str, Any]) -> float | None:
    """Sum of the sampled tokens' log-probabilities, when the choice carries them."""
    content = (choice.get("logprobs") or {}).get("content")
    if not isinstance(content, list) or not content:
        return None
    try:
        return sum(float(e["logprob"]) for e in content)
    except (KeyError, TypeError, ValueError):
        return None


def _estimate(text: str, texts: list[str], completion: int | None) -> int:
    """An estimated token count: the reply's completion tokens shared out by text length."""
    if completion:
        total = sum(len(t) for t in texts) or 1
        tokens = round(completion * len(text) / total)
    else:
        tokens = math.ceil(len(text) / 4)
    log.debug("estimated %d tokens for a %d-character candidate", tokens, len(text))
    return tokens


def _int(usage: dict[str, Any], key: str) -> int | None:
    value = usage.get(key)
    return int(value) if isinstance(value, int | float) else None
