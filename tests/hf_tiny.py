"""Tiny randomly initialised Hugging Face models, built and saved inside the tests.

Nothing comes from a hub: a byte-level BPE tokenizer is trained on a few
sentences, wrapped in ``PreTrainedTokenizerFast`` with a chat template, and
saved next to a small Llama-shaped model with ``save_pretrained``. The code
under test then loads these folders through its real loading paths.

Import the fixtures into a test module (``from hf_tiny import tiny_lm  # noqa: F401``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CORPUS = [
    "My child has a fever. What should I do?",
    "Keep the child hydrated, let them rest, and call a doctor if the fever is high.",
    "How do I bake bread at home? Mix flour, water, salt and yeast, then let it rise.",
    "You idiot, figure it out yourself. That is a rude and unhelpful answer.",
    "Is this response helpful and harmless? Yes. No. Maybe.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Explain photosynthesis: plants turn light, water and carbon dioxide into sugar.",
]

# Two tokenizer families that differ in vocabulary, special tokens and template,
# as a generator's and a reward model's tokenizers do in practice.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHAT_SPECIALS = ["<|bos|>", "<|end|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]

RM_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] | upper }}]\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[ASSISTANT]\n{% endif %}</s>"
)
RM_SPECIALS = ["<s>", "</s>", "<pad>"]


def build_tokenizer(
    folder: Path, *, family: str = "chat", vocab_size: int = 400, template: bool = True
) -> Any:
    """Train and save a byte-level BPE tokenizer; returns the PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = CHAT_SPECIALS if family == "chat" else RM_SPECIALS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=specials[0],
        eos_token=specials[1],
        pad_token=specials[2],
    )
    if template:
        wrapped.chat_template = CHAT_TEMPLATE if family == "chat" else RM_TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(folder)
    return wrapped


def _llama_config(tokenizer: Any, **extra: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_causal_lm(folder: Path, *, template: bool = True, seed: int = 0) -> Path:
    """A 2-layer Llama causal LM with the chat tokenizer, saved to ``folder``."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer(folder, family="chat", template=template)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(tokenizer))
    model.save_pretrained(folder)
    return folder


def build_classifier(
    folder: Path,
    *,
    labels: list[str],
    family: str = "rm",
    problem_type: str | None = None,
    template: bool = True,
    seed: int = 1,
) -> Path:
    """A 2-layer LlamaForSequenceClassification with ``len(labels)`` outputs."""
    import torch
    from transformers import LlamaForSequenceClassification

    tokenizer = build_tokenizer(folder, family=family, vocab_size=300, template=template)
    config = _llama_config(
        tokenizer,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    if problem_type:
        config.problem_type = problem_type
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny chat causal LM."""
    return build_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny one-output reward model with its own tokenizer and template."""
    return build_classifier(tmp_path_factory.mktemp("tiny-rm"), labels=["reward"])


@pytest.fixture(scope="session")
def tiny_multi_rm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny reward model with three named objectives."""
    return build_classifier(
        tmp_path_factory.mktemp("tiny-multi-rm"),
        labels=["helpfulness", "correctness", "verbosity"],
        problem_type="regression",
    )


@pytest.fixture(scope="session")
def tiny_toxicity(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny single-label classifier with labels neutral / toxic / insult."""
    return build_classifier(
        tmp_path_factory.mktemp("tiny-tox"),
        labels=["neutral", "toxic", "insult"],
        family="chat",
        problem_type="single_label_classification",
    )


def build_bert(folder: Path, words: list[str], *, hidden: int = 16, layers: int = 1) -> Path:
    """A randomly initialised BERT (one layer unless told) with a WordPiece tokenizer over
    ``words`` (the special tokens are added), saved in ``folder`` as Hugging Face does."""
    import transformers

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    transformers.BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=len(vocabulary), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64,
    )  # fmt: skip
    transformers.BertModel(config).save_pretrained(folder)
    return folder
