"""``aligntime train-scorer``: train a small reward and harm scorer on frozen embeddings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from aligntime.cli.console import err, out, print_table


def train_scorer(
    data: list[Path] = typer.Argument(
        None,
        help="JSONL files: {prompt|messages, chosen, rejected}, the pairs.jsonl format "
        "{prompt, good, bad, kind}, or {prompt|messages, harmful} (harm head only). "
        "Optional fields: harmful, source, kind.",
    ),
    out_dir: Path = typer.Option(..., "--out", help="Folder to write the trained scorer to."),
    from_eval: list[Path] = typer.Option(
        [], "--from-eval", help="An `aligntime eval` output folder: pairs from its held-out judge."
    ),
    from_audit: Path | None = typer.Option(
        None, "--from-audit", help="An audit database (aligntime serve --audit-db)."
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="With --from-audit: JSONL {id, chosen, rejected?, harmful?}."
    ),
    heldout: float = typer.Option(0.2, "--heldout", help="Share of groups held out (0..0.9)."),
    split: str = typer.Option("prompt", "--split", help="Group by 'prompt' or 'source'."),
    heldout_source: list[str] = typer.Option(
        [], "--heldout-source", help="Hold out this source (repeatable; implies --split source)."
    ),
    hidden: int = typer.Option(0, "--hidden", help="Hidden units of the reward head (0: linear)."),
    steps: int = typer.Option(500, "--steps", help="Optimisation steps per head."),
    l2: float = typer.Option(1e-3, "--l2", help="Weight decay."),
    learning_rate: float = typer.Option(0.01, "--lr", help="Adam learning rate."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and the initialisation."),
    anchor: float = typer.Option(
        0.0, "--anchor", help="Weight that anchors rewards to 0 (sigmoid = P(acceptable))."
    ),
    margin: float = typer.Option(
        0.1, "--margin", help="--from-eval: least held-out difference that makes a pair."
    ),
    eval_lower_better: bool = typer.Option(
        False, "--eval-lower-is-better", help="--from-eval: the held-out scorer rates harm."
    ),
    harm_threshold: float = typer.Option(
        0.5, "--harm-threshold", help="Harm head threshold the metrics are reported at."
    ),
    ngrams: int = typer.Option(
        0, "--ngrams", help="Hashed word n-gram columns the harm head reads (0: none)."
    ),
    encoder: str = typer.Option(
        "all-minilm-l6-v2-int8", "--encoder", help="ONNX encoder: catalogue name or path."
    ),
    tokenizer: str = typer.Option(
        "all-minilm-l6-v2", "--tokenizer", help="Tokenizer: catalogue name or path."
    ),
    max_length: int = typer.Option(256, "--max-length", help="Tokens embedded per text."),
    threads: int = typer.Option(2, "--threads", help="onnxruntime threads while training."),
    tune_layers: int = typer.Option(
        0,
        "--tune-layers",
        help="Make the harm head MiniLM-L6 with its top K layers fine-tuned (needs torch, the "
        "hf extra; the folder runs without it; 0: the logistic head on frozen embeddings).",
    ),
    tune_epochs: int = typer.Option(6, "--tune-epochs", help="Epochs of --tune-layers."),
    tune_lr: float = typer.Option(2e-4, "--tune-lr", help="Learning rate of --tune-layers."),
    tune_folds: int = typer.Option(
        0,
        "--tune-folds",
        help="With --tune-layers: fine-tune this many more times, each leaving out one fold, "
        "and fit the reward head again on the out-of-fold P(harmful) of the tuned head (the "
        "estimate it reads at run time; 0 or 1: it keeps the logistic head's estimates).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Train a Bradley-Terry reward head and a request-harm head over MiniLM embeddings."""
    from aligntime.errors import InputError
    from aligntime.training.data import Dataset, load_jsonl
    from aligntime.training.data import from_audit as read_audit
    from aligntime.training.data import from_eval as read_eval
    from aligntime.training.heads import TrainSettings
    from aligntime.training.trainer import TrainOptions

    if split not in ("prompt", "source"):
        raise InputError(f"--split must be 'prompt' or 'source', got {split!r}")
    if not 0.0 <= heldout <= 0.9:
        raise InputError(f"--heldout must be between 0 and 0.9, got {heldout}")
    for flag, value in (
        ("--steps", steps),
        ("--max-length", max_length),
        ("--threads", threads),
        ("--tune-epochs", tune_epochs),
    ):
        if value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    if min(hidden, l2, anchor, ngrams, tune_layers, tune_folds) < 0:
        raise InputError(
            "--hidden, --l2, --anchor, --ngrams, --tune-layers and --tune-folds must not be "
            "negative"
        )
    if tune_folds and not tune_layers:
        raise InputError("--tune-folds needs --tune-layers", hint="e.g. --tune-layers 2")
    if learning_rate <= 0 or tune_lr <= 0:
        raise InputError("--lr and --tune-lr must be positive")
    if (from_audit is None) != (labels is None):
        raise InputError("--from-audit and --labels go together", hint="give both or neither")
    dataset = Dataset([], [])
    for path in data or []:
        dataset.extend(load_jsonl(path))
    for folder in from_eval:
        dataset.extend(read_eval(folder, margin=margin, higher_is_better=not eval_lower_better))
    if from_audit is not None and labels is not None:
        dataset.extend(read_audit(from_audit, labels))
    if not dataset.pairs and not dataset.requests and not dataset.advice:
        raise InputError(
            "no training data", hint="give JSONL files, --from-eval DIR or --from-audit DB"
        )
    options = TrainOptions(
        heldout=heldout,
        split="source" if heldout_source else split,  # type: ignore[arg-type]
        heldout_groups=tuple(heldout_source),
        seed=seed,
        hidden=hidden,
        anchor=anchor,
        reward=TrainSettings(steps=steps, learning_rate=learning_rate, l2=l2, seed=seed),
        harm=TrainSettings(steps=steps, learning_rate=learning_rate, l2=l2, seed=seed),
        harm_threshold=harm_threshold,
        ngrams=ngrams,
        encoder={"model": encoder, "tokenizer": tokenizer, "max_length": max_length},
    )
    sources = [str(p) for p in data or []] + [f"eval folder {f}" for f in from_eval]
    if from_audit is not None:
        sources.append(f"audit database {from_audit} with labels {labels}")
    tune = None
    if tune_layers:
        from aligntime.training.finetune import Settings

        tune = Settings(
            epochs=tune_epochs, learning_rate=tune_lr, top_layers=tune_layers, seed=seed
        )
    result = _run(
        dataset, options, threads, out_dir, sources, quiet=as_json, tune=tune, folds=tune_folds
    )
    if as_json:
        payload = {"out": str(out_dir), "metrics": result.metrics}
        out.file.write(json.dumps(payload) + "\n")
        return
    _print(result.metrics, out_dir)


def _run(
    dataset: Any,
    options: Any,
    threads: int,
    out_dir: Path,
    sources: list[str],
    *,
    quiet: bool,
    tune: Any = None,
    folds: int = 0,
) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    from aligntime.cli.console import pull_with_progress, status
    from aligntime.models.catalog import CATALOG
    from aligntime.scorers.sentence_encoder import SentenceEncoder
    from aligntime.training.artifact import save_folder
    from aligntime.training.card import model_card
    from aligntime.training.features import CachedEmbedder
    from aligntime.training.trainer import train

    enc = options.encoder
    pull_with_progress([n for n in (enc["model"], enc["tokenizer"]) if n in CATALOG], quiet=quiet)
    encoder = SentenceEncoder(
        enc["model"], enc["tokenizer"], max_length=enc["max_length"], threads=threads
    )
    with status("loading the encoder ...", quiet=quiet):
        encoder.load()
    # One cache for the first fit and the reward head's refit (--tune-folds): every text
    # is embedded once.
    embedder = CachedEmbedder(encoder)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        disable=quiet,
    ) as progress:
        tasks: dict[str, TaskID] = {}
        labels = {
            "embed": "embedding texts",
            "harm": "harm head",
            "reward": "reward head",
            "advice": "advice head",
        }

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(labels.get(stage, stage), total=total)
            progress.update(tasks[stage], completed=done, total=total)

        result = train(dataset, embedder, options, report)
    if tune is not None:
        from aligntime.training.finetune import tune_harm_head

        def tuning(line: str) -> None:
            if not quiet:
                err.print(f"fine-tuning the harm head: {line}")

        estimates = tune_harm_head(
            result,
            dataset,
            options.split,
            tune,
            folds=folds,
            threshold=options.harm_threshold,
            progress=tuning,
        )
        if estimates:
            from aligntime.training.trainer import refit_reward

            refit_reward(result, dataset, embedder, options, estimates)
    data_lines = [f"{s}" for s in sources] + [
        f"{len(dataset.pairs)} preference pairs, {len(dataset.harm_examples())} labelled requests"
        + (f", {len(dataset.advice)} requests labelled for advice" if dataset.advice else "")
    ]
    card = model_card(result, title=f"Trained scorer {out_dir.name}", data=data_lines)
    save_folder(result.model, out_dir, card)
    return result


def _print(metrics: dict[str, Any], out_dir: Path) -> None:
    from rich.table import Table

    table = Table(title=f"trained scorer: {out_dir}")
    for col in ("head", "split", "items", "accuracy", "recall", "FPR", "AUC"):
        table.add_column(col, justify="left" if col in ("head", "split") else "right")
    for head in ("reward", "harm", "advice"):
        block = metrics.get(head) or {}
        for split in ("train", "heldout"):
            row = block.get(split)
            if not row:
                continue
            table.add_row(
                head,
                split,
                str(row.get("pairs", row.get("requests", ""))),
                _num(row.get("accuracy")),
                _num(row.get("recall")),
                _num(row.get("false_positive_rate")),
                _num(row.get("auc")),
            )
    print_table(table)
    out.print(f"written to {out_dir} (use it with `kind: trained`, `model: {out_dir}`)")


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"
