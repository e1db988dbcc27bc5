"""Whether training the sentence encoder itself makes a better harm head.

The harm head used to be a logistic layer over a frozen MiniLM embedding and hashed word
n-grams (``--harm-head frozen`` in the build); this bench fine-tunes MiniLM-L6 (the torch
weights of the catalogue's ``all-minilm-l6-v2``, mean-pooled, with a linear head; all of
it or its top layers) on the same labelled requests as the build, then reports the AUC
of its P(harmful) on the build's held-out sources and on each batch of
``tests/data/unseen_requests.jsonl``, beside the same figures for a trained scorer folder
(``--baseline``). To compare like with like, give the baseline the same
training split::

    nice .venv/bin/python scripts/build_safety_scorer.py --stage train --fit split \
        --harm-head frozen --out /tmp/split
    nice .venv/bin/python bench/encoder_finetune.py --baseline /tmp/split

``--folds K`` also picks refuse and steer thresholds by the build's rule (quantiles of
benign training requests' out-of-fold P(harmful), from K more fine-tunes) and reports the
shares of harmful and benign requests flagged at them, beside the baseline's at its own.

``--prompts`` is the build's ``prompts.jsonl`` (its ``prompts`` stage writes it); with
``--train-on train`` (the default) the held-out sources are never trained on. Needs torch
and transformers (the ``hf`` extra). An epoch over the build's 1,600 training requests takes
about 30 seconds on 2 cores (15 with ``--top-layers 2``). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aligntime.errors import AligntimeError, InputError
from aligntime.evaluation.metrics import auc
from aligntime.training.finetune import Settings, cross_fit, finetune
from aligntime.training.trainer import gate_thresholds

ROOT = Path(__file__).resolve().parent.parent
UNSEEN = ROOT / "tests" / "data" / "unseen_requests.jsonl"
PROMPTS = ROOT / "build" / "safety-scorer" / "prompts.jsonl"

Rows = list[dict[str, Any]]


def read_jsonl(path: Path, fields: Sequence[str]) -> Rows:
    """The rows of a JSONL file; a clear error naming the line if one is not an object with
    ``fields``."""
    rows: Rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or any(f not in row for f in fields):
            raise InputError(f"{path}:{number}: expected an object with {', '.join(fields)}")
        rows.append(row)
    return rows


def batches_of_unseen(rows: Rows) -> dict[str, Rows]:
    """The unseen requests by batch (the letter their id starts with)."""
    out: dict[str, Rows] = {}
    for row in rows:
        out.setdefault(str(row["id"]).split("-")[0], []).append(row)
    return out


def auc_of(p_harm: Callable[[list[str]], np.ndarray], rows: Rows, label: str) -> float | None:
    """AUC of ``p_harm`` on ``rows`` whose ``label`` field is 1/True (harmful) or 0/False;
    soft labels (0.5) are left out, as in the build's metrics."""
    hard = [r for r in rows if float(r[label]) in (0.0, 1.0)]
    if not hard:
        return None
    p = p_harm([str(r["prompt"]) for r in hard])
    y = np.array([float(r[label]) == 1.0 for r in hard])
    if y.all() or not y.any():
        return None
    return round(auc(p[y].tolist(), p[~y].tolist()), 4)


def report(
    p_harm: Callable[[list[str]], np.ndarray], heldout: Rows, unseen: Rows
) -> dict[str, Any]:
    """AUC on the held-out sources and on each unseen batch."""
    out: dict[str, Any] = {"heldout_sources": auc_of(p_harm, heldout, "label")}
    for name, rows in sorted(batches_of_unseen(unseen).items()):
        out[f"unseen_{name}"] = auc_of(p_harm, rows, "harmful")
    return out


def flag_rates(
    p_harm: Callable[[list[str]], np.ndarray], rows: Rows, label: str, refuse: float, steer: float
) -> dict[str, float | None]:
    """Shares of harmful and of benign ``rows`` at or above the refuse and steer thresholds."""
    out: dict[str, float | None] = {}
    for side, wanted in (("harmful", 1.0), ("benign", 0.0)):
        texts = [str(r["prompt"]) for r in rows if float(r[label]) == wanted]
        p = p_harm(texts) if texts else np.zeros(0)
        for name, threshold in (("refuse", refuse), ("steer", steer)):
            out[f"{side}_at_{name}"] = round(float((p >= threshold).mean()), 4) if texts else None
    return out


def operating_points(
    p_harm: Callable[[list[str]], np.ndarray],
    heldout: Rows,
    unseen: Rows,
    refuse: float,
    steer: float,
) -> dict[str, Any]:
    """:func:`flag_rates` on the held-out sources and on each unseen batch."""
    out: dict[str, Any] = {"refuse": round(refuse, 4), "steer": round(steer, 4)}
    out["heldout_sources"] = flag_rates(p_harm, heldout, "label", refuse, steer)
    for name, rows in sorted(batches_of_unseen(unseen).items()):
        out[f"unseen_{name}"] = flag_rates(p_harm, rows, "harmful", refuse, steer)
    return out


def examples(rows: Rows) -> list[tuple[str, float]]:
    """The build's prompt rows as (text, label) for :func:`finetune`."""
    return [(str(r["prompt"]), float(r["label"])) for r in rows]


def out_of_fold_thresholds(
    rows: Rows, base_name: str, folder: Path, settings: Settings, folds: int
) -> tuple[float, float]:
    """Refuse and steer thresholds by the build's rule (:func:`gate_thresholds`), from the
    out-of-fold P(harmful) of ``rows``' benign requests (``folds`` fine-tunes, each scoring
    the fold it left out as the shipped head would: :func:`cross_fit`)."""

    def show(done: int, total: int) -> None:
        print(f"fold {done}/{total} done", file=sys.stderr)

    p = cross_fit(examples(rows), base_name, folder, settings, folds, show)
    benign = [float(x) for x, r in zip(p, rows, strict=True) if float(r["label"]) == 0.0]
    thresholds = gate_thresholds(benign)
    return thresholds["refuse"], thresholds["steer"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=Path, default=PROMPTS, help="the build's prompts.jsonl")
    parser.add_argument("--unseen", type=Path, default=UNSEEN)
    parser.add_argument("--encoder", default="all-minilm-l6-v2", help="catalogue name or folder")
    parser.add_argument("--baseline", help="a trained scorer folder (or harm-minilm) to compare")
    parser.add_argument("--train-on", choices=("train", "all"), default="train")
    parser.add_argument("--epochs", type=int, default=Settings.epochs)
    parser.add_argument("--learning-rate", type=float, default=Settings.learning_rate)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    parser.add_argument(
        "--top-layers", type=int, default=0, help="train only the top K layers (0: all)"
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        help="also choose thresholds from K out-of-fold fine-tunes and report the shares "
        "flagged at them (K more fine-tunes; 0: AUC only)",
    )
    args = parser.parse_args(argv)
    if not args.prompts.is_file():
        print(
            f"error: no {args.prompts}; run "
            "`scripts/build_safety_scorer.py --stage prompts` first, or pass --prompts",
            file=sys.stderr,
        )
        return 2

    try:
        result = run(args)
    except AligntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The figures :func:`main` prints."""
    from aligntime.models import store

    rows = read_jsonl(args.prompts, ("prompt", "label", "split"))
    unseen = read_jsonl(args.unseen, ("id", "prompt", "harmful"))
    splits = ("train", "heldout") if args.train_on == "all" else ("train",)
    train = [r for r in rows if r["split"] in splits]
    heldout = [r for r in rows if r["split"] == "heldout"]
    encoder = store.resolve(args.encoder)
    # The baseline is loaded before the minutes of fine-tuning, so a wrong folder fails first.
    baseline = load_baseline(args.baseline) if args.baseline else None

    def show(epoch: int, loss: float, seconds: float) -> None:
        print(f"epoch {epoch}/{args.epochs}: loss {loss:.4f}, {seconds:.0f}s", file=sys.stderr)

    settings = Settings(
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        seed=args.seed,
        top_layers=args.top_layers,
    )
    started = time.perf_counter()
    model = finetune(examples(train), encoder, settings, show)
    result: dict[str, Any] = {
        "encoder": args.encoder,
        "trained_on": args.train_on,
        "requests": len(train),
        "epochs": args.epochs,
        "seed": args.seed,
        "top_layers": args.top_layers,
        "trained_weights": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.perf_counter() - started, 1),
        "finetuned": report(model.p_harm, heldout, unseen),
    }
    if baseline is not None:
        frozen, harm = baseline
        result["baseline"] = {"folder": args.baseline, **report(frozen, heldout, unseen)}
        if args.folds:
            result["baseline"]["at_thresholds"] = operating_points(
                frozen, heldout, unseen, float(harm["threshold"]), float(harm["steer"])
            )
    if args.folds:
        refuse, steer = out_of_fold_thresholds(train, args.encoder, encoder, settings, args.folds)
        result["finetuned"]["at_thresholds"] = operating_points(
            model.p_harm, heldout, unseen, refuse, steer
        )
    return result


def load_baseline(folder: str) -> tuple[Callable[[list[str]], np.ndarray], dict[str, Any]]:
    """A trained scorer folder's P(harmful) of texts (each a lone user turn), and its harm
    head's config (thresholds)."""
    from aligntime.scorers.trained import TrainedOptions, TrainedScorer
    from aligntime.training.artifact import load_folder
    from aligntime.types import Message

    scorer = TrainedScorer(TrainedOptions(head="harm", model=folder))
    scorer.load()

    def p_harm(texts: list[str]) -> np.ndarray:
        return np.array([scorer.harm_of([Message("user", t)]) for t in texts])

    return p_harm, dict(load_folder(scorer.folder).config["harm"])


if __name__ == "__main__":
    sys.exit(main())
