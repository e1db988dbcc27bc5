"""Served scorers (vLLM pooling endpoints, text-embeddings-inference) against a loopback stub."""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aligntime.errors import ConfigError, ScorerError
from aligntime.scorers.http.kinds import (
    ServedEmbedding,
    ServedRewardModel,
    ServedTextClassifier,
)
from aligntime.types import Candidate, Message
from pooling_stub import PoolingStub, bad_share, embedding, overlap, reward

REQUEST = [Message("user", "what is a bad idea")]


@pytest.fixture
def stub() -> Iterator[PoolingStub]:
    server = PoolingStub().start()
    yield server
    server.stop()


def answers(count: int) -> list[Candidate]:
    return [
        Candidate(" ".join(["bad" if i % 3 == 0 else "idea"] * (i % 7 + 1))) for i in range(count)
    ]


def fast(**extra: Any) -> dict[str, Any]:
    return {"backoff_s": 0.0, "max_backoff_s": 0.0, **extra}


def score(scorer: Any, cands: list[Candidate]) -> list[float]:
    return asyncio.run(scorer.score(REQUEST, cands))


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.hypot(*a) * math.hypot(*b))


def test_64_candidates_are_one_request_per_batch_bound(stub: PoolingStub) -> None:
    cands = answers(64)
    opts = ServedRewardModel.Options(
        server="vllm", base_url=stub.base_url, model="rm", batch_size=64
    )
    values = score(ServedRewardModel(opts), cands)
    assert len(stub.requests) == 1
    assert values == [reward(f"User: what is a bad idea\nAssistant: {c.text}") for c in cands]
    stub.requests.clear()
    opts = opts.model_copy(update={"batch_size": 16})
    assert score(ServedRewardModel(opts), cands) == values
    assert [len(body["input"]) for _, body in stub.requests] == [16, 16, 16, 16]


def test_vllm_endpoints_put_values_back_in_candidate_order(stub: PoolingStub) -> None:
    cands = answers(9)
    expected = [overlap("what is a bad idea", c.text) for c in cands]
    for endpoint in ("/score", "/rerank"):  # /rerank replies sorted by relevance
        opts = ServedRewardModel.Options(
            server="vllm", base_url=stub.base_url, model="ce", endpoint=endpoint
        )
        scorer = ServedRewardModel(opts)
        assert scorer.value_range == (0.0, 1.0)
        assert score(scorer, cands) == pytest.approx(expected)
    assert [p for p, _ in stub.requests] == ["/score", "/rerank"]
    assert stub.requests[0][1]["text_1"] == "what is a bad idea"
    assert stub.requests[1][1]["top_n"] == 9


def test_vllm_classify_weights_labels_by_class_index(stub: PoolingStub) -> None:
    cands = answers(5)
    by_name = ServedTextClassifier.Options(
        server="vllm",
        base_url=stub.base_url,
        model="tox",
        labels={"toxic": 1.0},
        label_names=["ok", "toxic"],
    )
    by_index = by_name.model_copy(update={"labels": {"1": 1.0}, "label_names": None})
    expected = [bad_share(c.text) for c in cands]
    assert score(ServedTextClassifier(by_name), cands) == pytest.approx(expected)
    assert score(ServedTextClassifier(by_index), cands) == pytest.approx(expected)
    with pytest.raises(ConfigError, match="label_names"):
        ServedTextClassifier(by_name.model_copy(update={"label_names": None}))


def test_tei_predict_rerank_and_embed(stub: PoolingStub) -> None:
    cands = answers(6)
    base = {"server": "tei", "base_url": stub.base_url}
    rm = ServedRewardModel(ServedRewardModel.Options(**base))
    assert score(rm, cands) == [reward(c.text) for c in cands]
    assert stub.requests[-1][1]["inputs"][0] == ["what is a bad idea", cands[0].text]
    assert stub.requests[-1][1]["raw_scores"] is True
    rr = ServedRewardModel(ServedRewardModel.Options(**base, endpoint="/rerank"))
    assert score(rr, cands) == pytest.approx([overlap("what is a bad idea", c.text) for c in cands])
    clf = ServedTextClassifier(ServedTextClassifier.Options(**base, labels={"toxic": 1.0}))
    assert score(clf, cands) == pytest.approx([bad_share(c.text) for c in cands])
    emb = ServedEmbedding(ServedEmbedding.Options(**base, batch_size=4))
    query = embedding("what is a bad idea")
    assert score(emb, cands) == pytest.approx([cosine(query, embedding(c.text)) for c in cands])
    # each batch carries the request: 4 + 2 answers, plus the request twice (the two
    # batches are sent concurrently, so they may arrive in either order)
    assert sorted(len(b["inputs"]) for p, b in stub.requests if p == "/embed") == [3, 5]


def test_vllm_pooling_embedding(stub: PoolingStub) -> None:
    cands = answers(3)
    emb = ServedEmbedding(
        ServedEmbedding.Options(server="vllm", base_url=stub.base_url, model="e5")
    )
    query = embedding("what is a bad idea")
    assert score(emb, cands) == pytest.approx([cosine(query, embedding(c.text)) for c in cands])


def test_tei_unknown_label_names_the_servers_labels(stub: PoolingStub) -> None:
    clf = ServedTextClassifier(
        ServedTextClassifier.Options(server="tei", base_url=stub.base_url, labels={"insult": 1.0})
    )
    with pytest.raises(ScorerError, match="toxic"):
        score(clf, answers(2))


def test_retries_then_succeeds_and_does_not_retry_a_400(stub: PoolingStub) -> None:
    opts = ServedRewardModel.Options(server="tei", base_url=stub.base_url, **fast())
    stub.script.extend(["503", "503"])
    assert score(ServedRewardModel(opts), answers(2)) == [reward(c.text) for c in answers(2)]
    assert len(stub.requests) == 3
    stub.requests.clear()
    stub.script.extend(["400"])
    with pytest.raises(ScorerError, match="rejected the request: HTTP 400"):
        score(ServedRewardModel(opts), answers(2))
    assert len(stub.requests) == 1
    stub.requests.clear()
    stub.script.extend(["503"] * 3)
    with pytest.raises(ScorerError, match="after 3 attempts") as info:
        score(ServedRewardModel(opts.model_copy(update={"max_retries": 2})), answers(2))
    assert info.value.scorer == "reward"


@pytest.mark.parametrize("fault", ["malformed", "short"])
def test_a_malformed_reply_is_a_scorer_error_not_retried(stub: PoolingStub, fault: str) -> None:
    opts = ServedRewardModel.Options(server="vllm", base_url=stub.base_url, model="rm", **fast())
    stub.script.append(fault)
    with pytest.raises(ScorerError):
        score(ServedRewardModel(opts), answers(3))
    assert len(stub.requests) == 1


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="needs 'model'"):
        ServedRewardModel(ServedRewardModel.Options(server="vllm", base_url="http://127.0.0.1:1"))
    with pytest.raises(ConfigError, match="/predict, /rerank"):
        ServedRewardModel(
            ServedRewardModel.Options(
                server="tei", base_url="http://127.0.0.1:1", endpoint="/classify"
            )
        )
    with pytest.raises(ValueError, match="base_url"):
        ServedEmbedding.Options(server="tei", base_url="localhost:80")


GATED = """
name: served-gate
generator: {backend: fake, responses: ["A fine answer.", "Another fine answer."]}
n: 2
scorers:
  - name: toxicity
    kind: http_text_classifier
    server: tei
    base_url: BASE
    labels: {toxic: 1.0}
    max_retries: 1
    backoff_s: 0
    gate: {max: 0.5}
  - {name: rules, kind: rules}
on_scorer_error: degrade
fallback: "Sorry."
"""


def test_a_failing_served_gate_fails_closed(stub: PoolingStub, tmp_path: Path) -> None:
    from aligntime.aligner import Aligner

    path = tmp_path / "p.yaml"
    path.write_text(GATED.replace("BASE", stub.base_url))
    with Aligner.from_policy(path) as al:
        ok = al.align("Hello there")
        assert ok.best is not None and ok.fallback is None
        stub.script.extend(["503", "503"])
        down = al.align("Hello there")
    assert down.best is None and down.text == "Sorry."
    assert all(not c.passed for c in down.candidates)


def test_score_batch_shares_requests_across_requests(stub: PoolingStub) -> None:
    from aligntime.scorers.base import BatchItem

    convs = [[Message("user", f"question {i}")] for i in range(3)]
    items: list[BatchItem] = [(c, answers(4)) for c in convs]
    rm = ServedRewardModel(ServedRewardModel.Options(server="tei", base_url=stub.base_url))
    rows = asyncio.run(rm.score_batch(items))
    assert len(stub.requests) == 1  # twelve answers of three requests, one HTTP request
    assert rows == [[reward(c.text) for c in answers(4)]] * 3
    assert [pair[0] for pair in stub.requests[0][1]["inputs"]][::4] == [
        "question 0",
        "question 1",
        "question 2",
    ]
    stub.requests.clear()
    rerank = ServedRewardModel(
        ServedRewardModel.Options(server="tei", base_url=stub.base_url, endpoint="/rerank")
    )
    asyncio.run(rerank.score_batch(items))
    assert len(stub.requests) == 3  # one query per request: no sharing
    stub.requests.clear()
    stub.script.append("400")
    failed = asyncio.run(rm.score_batch(items))
    assert all(isinstance(r, ScorerError) for r in failed)
