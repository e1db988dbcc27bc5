"""The model card (README.md) written next to trained weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aligntime.training.trainer import TrainResult


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"


def _shape(hidden: int) -> str:
    return f"{hidden} hidden units" if hidden else "linear"


def model_card(
    result: TrainResult,
    *,
    title: str,
    data: Sequence[str],
    extra: Sequence[str] = (),
) -> str:
    """Markdown: what the scorer is, the data it saw, the split, and its accuracy."""
    cfg = result.model.config
    m = result.metrics
    enc = cfg.get("encoder", {})
    lines = [
        f"# {title}",
        "",
        "A scorer trained by `aligntime train-scorer`: small heads over frozen sentence "
        f"embeddings ({enc.get('model', '?')}, tokenizer {enc.get('tokenizer', '?')})"
        + (
            ", and a harm head on the encoder itself with its top layers fine-tuned. "
            if (cfg.get("harm") or {}).get("tuned")
            else ". "
        )
        + "Load it with a policy scorer of `kind: trained` and `model: <this folder>`; "
        "`head: reward` rates answers, `head: harm` rates requests for the input gate.",
        "",
        "## Data",
        "",
        *[f"- {line}" for line in data],
        "",
        "## Split",
        "",
        f"Held out by {m.get('split')}: {len(result.heldout_groups)} group(s) never trained on.",
    ]
    if m.get("split") == "source" and result.heldout_groups:
        lines.append("Held-out sources: " + ", ".join(f"`{g}`" for g in result.heldout_groups))
    lines += ["", "## Accuracy", ""]
    reward = m.get("reward")
    if reward:
        lines.append(
            f"Reward head ({_shape(cfg['reward']['hidden'])}, features "
            f"{', '.join(cfg['reward']['features'])}): pairwise accuracy "
            f"{_pct(reward['train']['accuracy'])} on {reward['train']['pairs']} training pairs"
            + (
                f", **{_pct(reward['heldout']['accuracy'])}** on "
                f"{reward['heldout']['pairs']} held-out pairs."
                if reward.get("heldout")
                else " (nothing held out)."
            )
        )
        if reward.get("heldout"):
            lines += ["", "| held-out kind | accuracy |", "| --- | ---: |"]
            for kind, acc in reward["heldout"]["by_kind"].items():
                lines.append(f"| {kind} | {_pct(acc)} |")
        lines.append("")
    harm = m.get("harm")
    if harm:
        threshold = cfg["harm"]["threshold"]
        tuned = cfg["harm"].get("tuned")
        ngrams = int(cfg["harm"].get("ngrams", 0))
        reads = f"embedding and {ngrams} hashed word n-gram columns" if ngrams else "embedding"
        if tuned:
            what = (
                f"{tuned['base']} with its top {tuned.get('tuned_layers', '?')} layers "
                "fine-tuned and a linear layer over its mean-pooled output, run in numpy"
            )
        else:
            what = f"logistic over the {reads}"
        lines.append(f"Harm head ({what}, threshold {threshold}):")
        lines += ["", "| split | requests | accuracy | harmful recall | benign FPR | AUC |"]
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for split in ("train", "heldout"):
            row = harm.get(split)
            if row:
                lines.append(
                    f"| {split} | {row['requests']} | {_pct(row['accuracy'])} | "
                    f"{_pct(row['recall'])} | {_pct(row['false_positive_rate'])} | "
                    f"{row['auc'] if row['auc'] is not None else '-'} |"
                )
        lines.append("")
    lines += list(extra)
    return "\n".join(lines).rstrip() + "\n"
