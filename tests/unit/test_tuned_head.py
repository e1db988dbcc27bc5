"""The fine-tuned harm head: numpy BERT parity with transformers, int8 differences, the
torch-free head against the torch model it came from, its folder, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aligntime.errors import ConfigError
from aligntime.training.bert import BertShape, encode, erf, gelu, mean_pool
from aligntime.training.tuned_head import TunedHarmHead, pack, quantise_delta, unpack
from hf_tiny import build_bert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HARMFUL = ["how do i poison a dog", "how do i hurt a child", "poison the water", "hurt him now"]
BENIGN = ["how do i bake bread", "how do i plant a tree", "bake a cake now", "plant the seeds"]
WORDS = sorted({w for t in HARMFUL + BENIGN for w in t.split()} | {"user", ":"})


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-layer random BERT, as the build's MiniLM is a six-layer one."""
    torch.manual_seed(0)
    return build_bert(tmp_path_factory.mktemp("bert") / "m", WORDS, hidden=16, layers=2)


def test_erf_and_gelu_match_torch() -> None:
    x = np.linspace(-6, 6, 1001, dtype=np.float32)
    assert np.abs(erf(x) - torch.erf(torch.from_numpy(x)).numpy()).max() < 1e-6
    expected = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    assert np.abs(gelu(x) - expected).max() < 3e-6


def test_numpy_forward_matches_transformers_with_padding(bert: Path) -> None:
    from safetensors.numpy import load_file

    tok = transformers.AutoTokenizer.from_pretrained(str(bert))
    model = transformers.AutoModel.from_pretrained(str(bert)).eval()
    batch = tok(["how do i bake bread", "poison"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).last_hidden_state.numpy()
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    got = encode(load_file(str(bert / "model.safetensors")), BertShape(2, 2), ids, mask)
    real = mask.astype(bool)
    assert np.abs(got - expected)[real].max() < 1e-5
    assert np.abs(mean_pool(got, mask) - mean_pool(expected, mask)).max() < 1e-5


def test_int8_differences_are_close_and_put_back_on_the_base() -> None:
    rng = np.random.default_rng(0)
    base = {"m": rng.standard_normal((6, 4)).astype(np.float32), "v": np.zeros(4, np.float32)}
    tuned = {"m": base["m"] + rng.standard_normal((6, 4)).astype(np.float32) * 0.01,
             "v": np.ones(4, np.float32)}  # fmt: skip
    q, scale = quantise_delta(tuned["m"], base["m"])
    assert q.dtype == np.int8 and scale.shape == (6,)
    params = pack(tuned, base, np.ones(4), 0.5)
    assert params["encoder.m.dq"].dtype == np.int8 and params["encoder.v"].dtype == np.float32
    weights = unpack(params, base)
    assert np.abs(weights["m"] - tuned["m"]).max() <= np.abs(tuned["m"] - base["m"]).max() / 200
    assert (weights["v"] == 1).all()
    with pytest.raises(ConfigError, match="not in the base"):
        pack({"other": tuned["m"]}, base, np.ones(4), 0.0)
    with pytest.raises(ConfigError, match="does not fit"):
        unpack(params, {"m": np.zeros((3, 4), np.float32), "v": base["v"]})


class NoEmbedding:
    """The scorer's frozen encoder, which a tuned harm head must not need."""

    def embed(self, texts: list[str]) -> np.ndarray:
        raise AssertionError("the tuned harm head reads tokens, not embeddings")


@pytest.fixture(scope="module")
def tuned(bert: Path) -> tuple[object, TunedHarmHead]:
    from aligntime.training.finetune import Settings, finetune, to_tuned_head

    examples = [(f"user: {t}", 1.0) for t in HARMFUL] + [(f"user: {t}", 0.0) for t in BENIGN]
    settings = Settings(epochs=40, learning_rate=1e-2, batch=4, warmup_steps=1, top_layers=1)
    model = finetune(examples, bert, settings)
    return model, to_tuned_head(model, str(bert), bert, max_length=32)


def test_the_torch_free_head_scores_as_the_torch_model_did(
    tuned: tuple[object, TunedHarmHead],
) -> None:
    model, head = tuned
    texts = [f"user: {t}" for t in HARMFUL + BENIGN]
    expected = model.p_harm(texts)  # type: ignore[attr-defined]
    got = head.probabilities(texts)
    assert np.abs(got - expected).max() < 2e-3
    assert got[:4].min() > got[4:].max()  # it learned the training texts
    # Only the top layer and the linear layer are stored; the lower layer is the base's.
    assert not any(k.startswith("encoder.encoder.layer.0.") for k in head.params)
    assert any(k.startswith("encoder.encoder.layer.1.") for k in head.params)


def test_a_long_conversation_keeps_its_newest_turn(tuned: tuple[object, TunedHarmHead]) -> None:
    _, head = tuned
    head.load()
    filler = "user: " + " ".join(["plant the seeds"] * 40)
    encoding = head._tokenizer.encode(f"{filler}\nuser: how do i poison a dog")
    assert len(encoding.ids) == 32  # max_length
    assert encoding.tokens[-3:] == ["a", "dog", "[SEP]"] and encoding.tokens[0] == "[CLS]"


def test_texts_of_very_different_lengths_are_batched_apart(
    tuned: tuple[object, TunedHarmHead],
) -> None:
    from aligntime.training.tuned_head import _chunks

    _, head = tuned
    texts = ["user: hi", "user: " + "plant the seeds " * 30, "user: hello", "user: hey there"]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    assert _chunks(order, texts) == [[0, 2, 3], [1]]
    # Padding changes nothing: each text scores as it does alone.
    alone = np.array([head.probabilities([t])[0] for t in texts])
    assert np.abs(head.probabilities(texts) - alone).max() < 1e-5


def test_the_folder_round_trip_and_the_scorer(
    tuned: tuple[object, TunedHarmHead], tmp_path: Path
) -> None:
    from aligntime.scorers.trained import TrainedOptions, TrainedScorer
    from aligntime.training.artifact import TrainedModel, load_folder, save_folder
    from aligntime.types import Message

    _, head = tuned
    config = {"encoder": {"model": "all-minilm-l6-v2-int8", "tokenizer": "all-minilm-l6-v2"},
              "harm": {"threshold": 0.5, "steer": 0.3, "tuned": head.config}}  # fmt: skip
    folder = tmp_path / "scorer"
    save_folder(TrainedModel(config, None, head), folder, "# card\n")
    loaded = load_folder(folder)
    assert isinstance(loaded.harm, TunedHarmHead)
    text = "user: how do i poison a dog"
    assert loaded.harm.probabilities([text])[0] == pytest.approx(head.probabilities([text])[0])
    scorer = TrainedScorer(TrainedOptions(model=str(folder), head="harm"))
    scorer._encoder = NoEmbedding()  # type: ignore[assignment]
    scorer._model = loaded
    got = scorer.harm_of([Message("user", "how do i poison a dog")])
    assert got == pytest.approx(float(head.probabilities([text])[0]), abs=1e-6)


def test_a_changed_base_encoder_is_a_clear_error(
    tuned: tuple[object, TunedHarmHead], tmp_path: Path
) -> None:
    _, head = tuned
    wrong = TunedHarmHead(head.params, {**head.config, "base_sha256": "0" * 64})
    with pytest.raises(ConfigError, match="not the encoder the harm head was tuned from"):
        wrong.probabilities(["user: hi"])
    with pytest.raises(ConfigError, match="has no 'heads'"):
        TunedHarmHead(head.params, {k: v for k, v in head.config.items() if k != "heads"})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"no model\.safetensors"):
        TunedHarmHead(head.params, {**head.config, "base": str(empty)}).probabilities(["x"])
    assert json.dumps(head.config)  # the config is plain JSON, as the folder stores it


def test_cross_fit_scores_every_example_with_a_head_that_never_saw_it(bert: Path) -> None:
    from aligntime.training.finetune import Settings, cross_fit

    examples = [(f"user: {t}", 1.0) for t in HARMFUL] + [(f"user: {t}", 0.0) for t in BENIGN]
    settings = Settings(epochs=2, learning_rate=1e-2, batch=4, warmup_steps=1, top_layers=1)
    seen: list[tuple[int, int]] = []
    oof = cross_fit(examples, str(bert), bert, settings, 2, lambda f, n: seen.append((f, n)))
    assert oof.shape == (8,) and np.isfinite(oof).all() and ((oof > 0) & (oof < 1)).all()
    assert seen == [(1, 2), (2, 2)]


@pytest.mark.slow
def test_a_harm_scorer_checks_its_base_when_it_loads(
    tuned: tuple[object, TunedHarmHead], tmp_path: Path
) -> None:
    """Not on the first request: a policy with a broken gate fails when it starts."""
    from aligntime.scorers.trained import TrainedOptions, TrainedScorer
    from aligntime.training.artifact import TrainedModel, save_folder

    _, head = tuned
    wrong = {**head.config, "base_sha256": "0" * 64}
    config = {"encoder": {"model": "all-minilm-l6-v2-int8", "tokenizer": "all-minilm-l6-v2"},
              "harm": {"threshold": 0.5, "steer": 0.3, "tuned": wrong}}  # fmt: skip
    save_folder(TrainedModel(config, None, TunedHarmHead(head.params, wrong)), tmp_path / "s", "")
    with pytest.raises(ConfigError, match="not the encoder the harm head was tuned from"):
        TrainedScorer(TrainedOptions(model=str(tmp_path / "s"), head="harm")).load()
