"""Benchmark the ``transformers`` backend with a reward model on a GPU; prints one JSON object.

It builds a randomly initialised Llama-3.2-1B-shaped generator (hidden 2048, 16
layers, 32 heads, 8 KV heads, intermediate 8192, vocabulary 128256, bfloat16)
and a reward model of the same shape (``LlamaForSequenceClassification`` with
one output), saves both to a temporary folder with a word-level tokenizer that
covers the whole vocabulary (so every generated token is one word, and the
reward model reads as many tokens as were generated), and measures through the
real ``Aligner`` (policy built in code: ``transformers`` generator +
``reward_model`` scorer):

- ``align``: wall seconds of one ``align`` at N = 1, 8 and 32 with a 128-token
  prompt and exactly 256 new tokens per candidate (``ignore_eos``), split into
  generate and score seconds (medians over ``--repeats``);
- ``naive_sequential``: N = 8 answers as eight N = 1 generations one after
  another (the baseline that batching is measured against);
- ``targets``: align(N=8) / align(N=1) (target <= 1.5) and scoring time as a
  fraction of generation time (target <= 0.10).

Weights are random: they do not change the cost of a forward pass.

Usage::

    python bench/gpu.py                       # CUDA, 1B shapes
    python bench/gpu.py --device cpu --tiny   # a smoke test of the same code paths

Without a CUDA device (and without ``--device cpu``) it prints
``{"skipped": "no CUDA device"}`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, int]] = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
    ),
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=1024,
    ),
}
SPECIALS = ["<|bos|>", "<|end|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def build_tokenizer(folder: Path, vocab_size: int) -> Any:
    """A word-level tokenizer whose vocabulary is exactly the model's: w0, w1, ..."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for i in range(len(SPECIALS), vocab_size):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>"
    )
    wrapped.add_special_tokens({"additional_special_tokens": SPECIALS[3:]})
    wrapped.chat_template = TEMPLATE
    wrapped.save_pretrained(folder)
    return wrapped


def build_models(root: Path, shape: dict[str, int], device: str, dtype: Any) -> tuple[Path, Path]:
    """Save a random generator and a random one-output reward model; returns their folders."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    paths = []
    for kind in ("generator", "reward"):
        folder = root / kind
        tokenizer = build_tokenizer(folder, shape["vocab_size"])
        config = LlamaConfig(
            **shape,
            max_position_embeddings=4096,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
            num_labels=1,
        )
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # initialise in the target dtype: half the memory
        try:
            with torch.device(device):
                cls = LlamaForCausalLM if kind == "generator" else LlamaForSequenceClassification
                model = cls(config)
        finally:
            torch.set_default_dtype(previous)
        model.save_pretrained(folder)
        del model
        paths.append(folder)
    return paths[0], paths[1]


def prompt_of(generator: Any, tokens: int) -> list[Any]:
    """A user message whose chat prompt is exactly ``tokens`` tokens long."""
    from aligntime.types import Message

    overhead = int(generator.chat_input_ids([Message("user", "w10")]).shape[1]) - 1
    words = " ".join(f"w{100 + i % 900}" for i in range(max(1, tokens - overhead)))
    return [Message("user", words)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU smoke test)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--ns", default="1,8,32", help="comma-separated N values")
    args = parser.parse_args()

    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return
    from aligntime import Aligner
    from aligntime.policy.schema import Policy
    from aligntime.types import GenerationParams

    shape_name = "tiny" if args.tiny else "llama-3.2-1b"
    dtype_name = "float32" if args.device == "cpu" else "bfloat16"
    dtype = getattr(torch, dtype_name)
    ns = [int(x) for x in args.ns.split(",")]
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(args.device) if args.device != "cpu" else "cpu",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "shape": shape_name,
        "dtype": dtype_name,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory(prefix="aligntime-bench-") as tmp:
        t0 = time.perf_counter()
        gen_dir, rm_dir = build_models(Path(tmp), SHAPES[shape_name], args.device, dtype)
        out["build_s"] = round(time.perf_counter() - t0, 2)
        policy = Policy.model_validate(
            {
                "name": "bench-gpu",
                "generator": {
                    "backend": "transformers",
                    "model": str(gen_dir),
                    "device": args.device,
                    "dtype": dtype_name,
                    "max_tokens": args.new_tokens,
                    "ignore_eos": True,
                    "temperature": 0.8,
                },
                "n": 1,
                "max_n": max([*ns, 8]),
                "scorers": [
                    {
                        "name": "reward",
                        "kind": "reward_model",
                        "model": str(rm_dir),
                        "device": args.device,
                        "dtype": dtype_name,
                        "batch_tokens": 65536,
                    }
                ],
                "strategy": {"kind": "best_of_n"},
            }
        )
        aligner = Aligner.from_policy(policy)
        t0 = time.perf_counter()
        aligner.load()
        out["load_s"] = round(time.perf_counter() - t0, 2)
        messages = prompt_of(aligner.generator, args.prompt_tokens)
        aligner.align(messages, n=2, max_tokens=8)  # warm-up: kernels, allocator

        align: dict[str, Any] = {}
        for n in ns:
            walls, gens, scores = [], [], []
            shortest = args.new_tokens
            for r in range(args.repeats):
                result = aligner.align(messages, n=n, seed=r)
                walls.append(result.timings.total_s)
                gens.append(result.timings.generate_s)
                scores.append(result.timings.score_s)
                shortest = min([shortest, *(c.tokens for c in result.candidates)])
            align[f"n{n}"] = {
                "wall_s": round(statistics.median(walls), 3),
                "generate_s": round(statistics.median(gens), 3),
                "score_s": round(statistics.median(scores), 3),
                "score_fraction_of_generate": round(
                    statistics.median(scores) / statistics.median(gens), 4
                ),
                "prompt_tokens": result.usage.prompt_tokens,
                "completion_tokens": result.usage.completion_tokens,
                # ignore_eos makes every answer new_tokens long; less would skew the figures.
                "shortest_answer_tokens": shortest,
            }
        out["align"] = align

        generator = aligner.generator
        prompt = aligner.prompt.apply(messages)
        walls = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            for i in range(8):
                generator.generate_sync(prompt, 1, GenerationParams(seed=100 * r + i))  # type: ignore[attr-defined]
            walls.append(time.perf_counter() - t0)
        out["naive_sequential"] = {"n": 8, "generate_s": round(statistics.median(walls), 3)}
        if args.device.startswith("cuda"):
            out["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        aligner.close()

    if "n1" in align and "n8" in align:
        ratio = align["n8"]["wall_s"] / align["n1"]["wall_s"]
        worst_scoring = max(v["score_fraction_of_generate"] for v in align.values())
        out["targets"] = {
            "align_n8_over_n1": round(ratio, 3),
            "align_n8_over_n1_ok": ratio <= 1.5,
            "naive8_over_align_n8": round(
                out["naive_sequential"]["generate_s"] / align["n8"]["wall_s"], 3
            ),
            "worst_score_fraction": worst_scoring,
            "score_fraction_ok": worst_scoring <= 0.10,
        }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
