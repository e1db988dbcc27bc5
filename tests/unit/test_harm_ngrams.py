"""The harm head's hashed word n-grams: stable features, training, saving and loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.unit.test_train_heads import BagOfWords, toy_dataset

from aligntime.training.artifact import load_folder, save_folder
from aligntime.training.data import Dataset, HarmExample
from aligntime.training.features import hashed_ngrams
from aligntime.training.heads import HarmHead, TrainSettings
from aligntime.training.trainer import TrainOptions, train
from aligntime.types import Message


def test_hashed_ngrams_are_stable_unit_rows_of_words_and_bigrams() -> None:
    rows = hashed_ngrams(["Kill the process", "kill  THE process", "", "bake bread"], 256)
    assert rows.shape == (4, 256) and rows.dtype == np.float32
    np.testing.assert_allclose(rows[0], rows[1])  # case and spacing do not matter
    assert not rows[2].any()  # an empty text has no n-grams (and no NaN)
    np.testing.assert_allclose(np.linalg.norm(rows[[0, 3]], axis=1), 1.0, rtol=1e-6)
    assert np.count_nonzero(rows[0]) <= 5 and np.count_nonzero(rows[0]) >= 4  # 3 words, 2 pairs
    # crc32, not Python's salted hash: the same column in every process.
    again = hashed_ngrams(["kill the process"], 256)
    np.testing.assert_array_equal(again[0], rows[0])


def test_ngrams_let_the_head_read_intent_the_embedding_cannot_see() -> None:
    # Identical embeddings; only the wording tells harmful from benign.
    texts = [f"how to {v} a {n}" for v in ("hurt", "help") for n in ("cat", "dog", "bird", "fox")]
    labels = np.array([1.0] * 4 + [0.0] * 4, np.float32)
    u = np.ones((len(texts), 8), np.float32) / np.sqrt(8)
    plain = HarmHead.init(8)
    plain.fit(u, labels, TrainSettings(steps=200, learning_rate=0.05))
    assert np.allclose(plain(u), 0.5, atol=1e-3)
    head = HarmHead.init(8, ngrams=512)
    head.fit(head.inputs(u, texts), labels, TrainSettings(steps=200, learning_rate=0.05))
    p = head(u, texts)
    assert p[:4].min() > 0.8 and p[4:].max() < 0.2
    with pytest.raises(ValueError, match="pass the texts"):
        head(u)


def test_trained_with_ngrams_round_trips(tmp_path: Path) -> None:
    data = toy_dataset()
    data = Dataset(data.pairs, data.requests)
    options = TrainOptions(heldout=0.25, seed=1, ngrams=128, encoder={"model": "m"})
    options.reward = TrainSettings(steps=30)
    options.harm = TrainSettings(steps=80)
    result = train(data, BagOfWords(), options)
    assert result.model.harm is not None and result.model.harm.ngrams == 128
    assert result.model.config["harm"]["ngrams"] == 128
    folder = tmp_path / "scorer"
    save_folder(result.model, folder, "# card\n")
    loaded = load_folder(folder)
    assert loaded.harm is not None and loaded.harm.ngrams == 128
    request = HarmExample((Message("user", "how to use bomb to injure someone badly"),), 1.0)
    text = request.request
    u = BagOfWords().embed([text])
    np.testing.assert_allclose(loaded.harm(u, [text]), result.model.harm(u, [text]), rtol=1e-6)
