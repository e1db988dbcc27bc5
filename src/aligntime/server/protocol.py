"""Request and response models of the OpenAI-compatible server.

Field names and shapes follow the OpenAI Chat Completions API, so any OpenAI
client works unchanged. Everything under ``aligntime`` (in the request and in
the response) is an extension that is **not in the OpenAI spec**; clients that
do not know it ignore it. OpenAI fields that aligntime does not act on are
accepted and ignored (listed in the README), except those whose silent
omission would mislead a caller (log-probabilities), which are refused with a
400. ``response_format`` and ``tools`` are honoured: passed to the backend and
checked on every candidate (a backend that cannot take them gets a 400).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from aligntime.request import AlignRequest
from aligntime.types import GenerationParams, Message, ToolCall

MAX_STOP = 4
"""Most stop strings a request may give (OpenAI's limit)."""

StopString = Annotated[str, Field(min_length=1)]
"""A stop string; an empty one would end every answer before it began."""

FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]
"""Why the answer ended; ``content_filter`` when a text stood in for every candidate,
``tool_calls`` when the answer calls tools."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(BaseModel):
    """One part of a multi-part message; only text parts are understood."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    """Part type; aligntime reads text only."""
    text: str
    """The text of this part."""


class FunctionCall(BaseModel):
    """The function a tool call calls, and its arguments (a JSON object's text)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: str


class ToolCallOut(BaseModel):
    """One tool call of an assistant message (sent in an answer, or read in a request)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    def to_call(self) -> ToolCall:
        """The call in the library's terms."""
        return ToolCall(self.function.name, self.function.arguments, self.id)


class ChatMessage(BaseModel):
    """One message of the conversation, as OpenAI clients send it."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    """Who wrote it; ``developer`` is treated as ``system``; ``tool`` carries a tool's
    result (``tool_call_id`` names the call it answers)."""
    content: str | list[TextPart] | None = None
    """The text, or a list of text parts that are joined."""
    name: str | None = None
    """Accepted for compatibility; not used."""
    tool_calls: list[ToolCallOut] | None = None
    """An assistant message's tool calls."""
    tool_call_id: str | None = None
    """A ``tool`` message's call id."""

    def text(self) -> str:
        """The message's text, multi-part content joined with newlines."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    """OpenAI ``stream_options``."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False
    """Send a last chunk with ``usage`` (every candidate's tokens) before ``[DONE]``."""


class AligntimeOptions(_Strict):
    """Per-request alignment settings. Not in the OpenAI spec (an aligntime extension)."""

    n: int | None = Field(None, ge=1)
    """Candidates to sample; takes precedence over ``best_of``."""
    strategy: str | None = None
    """Strategy kind for this request only (e.g. ``best_of_n``, ``rejection``), with its
    default options; the policy's strategy when absent."""
    template: str | None = None
    """Name of one of the policy's prompt templates."""
    return_candidates: bool = False
    """Return every candidate with its scores under ``aligntime.candidates``. Only for a key
    with the ``candidates`` right (403 otherwise); the text of a candidate that failed a
    gate is withheld (``text: null``, ``redacted: true``) unless the key has ``audit``."""
    stream_mode: Literal["whole", "early"] = "whole"
    """With ``stream: true``: ``whole`` sends the answer once it is selected and audited;
    ``early`` streams while selecting (prunes the partial answers to one survivor, then
    releases its text only after each window of it passed every gate; a later window that
    fails ends the answer with the fallback notice and ``content_filter``). Ignored
    without ``stream``."""


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``.

    ``model`` names a served policy. ``n`` is the number of choices returned, as in
    OpenAI's API: the aligned answer first, then the next-best distinct candidates
    that passed every gate. The number of candidates sampled and scored is
    ``best_of`` (vLLM's name), or ``aligntime.n``, else the policy's ``n``.
    """

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    """Name of a served policy (see ``GET /v1/models``)."""
    messages: list[ChatMessage] = Field(min_length=1)
    """The conversation; the last user message is the request."""
    n: int | None = Field(None, ge=1)
    """Choices to return (1 when absent): the aligned answer, then the next-best distinct
    candidates that passed every gate (fewer when fewer did); at most ``best_of``."""
    best_of: int | None = Field(None, ge=1)
    """Candidates to sample and score (the policy's ``n`` when absent); ``aligntime.n``
    wins over it."""
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    """Sampling temperature of the candidates."""
    max_tokens: int | None = Field(None, ge=1)
    """Most tokens per candidate."""
    max_completion_tokens: int | None = Field(None, ge=1)
    """Newer OpenAI name of ``max_tokens``; the smaller wins when both are given."""
    seed: int | None = None
    """Base random seed, for reproducible candidates."""
    stream: bool = False
    """Stream the answer as server-sent events (OpenAI chunk format)."""
    stream_options: StreamOptions | None = None
    """OpenAI stream options; ``include_usage`` is honoured."""
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    """Nucleus sampling for this request (default: the policy's)."""
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    """One stop string or a list of up to four, none empty (default: the policy's)."""
    user: str | None = None
    """Accepted; recorded in the audit log when it is on."""
    logprobs: bool | None = None
    """Not supported: ``true`` is refused."""
    response_format: dict[str, Any] | None = None
    """``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {"name",
    "schema", "strict"}}``: passed to the backend (a grammar on llama.cpp), and every
    candidate is checked; one that is not valid JSON or breaks the schema fails the gate
    ``response_format``. ``{"type": "text"}`` is the default."""
    tools: list[dict[str, Any]] | None = None
    """Functions the answer may call (OpenAI's shape), passed to the backend; a candidate
    that calls tools is checked on its calls (the gate ``tools``: offered names, arguments
    valid against the function's ``parameters``) and returned as ``tool_calls``."""
    tool_choice: str | dict[str, Any] | None = None
    """``none``, ``auto`` (the default with tools), ``required``, or ``{"type":
    "function", "function": {"name": ...}}``; the tool gate holds answers to it."""
    parallel_tool_calls: bool | None = None
    """Accepted and ignored: candidates may make several calls whatever it says."""
    continue_final_message: bool = False
    """vLLM's and SGLang's request to continue the final assistant message. Not supported
    yet: ``true`` is refused (naming this field), so that a client learns it cannot
    continue answers here instead of getting a new answer in their place."""
    aligntime: AligntimeOptions | None = None
    """Not in the OpenAI spec: aligntime's per-request settings."""

    def to_align_request(self) -> AlignRequest:
        """The request in the aligner's terms (as vLLM's ``to_sampling_params()``).

        ``developer`` messages become ``system``; ``aligntime.n`` wins over ``best_of``; the
        smaller of ``max_tokens`` and ``max_completion_tokens`` applies. The aligner
        checks the result against the policy (:meth:`AlignRequest.checked`).
        """
        ext = self.aligntime
        messages = [
            Message(
                "system" if m.role == "developer" else m.role,
                m.text(),
                tuple(c.to_call() for c in m.tool_calls or ()),
                m.tool_call_id,
            )
            for m in self.messages
        ]
        given = [t for t in (self.max_tokens, self.max_completion_tokens) if t is not None]
        stop = (
            () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else self.stop
        )
        params = GenerationParams(
            min(given) if given else None, self.temperature, self.top_p, self.seed, tuple(stop)
        )
        n = ext.n if ext and ext.n is not None else self.best_of
        return AlignRequest(
            messages,
            n,
            ext.template if ext else None,
            params,
            response_format=self.response_format,
            tools=self.tools,
            tool_choice=self.tool_choice,
        )


# --- responses ------------------------------------------------------------------------
# The server builds these models and sends what they dump: the OpenAPI schema is what
# goes over the wire.


class _Wire(BaseModel):
    """A response model; the fields in ``_absent_when_none`` are left out, not sent as null.

    OpenAI's formats leave some keys out rather than sending ``null`` (a stream
    chunk's ``delta`` holds only what it adds), and an extension key that was not
    asked for is not sent at all.
    """

    _absent_when_none: ClassVar[frozenset[str]] = frozenset()

    # No return annotation on purpose: pydantic would take it as the serialised form,
    # and the OpenAPI schema would lose the model's fields.
    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        data = handler(self)
        for name in self._absent_when_none:
            if data.get(name, ...) is None:
                del data[name]
        return data


class AssistantMessage(_Wire):
    """The assistant's answer."""

    _absent_when_none = frozenset({"tool_calls"})

    role: Literal["assistant"] = "assistant"
    content: str
    """The text; empty when the answer only calls tools."""
    tool_calls: list[ToolCallOut] | None = None
    """The tools the answer calls (absent when it calls none)."""


class Choice(BaseModel):
    """One choice: the aligned answer (index 0), or a next-best candidate (``n`` > 1)."""

    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    """``content_filter`` when the policy's fallback text replaced every candidate, or the
    input gate refused the request."""
    logprobs: None = None


class UsageOut(BaseModel):
    """Tokens read and written for the request; ``completion_tokens`` counts every
    candidate generated, not only the one returned."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CandidateOut(_Wire):
    """One candidate with its scores (``return_candidates``, for a key with the
    ``candidates`` right)."""

    _absent_when_none = frozenset({"tool_calls"})

    text: str | None
    """The candidate's text; ``null`` when withheld (``redacted``)."""
    score: float | None
    """Combined, normalised score (higher is better)."""
    scores: dict[str, float | None]
    """Raw value per scorer; ``null`` where the scorer failed."""
    passed: bool
    """All safety gates held."""
    gate_failures: list[str]
    tokens: int
    finish_reason: str
    """The backend's: ``stop`` or ``length``."""
    state: Literal["complete", "partial", "rejected"] = "complete"
    """``rejected``: a search strategy (``early_rejection``) dropped it unfinished; it is
    kept for audit with the partial text and the scores it was dropped on."""
    chosen: bool
    redacted: bool = False
    """The text failed a gate and is withheld: only a key with the ``audit`` right (and the
    audit log) sees it; the scores are sent all the same."""
    origin: Literal["sampled", "refusal", "referral"] = "sampled"
    """``refusal``: the input gate's refusal text, offered to a steered request as one
    more candidate; ``referral``: its referral to qualified help, offered likewise;
    ``sampled``: written by the generator."""
    tool_calls: list[ToolCallOut] | None = None
    """The tools this candidate calls (a request that offered ``tools``); absent when it
    calls none, withheld with the text (``redacted``)."""


class InputDecisionOut(_Wire):
    """The input gate's verdict on the request, made before anything was sampled."""

    _absent_when_none = frozenset({"advice", "steer"})

    action: Literal["pass", "steer", "refuse"]
    """``refuse``: nothing was sampled and the refusal text is the answer
    (``finish_reason`` ``content_filter``, zero completion tokens); ``steer``: sampled
    under the policy's stricter prompt; ``pass``: sampled as usual."""
    scores: dict[str, float | None]
    """Raw value per input scorer; ``null`` where the scorer failed."""
    decided_by: str | None
    """The input scorer whose threshold chose the action (``null`` for ``pass``)."""
    harm: float | None
    """The request's estimated probability of being harmful, when a scorer gives one."""
    failed: list[str]
    """Input scorers that failed; any failure refuses the request (fail closed)."""
    seconds: float
    """Wall-clock seconds the input gate took."""
    labels: list[str] = []
    """Categories the deciding scorer named (a guard model's violated categories)."""
    advice: float | None = None
    """The request's estimated probability of needing a qualified professional, when an
    input scorer gives one (absent otherwise)."""
    steer: str | None = None
    """The named steer a steered request was sampled under (absent: the section's own)."""


class AligntimeResult(_Wire):
    """Not in the OpenAI spec: how the answer was chosen."""

    _absent_when_none = frozenset({"candidates"})

    policy: str
    strategy: str
    candidates_generated: int
    """Candidates sampled for this request (resampling included)."""
    best: int | None
    """Index of the chosen candidate; ``null`` when the fallback was returned."""
    fallback: bool
    """A text stood in for a candidate: the policy's fallback, or the input gate's refusal."""
    fail_closed: bool
    """The fallback was returned because a gating or input scorer failed, not because of
    the answers or the request."""
    scorer_errors: list[str]
    """Scorers that failed on this request."""
    timings: dict[str, float]
    """Seconds spent generating, scoring and in all (``generate_s``, ``score_s``, ``total_s``)."""
    input: InputDecisionOut | None = None
    """The input gate's verdict; ``null`` when the policy has no input gate."""
    candidates: list[CandidateOut] | None = None
    """Every candidate, when ``return_candidates`` was asked for (absent otherwise)."""


class ChatCompletion(BaseModel):
    """Response of ``POST /v1/chat/completions`` (not streaming)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageOut
    system_fingerprint: str | None = None
    aligntime: AligntimeResult
    """Not in the OpenAI spec."""


class DeltaToolCall(BaseModel):
    """One tool call in a stream chunk, sent whole (``index`` orders the calls)."""

    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Delta(_Wire):
    """What one stream chunk adds to the answer (only the keys it sets)."""

    _absent_when_none = frozenset({"role", "content", "tool_calls"})

    role: Literal["assistant"] | None = None
    """``assistant``, in the first chunk only."""
    content: str | None = None
    """The next piece of the answer (empty in the first chunk, absent in the last)."""
    tool_calls: list[DeltaToolCall] | None = None
    """The answer's tool calls, in one chunk after its text (absent otherwise)."""


class ChunkChoice(BaseModel):
    """The one choice of a stream chunk."""

    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    """Set in the last chunk of the answer only; as in :class:`Choice`."""


class ChatCompletionChunk(_Wire):
    """One server-sent event of ``POST /v1/chat/completions`` with ``stream: true``."""

    _absent_when_none = frozenset({"usage", "aligntime"})

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    """One choice; none in the ``usage`` chunk."""
    usage: UsageOut | None = None
    """Only in the extra last chunk that ``stream_options.include_usage`` asks for."""
    aligntime: AligntimeResult | None = None
    """Not in the OpenAI spec: in the chunk that ends the answer."""


class ModelCard(BaseModel):
    """One served policy, as ``GET /v1/models`` lists it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "aligntime"
    description: str = ""
    """Not in the OpenAI spec: the policy's description."""


class ModelList(BaseModel):
    """Response of ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(_Wire):
    """Response of ``GET /healthz``."""

    _absent_when_none = frozenset({"reason"})

    status: Literal["ok", "draining", "unhealthy"]
    """``ok`` (HTTP 200), or why requests cannot be answered now (HTTP 503)."""
    models: list[str]
    """The policies this server serves."""
    reason: str | None = None
    """What is wrong, when the status is not ``ok``."""


class ErrorDetail(BaseModel):
    """The OpenAI error object."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error answer: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail
