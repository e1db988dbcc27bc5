"""The heads, the trainer and the saved folder, on a small bag-of-words fake encoder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from aligntime.errors import ConfigError, InputError
from aligntime.training.artifact import MANIFEST, load_folder, save_folder
from aligntime.training.data import Dataset, HarmExample, PreferencePair
from aligntime.training.heads import HarmHead, RewardHead, TrainSettings
from aligntime.training.trainer import (
    TrainOptions,
    choose_heldout,
    gate_thresholds,
    refit_reward,
    train,
)
from aligntime.types import Message

DIM = 64


class BagOfWords:
    """Unit-length hashed bag of words: texts sharing words land close together."""

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), DIM), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().replace(".", " ").replace(":", " ").split():
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % DIM] += 1.0
        out += 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)


HARMFUL = ["bomb", "poison", "weapon", "steal", "hack", "stalk", "burn", "kidnap"]
BENIGN = ["pasta", "garden", "poem", "python", "budget", "guitar", "travel", "cat"]
REFUSE = "Sorry, I cannot do that request."
HELP = "Here is a clear and useful answer with the steps you need."


def toy_dataset(seed: int = 0) -> Dataset:
    """Refusals preferred for harmful requests and dispreferred for benign ones."""
    rng = random.Random(seed)
    data = Dataset([], [])
    for topic in HARMFUL + BENIGN:
        harmful = topic in HARMFUL
        for k in range(6):
            aim = "to injure someone badly" if harmful else "to enjoy with friends"
            prompt = f"how to use {topic} {aim} {k} {rng.choice(['please', 'now', 'today'])}"
            messages = (Message("user", prompt),)
            chosen, rejected = (REFUSE, HELP) if harmful else (HELP, REFUSE)
            source = f"src-{topic}"
            data.pairs.append(
                PreferencePair(messages, chosen, rejected, source, float(harmful), "unsafe")
            )
            data.requests.append(HarmExample(messages, float(harmful), source))
    return data


def test_reward_head_learns_a_preference() -> None:
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(8).astype(np.float32)
    a = rng.standard_normal((200, 8)).astype(np.float32)
    b = rng.standard_normal((200, 8)).astype(np.float32)
    better = (a @ direction) > (b @ direction)
    chosen, rejected = np.where(better[:, None], a, b), np.where(better[:, None], b, a)
    for hidden in (0, 16):
        head = RewardHead.init(8, hidden, seed=0)
        losses = head.fit(chosen, rejected, TrainSettings(steps=300, l2=1e-4))
        assert losses[-1] < losses[0] * 0.5
        assert float(np.mean(head(chosen) > head(rejected))) > 0.95


def test_anchoring_puts_acceptable_answers_above_zero() -> None:
    rng = np.random.default_rng(2)
    good = (rng.standard_normal((150, 6)) + 1.0).astype(np.float32)
    bad = (rng.standard_normal((150, 6)) - 1.0).astype(np.float32) + 5.0  # shifted: same order
    anchored = RewardHead.init(6, 0, seed=0)
    anchored.fit(good, bad, TrainSettings(steps=300, l2=1e-4), anchor=1.0)
    assert float(np.mean(anchored(good) > anchored(bad))) > 0.9
    assert float(np.mean(anchored(good) > 0)) > 0.9 and float(np.mean(anchored(bad) < 0)) > 0.9


def test_harm_head_fits_soft_labels() -> None:
    rng = np.random.default_rng(1)
    u = rng.standard_normal((300, 6)).astype(np.float32)
    y = (u[:, 0] > 0).astype(np.float32)
    y[:30] = 0.5  # careful cases: pulled to the middle, not to either side
    head = HarmHead.init(6)
    head.fit(u, y, TrainSettings(steps=400, l2=1e-4))
    p = head(u)
    hard = y != 0.5
    assert float(np.mean((p[hard] >= 0.5) == (y[hard] == 1.0))) > 0.95


def test_split_by_source_holds_whole_sources_out() -> None:
    groups = [f"s{i}" for i in range(10)] * 3
    held = choose_heldout(groups, TrainOptions(heldout=0.3, split="source", seed=3))
    assert len(held) == 3 and held <= set(groups)
    assert held == choose_heldout(groups, TrainOptions(heldout=0.3, split="source", seed=3))
    named = TrainOptions(split="source", heldout_groups=("s1",))
    assert choose_heldout(groups, named) == {"s1"}
    with pytest.raises(InputError, match="not in the data"):
        choose_heldout(groups, TrainOptions(split="source", heldout_groups=("nope",)))
    with pytest.raises(InputError, match="at least two groups"):
        choose_heldout(["only"], TrainOptions(heldout=0.2))


def test_trainer_uses_the_harm_estimate_to_tell_refusal_from_over_refusal() -> None:
    data = toy_dataset()
    held = ("src-bomb", "src-kidnap", "src-pasta", "src-cat")
    options = TrainOptions(split="source", heldout_groups=held, seed=0)
    options.reward = TrainSettings(steps=400, l2=1e-4)
    options.harm = TrainSettings(steps=400, l2=1e-4)
    stages: set[str] = set()
    result = train(data, BagOfWords(), options, lambda stage, done, total: stages.add(stage))
    assert stages == {"embed", "harm", "reward"}
    reward = result.metrics["reward"]
    harm = result.metrics["harm"]
    assert harm["heldout"]["accuracy"] == 1.0
    # one and the same answer pair flips with the request, on topics never trained on
    assert reward["heldout"]["accuracy"] == 1.0
    assert result.model.config["reward"]["features"] == ["u", "v", "uv", "cos", "hv"]
    assert result.heldout_groups == sorted(held)
    # without harm labels there is no harm head, and no h*v block
    plain = train(
        Dataset([dataclasses.replace(p, harm=None) for p in data.pairs], []),
        BagOfWords(),
        TrainOptions(split="source", heldout_groups=held, seed=0),
    )
    assert plain.model.harm is None
    assert plain.model.config["reward"]["features"] == ["u", "v", "uv", "cos"]


def test_refit_reward_learns_from_the_estimates_it_is_given() -> None:
    """After the harm head is replaced, the reward head is fitted again on the new
    estimates; its held-out figures are measured with the model's (new) harm head."""
    data = toy_dataset()
    held = ("src-bomb", "src-kidnap", "src-pasta", "src-cat")
    options = TrainOptions(split="source", heldout_groups=held, seed=0)
    options.reward = TrainSettings(steps=400, l2=1e-4)
    options.harm = TrainSettings(steps=400, l2=1e-4)
    result = train(data, BagOfWords(), options)
    first = result.model.reward
    truth = {r.request: r.label for r in data.requests}
    refit_reward(result, data, BagOfWords(), options, truth)
    assert result.model.reward is not first
    assert result.metrics["reward"]["heldout"]["accuracy"] == 1.0
    # Estimates that call every harmful request benign and the reverse teach the
    # opposite rule, which the (unchanged) harm head's estimates then expose on held-out
    # topics: the estimates given are the ones learnt from.
    inverted = {text: 1.0 - label for text, label in truth.items()}
    refit_reward(result, data, BagOfWords(), options, inverted)
    assert result.metrics["reward"]["train"]["accuracy"] == 1.0
    assert result.metrics["reward"]["heldout"]["accuracy"] == 0.0
    # with reward_harm="labels", the pairs' own harm labels win over the estimates given
    labelled = dataclasses.replace(options, reward_harm="labels")
    refit_reward(result, data, BagOfWords(), labelled, inverted)
    assert result.metrics["reward"]["heldout"]["accuracy"] == 1.0
    # nothing to refit without a reward head
    plain = train(Dataset([], data.requests), BagOfWords(), options)
    refit_reward(plain, data, BagOfWords(), options, truth)
    assert plain.model.reward is None


def test_saved_folder_round_trips_and_checks_its_hashes(tmp_path: Path) -> None:
    options = TrainOptions(heldout=0.25, seed=1, encoder={"model": "m", "tokenizer": "t"})
    options.reward = TrainSettings(steps=50)
    options.harm = TrainSettings(steps=50)
    result = train(toy_dataset(), BagOfWords(), options)
    folder = tmp_path / "scorer"
    save_folder(result.model, folder, "# card\n")
    loaded = load_folder(folder)
    assert loaded.reward is not None and loaded.harm is not None
    x = np.random.default_rng(0).standard_normal((3, 4 * DIM + 1)).astype(np.float32)
    assert result.model.reward is not None
    np.testing.assert_allclose(loaded.reward(x), result.model.reward(x), rtol=1e-6)
    assert loaded.encoder == {"model": "m", "tokenizer": "t"}
    assert json.loads((folder / "config.json").read_text())["format"] == "aligntime-trained-scorer"

    weights = folder / "weights.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ConfigError, match="does not match its sha256"):
        load_folder(folder)
    (folder / MANIFEST).unlink()
    with pytest.raises(ConfigError, match=r"has no MANIFEST\.sha256"):
        load_folder(folder)
    with pytest.raises(ConfigError, match="does not exist"):
        load_folder(tmp_path / "missing")


def test_nothing_to_train() -> None:
    with pytest.raises(InputError, match="no training data"):
        train(Dataset([], []), BagOfWords(), TrainOptions())


def test_gate_thresholds_take_the_quantiles_of_benign_scores_within_their_bounds() -> None:
    spread = np.linspace(0.0, 1.0, 101)  # the q-quantile of these is q itself
    assert gate_thresholds(spread) == {"refuse": 0.98, "steer": 0.9}
    # A confident head: refuse never below 0.5, steer never below 0.3.
    assert gate_thresholds(spread * 0.1) == {"refuse": 0.5, "steer": 0.3}
    # Quantiles closer than 0.05: steer stays 0.05 under refuse.
    assert gate_thresholds(np.full(50, 0.7)) == {"refuse": 0.7, "steer": 0.65}
    with pytest.raises(InputError, match="no out-of-fold scores"):
        gate_thresholds([])
