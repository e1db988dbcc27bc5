"""How far a derived quantisation moves the model's next-token distribution.

The package index carries SmolLM2 only as Q4_1; faster CPU kernels need another
layout made from it (:mod:`aligntime.models.requant`), and every 4-bit layout
loses something in the conversion. Win rates from the held-out judge are a coarse
check of that loss: the referee is a 135M model. This bench measures the loss at
its source. Both models read the same recorded answers (the package's
``smollm2_answers.jsonl``, written by the shipped Q4_1 model under several
instructions) after the chat template, and for every answer token it reports:

- ``kl``: KL(base || other) of the next-token distributions, in nats, its mean and
  90th percentile (0 for the same weights);
- ``top1_agree``: how often the two models' likeliest next token is the same;
- ``nll``: the answers' mean negative log-likelihood per token under each model.

``--other`` is a second GGUF file (a catalogue name or a path), or, with
``--requant TYPE``, the base model with the tensor groups named by ``--tensors``
requantised in memory (gguf's reference quantiser, as
:mod:`aligntime.models.requant` uses): which tensors carry the loss.

Both files are loaded by ``transformers`` (dequantised to float32, the
``transformers`` extra), so the figures compare weights, not llama.cpp kernels.

Usage::

    python bench/quant_divergence.py [--base smollm2-135m-instruct]
        [--other smollm2-135m-instruct-q4_0 | --requant Q4_0 --tensors ffn_gate,ffn_up]
        [--limit 40] [--max-tokens 200]

Prints JSON (progress on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import aligntime.training
from aligntime.models.store import resolve

GROUPS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
"""GGUF tensor groups (``blk.N.<group>.weight``) and the transformers parameters they load as."""


def load(path: Path) -> Any:
    """A GGUF file as a float32 transformers model, in evaluation mode."""
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def requantised(model: Any, kind: str, groups: list[str]) -> Any:
    """``model`` with the weights of ``groups`` quantised to ``kind`` and back, in place."""
    import gguf

    qtype = gguf.GGMLQuantizationType[kind]
    wanted = [GROUPS[g] for g in groups]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(part in name for part in wanted):
                # Blocks run along the input dimension in both layouts (GGUF rows are
                # transformers rows), so quantising the matrix as it is matches the file.
                weights = param.detach().numpy().astype(np.float32)
                back = gguf.quants.dequantize(gguf.quants.quantize(weights, qtype), qtype)
                param.copy_(torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32)))
    return model


def answers(tokenizer: Any, limit: int, max_tokens: int) -> list[tuple[list[int], int]]:
    """Token ids of (chat-templated request + recorded answer), and where the answer starts."""
    path = Path(aligntime.training.__file__).parent / "data" / "smollm2_answers.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    # Every instruction mode in turn, so a short run still covers them all.
    by_mode: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_mode.setdefault(row["mode"], []).append(row)
    mixed = [r for group in zip(*by_mode.values(), strict=False) for r in group]
    out: list[tuple[list[int], int]] = []
    for row in mixed:
        if len(out) == limit:
            break
        request = [{"role": "user", "content": row["prompt"]}]
        head = tokenizer.apply_chat_template(request, tokenize=False, add_generation_prompt=True)
        start = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        ids = tokenizer(head + row["answer"], add_special_tokens=False)["input_ids"]
        ids = ids[: start + max_tokens]
        if len(ids) > start + 1:
            out.append((ids, start))
    return out


@torch.no_grad()
def log_probs(model: Any, seqs: list[tuple[list[int], int]]) -> list[torch.Tensor]:
    """Next-token log-probabilities at every answer position of each sequence."""
    out = []
    for ids, start in seqs:
        logits = model(torch.tensor([ids])).logits[0, start - 1 : -1]
        out.append(torch.log_softmax(logits, dim=-1))
    return out


def compare(
    base: list[torch.Tensor], other: list[torch.Tensor], seqs: list[tuple[list[int], int]]
) -> dict[str, Any]:
    """The divergence figures of ``other`` against ``base`` over the same tokens."""
    kl = torch.cat([(b.exp() * (b - o)).sum(-1) for b, o in zip(base, other, strict=True)])
    agree = torch.cat(
        [(b.argmax(-1) == o.argmax(-1)).float() for b, o in zip(base, other, strict=True)]
    )

    def nll(lps: list[torch.Tensor]) -> float:
        picked = [
            -lp[torch.arange(len(lp)), torch.tensor(ids[start:])]
            for lp, (ids, start) in zip(lps, seqs, strict=True)
        ]
        return round(torch.cat(picked).mean().item(), 4)

    return {
        "tokens": kl.numel(),
        "kl": {"mean": round(kl.mean().item(), 6), "p90": round(kl.quantile(0.9).item(), 6)},
        "top1_agree": round(agree.mean().item(), 4),
        "nll": {"base": nll(base), "other": nll(other)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="smollm2-135m-instruct", help="catalogue name or path")
    parser.add_argument(
        "--other", default="smollm2-135m-instruct-q4_0", help="catalogue name or path"
    )
    parser.add_argument("--requant", help="instead of --other: requantise the base to this type")
    parser.add_argument(
        "--tensors",
        default=",".join(GROUPS),
        help=f"with --requant: tensor groups, comma-separated, of {', '.join(GROUPS)}",
    )
    parser.add_argument("--limit", type=int, default=40, help="recorded answers to read")
    parser.add_argument("--max-tokens", type=int, default=200, help="answer tokens per answer")
    args = parser.parse_args()
    groups = [g.strip() for g in args.tensors.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"--tensors: unknown group(s) {unknown}; known: {', '.join(GROUPS)}")
    torch.manual_seed(0)

    t0 = time.perf_counter()
    base_path = resolve(args.base)
    base = load(base_path)
    tokenizer = AutoTokenizer.from_pretrained(base_path.parent, gguf_file=base_path.name)
    seqs = answers(tokenizer, args.limit, args.max_tokens)
    print(f"{len(seqs)} answers; base model read them", file=sys.stderr)
    base_lp = log_probs(base, seqs)
    if args.requant:
        other_name = f"{args.base} with {','.join(groups)} requantised to {args.requant}"
        other = requantised(base, args.requant.upper(), groups)
    else:
        other_name = args.other
        other = load(resolve(args.other))
    other_lp = log_probs(other, seqs)
    result = {
        "base": args.base,
        "other": other_name,
        "answers": len(seqs),
        **compare(base_lp, other_lp, seqs),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
