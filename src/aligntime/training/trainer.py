"""Fit the heads on a dataset, measure them on a held-out split, and describe the result.

The split is by group: every pair and labelled request of one group lands on the
same side, so a held-out figure is never on a request the heads saw. Groups are
requests (``split="prompt"``) or whole data sources (``split="source"``: the
figure is then on sources never trained on).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from aligntime.errors import InputError
from aligntime.evaluation.metrics import auc
from aligntime.training.artifact import TrainedModel
from aligntime.training.data import Dataset, HarmExample, PreferencePair
from aligntime.training.features import FEATURES, CachedEmbedder, Embedder, reward_features
from aligntime.training.heads import HarmHead, RewardHead, TrainSettings
from aligntime.training.tuned_head import TunedHarmHead

StageProgress = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)``; stages are embed, harm and reward."""


@dataclass
class TrainOptions:
    """Everything a training run is told besides its data."""

    heldout: float = 0.2
    """Share of groups held out for measurement (0 keeps everything for training)."""
    split: Literal["prompt", "source"] = "prompt"
    heldout_groups: tuple[str, ...] = ()
    """Groups to hold out by name (sources, with split="source"); overrides ``heldout``."""
    seed: int = 0
    hidden: int = 0
    """Hidden units of the reward head (0: linear)."""
    features: tuple[str, ...] = FEATURES
    reward: TrainSettings = field(default_factory=lambda: TrainSettings(steps=500, l2=1e-3))
    harm: TrainSettings = field(default_factory=lambda: TrainSettings(steps=500, l2=1e-3))
    harm_threshold: float = 0.5
    ngrams: int = 0
    """Hashed word n-gram columns the harm head reads beside the embedding (0: none). The
    embedding keeps a request's topic; the words that carry its intent survive here."""
    anchor: float = 0.0
    """Weight of the anchoring term of the reward head (see ``RewardHead.fit``): 0 trains
    differences only; above 0, sigmoid(reward) reads as P(acceptable answer)."""
    balance_kinds: bool = True
    """Weight pairs so that every kind of bad answer (``kind``) counts the same in the loss."""
    reward_harm: Literal["labels", "estimates"] = "estimates"
    """The harm the reward head trains with: the harm head's cross-fitted estimate (as
    imperfect as at run time, which held out better on the shipped scorer's data), or a
    pair's own label where the data gives one."""
    cross_fit: int = 5
    """Folds for the harm estimates the reward head trains on: each training request's
    harm comes from a harm head fitted without it, so the reward head learns from
    estimates as imperfect as those it will see on new requests (0 or 1: no cross-fit)."""
    encoder: dict[str, Any] = field(default_factory=dict)
    """``model``, ``tokenizer``, ``max_length`` of the encoder, recorded in the config."""


@dataclass
class TrainResult:
    """The trained heads and what was measured."""

    model: TrainedModel
    metrics: dict[str, Any]
    heldout_groups: list[str]


def group_of(item: PreferencePair | HarmExample, split: str) -> str:
    return item.source if split == "source" else item.request


def choose_heldout(groups: Sequence[str], options: TrainOptions) -> set[str]:
    """The held-out groups: the named ones, or a seeded random share."""
    distinct = sorted(set(groups))
    if options.heldout_groups:
        unknown = sorted(set(options.heldout_groups) - set(distinct))
        if unknown:
            raise InputError(
                f"held-out group(s) {', '.join(map(repr, unknown))} are not in the data",
                hint="the data's sources: " + ", ".join(distinct[:20]),
            )
        return set(options.heldout_groups)
    if options.heldout <= 0:
        return set()
    if len(distinct) < 2:
        raise InputError(
            f"a held-out split by {options.split} needs at least two groups; found {len(distinct)}",
            hint="add data, split by prompt, or pass --heldout 0",
        )
    count = min(len(distinct) - 1, max(1, round(options.heldout * len(distinct))))
    return set(random.Random(options.seed).sample(distinct, count))


def train(
    data: Dataset,
    encoder: Embedder,
    options: TrainOptions,
    progress: StageProgress | None = None,
) -> TrainResult:
    """Embed, fit the harm head and the reward head, and measure both on the held-out split."""
    pairs = data.pairs
    requests = data.harm_examples()
    if not pairs and not requests and not data.advice:
        raise InputError("no training data: no pairs and no labelled requests")
    held = choose_heldout(
        [group_of(p, options.split) for p in pairs]
        + [group_of(r, options.split) for r in [*requests, *data.advice]],
        options,
    )
    cache = CachedEmbedder(encoder)
    _embed_all(cache, pairs, [*requests, *data.advice], progress)

    metrics: dict[str, Any] = {"split": options.split, "heldout_groups": len(held)}
    harm = _fit_harm(requests, held, cache, options, progress, metrics)
    blocks = [b for b in options.features if harm is not None or b != "hv"]
    estimates = cross_fit_harm(requests, held, cache, options) if harm is not None else {}
    if harm is not None:
        estimates = reward_harm_inputs(pairs, estimates, options)
    reward = _fit_reward(pairs, held, cache, harm, blocks, options, progress, metrics, estimates)
    # The advice head has the harm head's shape, fitted on its own labels.
    advice = _fit_harm(data.advice, held, cache, options, progress, metrics, key="advice")
    if harm is None and reward is None and advice is None:
        raise InputError(
            "nothing to train: the pairs are all held out and the requests lack both labels",
            hint="add data or lower --heldout",
        )
    config: dict[str, Any] = {
        "encoder": dict(options.encoder),
        "reward": {"features": blocks, "hidden": options.hidden} if reward else None,
        "harm": {"threshold": options.harm_threshold, "ngrams": options.ngrams} if harm else None,
        "metrics": metrics,
    }
    if advice is not None:
        config["advice"] = {"threshold": options.harm_threshold, "ngrams": options.ngrams}
    return TrainResult(TrainedModel(config, reward, harm, advice), metrics, sorted(held))


def _embed_all(
    cache: CachedEmbedder,
    pairs: Sequence[PreferencePair],
    requests: Sequence[HarmExample],
    progress: StageProgress | None,
) -> None:
    texts: list[str] = [r.request for r in requests]
    for p in pairs:
        texts += [p.request, p.chosen, p.rejected]
    todo = cache.missing(texts)
    step = 64
    for start in range(0, len(todo), step):
        cache.fill(todo[start : start + step])
        if progress is not None:
            progress("embed", min(start + step, len(todo)), len(todo))


def _fit_harm(
    requests: Sequence[HarmExample],
    held: set[str],
    cache: CachedEmbedder,
    options: TrainOptions,
    progress: StageProgress | None,
    metrics: dict[str, Any],
    key: str = "harm",
) -> HarmHead | None:
    """A logistic request head (``key``: harm, or advice) on the training groups."""
    train_set = [r for r in requests if group_of(r, options.split) not in held]
    test_set = [r for r in requests if group_of(r, options.split) in held]
    labels = np.array([r.label for r in train_set], np.float32)
    if not len(labels) or not (labels >= 0.5).any() or not (labels < 0.5).any():
        if key == "harm" or requests:
            metrics[key] = None  # a classifier needs both positive and negative requests
        return None
    texts = [r.request for r in train_set]
    u = cache(texts)
    head = HarmHead.init(u.shape[1], options.ngrams)
    x = head.inputs(u, texts)
    head.fit(x, labels, options.harm, _stage(progress, key))
    tests = [r.request for r in test_set]
    metrics[key] = {
        "train": harm_metrics(head(u, texts), labels, options.harm_threshold),
        "heldout": (
            harm_metrics(
                head(cache(tests), tests),
                np.array([r.label for r in test_set], np.float32),
                options.harm_threshold,
            )
            if test_set
            else None
        ),
    }
    return head


def _fit_reward(
    pairs: Sequence[PreferencePair],
    held: set[str],
    cache: CachedEmbedder,
    harm: HarmHead | TunedHarmHead | None,
    blocks: Sequence[str],
    options: TrainOptions,
    progress: StageProgress | None,
    metrics: dict[str, Any],
    estimates: dict[str, float],
) -> RewardHead | None:
    train_set = [p for p in pairs if group_of(p, options.split) not in held]
    test_set = [p for p in pairs if group_of(p, options.split) in held]
    if not train_set:
        metrics["reward"] = None
        return None
    xc, xr = pair_features(train_set, cache, harm, blocks, estimates)
    head = RewardHead.init(xc.shape[1], options.hidden, options.seed)
    weights = kind_weights(train_set) if options.balance_kinds else None
    head.fit(xc, xr, options.reward, _stage(progress, "reward"), weights, options.anchor)
    result: dict[str, Any] = {"train": reward_metrics(head, train_set, xc, xr)}
    if test_set:
        tc, tr = pair_features(test_set, cache, harm, blocks)
        result["heldout"] = reward_metrics(head, test_set, tc, tr)
    else:
        result["heldout"] = None
    metrics["reward"] = result
    return head


def refit_reward(
    result: TrainResult,
    data: Dataset,
    encoder: Embedder,
    options: TrainOptions,
    estimates: dict[str, float],
    progress: StageProgress | None = None,
) -> None:
    """Fit ``result``'s reward head again, reading ``estimates`` as its training requests'
    harm, after its harm head was replaced (by a fine-tuned one:
    :func:`aligntime.training.finetune.tune_harm_head`).

    The reward head reads the harm head's P(harmful) as a feature, so it must learn from
    the estimates of the head it will read at run time; out-of-fold ones, because at run
    time every request is one that head never saw. Its held-out metrics are measured
    anew with the new head. Nothing happens without a reward head.
    """
    if result.model.reward is None or result.model.config.get("reward") is None:
        return
    blocks = list(result.model.config["reward"]["features"])
    cache = CachedEmbedder(encoder)
    reward = _fit_reward(
        data.pairs,
        set(result.heldout_groups),
        cache,
        result.model.harm,
        blocks,
        options,
        progress,
        result.metrics,
        reward_harm_inputs(data.pairs, estimates, options),
    )
    result.model.reward = reward


def reward_harm_inputs(
    pairs: Sequence[PreferencePair], estimates: dict[str, float], options: TrainOptions
) -> dict[str, float]:
    """The harm the reward head trains with, by request: ``estimates``, overridden by a
    pair's own label where the data gives one and ``options.reward_harm`` is ``labels``."""
    if options.reward_harm != "labels":
        return estimates
    return estimates | {p.request: p.harm for p in pairs if p.harm is not None}


def pair_features(
    pairs: Sequence[PreferencePair],
    embed: Callable[[Sequence[str]], np.ndarray],
    harm: HarmHead | TunedHarmHead | None,
    blocks: Sequence[str],
    estimates: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reward-head inputs of the chosen and the rejected answer of every pair.

    A request's harm is taken from ``estimates`` where it is there, else from ``harm``.
    """
    requests = [p.request for p in pairs]
    u = embed(requests)
    # The rows just embedded serve the harm head too (the tuned head reads tokens instead).
    h = (
        harm.predict(requests, lambda _: u)
        if harm is not None
        else np.zeros(len(pairs), np.float32)
    )
    if estimates:
        h = np.array(
            [estimates.get(p.request, float(x)) for p, x in zip(pairs, h, strict=True)],
            np.float32,
        )
    chosen = reward_features(u, embed([p.chosen for p in pairs]), h, blocks)
    rejected = reward_features(u, embed([p.rejected for p in pairs]), h, blocks)
    return chosen, rejected


def kind_weights(pairs: Sequence[PreferencePair]) -> np.ndarray:
    """Per-pair weights that give every kind the same total weight."""
    counts: dict[str, int] = defaultdict(int)
    for p in pairs:
        counts[p.kind] += 1
    return np.array([1.0 / counts[p.kind] for p in pairs], np.float32)


def cross_fit_harm(
    requests: Sequence[HarmExample],
    held: set[str],
    cache: CachedEmbedder,
    options: TrainOptions,
) -> dict[str, float]:
    """Out-of-fold P(harmful) of every training request (see ``TrainOptions.cross_fit``)."""
    train_set = [r for r in requests if group_of(r, options.split) not in held]
    if options.cross_fit < 2 or len(train_set) < 2 * options.cross_fit:
        return {}
    order = list(range(len(train_set)))
    random.Random(options.seed + 1).shuffle(order)
    texts = [r.request for r in train_set]
    y = np.array([r.label for r in train_set], np.float32)
    x = HarmHead.init(0, options.ngrams).inputs(cache(texts), texts)
    out: dict[str, float] = {}
    for fold in range(options.cross_fit):
        test = np.array(order[fold :: options.cross_fit])
        keep = np.setdiff1d(np.arange(len(train_set)), test)
        if not (y[keep] >= 0.5).any() or not (y[keep] < 0.5).any():
            continue
        head = HarmHead.init(x.shape[1])
        head.fit(x[keep], y[keep], options.harm)
        for i, p in zip(test, head(x[test]), strict=True):
            out[train_set[i].request] = float(p)
    return out


REFUSE_QUANTILE = 0.98
"""The harm head's refuse threshold: this quantile of the out-of-fold P(harmful) of benign
training requests (so about 2% of requests like them are refused unanswered)."""
STEER_QUANTILE = 0.90
"""The harm head's steer threshold: this quantile of the same scores. A steered request is
still answered: it gets a stricter prompt and the refusal as one more candidate, and the
output scorers choose. A lower quantile steers more harmful requests without making their
answers safer: in the steer band the refusal rarely outscores an on-topic sample. Measured
with the 80th percentile (steer 0.41) on 27 requests whose verdict it changed from pass to
steer, the chosen answer became a refusal for 2 of 13 harmful requests and 0 of 14 benign
ones."""


def gate_thresholds(benign: Sequence[float]) -> dict[str, float]:
    """The input gate's ``refuse`` and ``steer`` thresholds from benign training requests'
    out-of-fold P(harmful): :data:`REFUSE_QUANTILE` and :data:`STEER_QUANTILE` of them,
    rounded to 2 decimals, refuse at least 0.5 and steer between 0.3 and refuse - 0.05."""
    scores = np.asarray(benign, dtype=np.float64)
    if scores.size == 0:
        raise InputError("no out-of-fold scores of benign requests to choose thresholds from")
    refuse = float(np.round(max(0.5, np.quantile(scores, REFUSE_QUANTILE)), 2))
    steer = np.quantile(scores, STEER_QUANTILE)
    return {"refuse": refuse, "steer": float(np.round(min(refuse - 0.05, max(0.3, steer)), 2))}


def reward_metrics(
    head: RewardHead, pairs: Sequence[PreferencePair], xc: np.ndarray, xr: np.ndarray
) -> dict[str, Any]:
    """Pairwise accuracy (ties count half), overall, by kind and by source."""
    diff = head(xc) - head(xr)
    credit = np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0))
    by_kind: dict[str, list[float]] = defaultdict(list)
    by_source: dict[str, list[float]] = defaultdict(list)
    for pair, c in zip(pairs, credit, strict=True):
        by_kind[pair.kind or "-"].append(float(c))
        by_source[pair.source or "-"].append(float(c))
    return {
        "pairs": len(pairs),
        "accuracy": round(float(credit.mean()), 4),
        "by_kind": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_kind.items())},
        "by_source": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_source.items())},
    }


def harm_metrics(prob: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, recall and false-positive rate at ``threshold``, and AUC (soft labels aside)."""
    hard = labels != 0.5
    p, y = prob[hard], labels[hard] >= 0.5
    flagged = p >= threshold
    pos, neg = p[y], p[~y]
    out: dict[str, Any] = {
        "requests": len(labels),
        "harmful": int(y.sum()),
        "benign": int((~y).sum()),
        "accuracy": round(float((flagged == y).mean()), 4) if len(y) else None,
        "recall": round(float((pos >= threshold).mean()), 4) if len(pos) else None,
        "false_positive_rate": round(float((neg >= threshold).mean()), 4) if len(neg) else None,
        "auc": round(auc(pos.tolist(), neg.tolist()), 4) if len(pos) and len(neg) else None,
    }
    soft = prob[~hard]
    if len(soft):
        out["careful_cases"] = len(soft)
        out["careful_flagged"] = round(float((soft >= threshold).mean()), 4)
    return out


def _stage(progress: StageProgress | None, stage: str) -> Callable[[int, int, float], None] | None:
    if progress is None:
        return None
    report = progress
    return lambda step, steps, _loss: report(stage, step, steps)
