"""The two small heads, in numpy: a Bradley-Terry reward head and a logistic harm head.

Both are fitted full-batch with Adam on frozen features, which takes seconds on a
CPU for thousands of examples. Weights are plain arrays so that they save to
safetensors and load without torch.

- :class:`RewardHead` rates (request, answer) features; trained so that
  ``sigmoid(r(chosen) - r(rejected))`` is the probability the chosen answer is
  preferred (Bradley-Terry), with an optional hidden layer.
- :class:`HarmHead` maps a request's embedding (and, optionally, its hashed word
  n-grams) to P(harmful); soft labels (0.5 for a careful-answer case) are allowed,
  classes are weighted to balance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from aligntime.training.features import hashed_ngrams

Progress = Callable[[int, int, float], None]
"""Called as ``progress(step, steps, loss)`` while a head trains."""


def sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free form
    return out


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = -np.logaddexp(0.0, -x)
    return out


@dataclass
class TrainSettings:
    """How a head is fitted."""

    steps: int = 400
    """Full-batch Adam steps."""
    learning_rate: float = 0.01
    l2: float = 1e-3
    """Weight decay on the weights (not the biases), scaled by the number of features."""
    seed: int = 0


class _Adam:
    def __init__(self, params: dict[str, np.ndarray], lr: float) -> None:
        self.lr = lr
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        for k, g in grads.items():
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            m_hat = self.m[k] / (1 - b1**self.t)
            v_hat = self.v[k] / (1 - b2**self.t)
            params[k] -= self.lr * m_hat / (np.sqrt(v_hat) + eps)


@dataclass
class RewardHead:
    """r(x) = w2 . relu(W1 x + b1) + b2 (``hidden`` > 0) or w . x + b (``hidden`` = 0)."""

    params: dict[str, np.ndarray] = field(default_factory=dict)
    hidden: int = 0

    @classmethod
    def init(cls, features: int, hidden: int, seed: int) -> RewardHead:
        rng = np.random.default_rng(seed)
        if hidden <= 0:
            params = {"w": np.zeros(features, np.float32), "b": np.zeros(1, np.float32)}
        else:
            scale = np.sqrt(2.0 / features)
            params = {
                "w1": (rng.standard_normal((features, hidden)) * scale).astype(np.float32),
                "b1": np.zeros(hidden, np.float32),
                "w2": (rng.standard_normal(hidden) * np.sqrt(1.0 / hidden)).astype(np.float32),
                "b2": np.zeros(1, np.float32),
            }
        return cls(params, max(hidden, 0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Raw rewards, one per row of ``x``."""
        p = self.params
        if self.hidden == 0:
            out: np.ndarray = x @ p["w"] + p["b"][0]
            return out
        h = np.maximum(x @ p["w1"] + p["b1"], 0.0)
        out = h @ p["w2"] + p["b2"][0]
        return out

    def _grads(self, x: np.ndarray, upstream: np.ndarray) -> dict[str, np.ndarray]:
        """Gradient of sum(upstream * r(x)) with respect to every parameter."""
        p = self.params
        if self.hidden == 0:
            return {"w": x.T @ upstream, "b": np.array([upstream.sum()], np.float32)}
        pre = x @ p["w1"] + p["b1"]
        h = np.maximum(pre, 0.0)
        dh = np.outer(upstream, p["w2"]) * (pre > 0)
        return {
            "w1": x.T @ dh,
            "b1": dh.sum(0),
            "w2": h.T @ upstream,
            "b2": np.array([upstream.sum()], np.float32),
        }

    def fit(
        self,
        chosen: np.ndarray,
        rejected: np.ndarray,
        settings: TrainSettings,
        progress: Progress | None = None,
        weights: np.ndarray | None = None,
        anchor: float = 0.0,
    ) -> list[float]:
        """Minimise the Bradley-Terry loss -log sigmoid(r(chosen) - r(rejected)); returns losses.

        ``anchor`` > 0 adds, with that weight, -log sigmoid(r(chosen)) - log
        sigmoid(-r(rejected)): every chosen answer is compared with a null answer of
        reward 0 too, and so is every rejected one. Pairwise differences alone leave the
        reward's level free; anchored, sigmoid(r) reads as P(the answer is acceptable),
        so that a gate on it means the same for every request.
        """
        n = len(chosen)
        w = np.ones(n, np.float32) if weights is None else weights.astype(np.float32)
        w = w / w.sum()
        opt = _Adam(self.params, settings.learning_rate)
        decay = settings.l2
        losses = []
        for step in range(1, settings.steps + 1):
            r_c, r_r = self(chosen), self(rejected)
            margin = r_c - r_r
            loss = float(-(w * log_sigmoid(margin)).sum())
            dmargin = -(w * sigmoid(-margin)).astype(np.float32)
            up_c, up_r = dmargin, -dmargin
            if anchor > 0:
                loss -= anchor * float((w * (log_sigmoid(r_c) + log_sigmoid(-r_r))).sum())
                up_c = up_c - (anchor * w * sigmoid(-r_c)).astype(np.float32)
                up_r = up_r + (anchor * w * sigmoid(r_r)).astype(np.float32)
            g_c = self._grads(chosen, up_c)
            g_r = self._grads(rejected, up_r)
            grads = {k: g_c[k] + g_r[k] for k in g_c}
            for k in grads:
                if k.startswith("w"):
                    grads[k] = grads[k] + decay * self.params[k]
                    loss += 0.5 * decay * float((self.params[k] ** 2).sum())
            opt.step(self.params, grads)
            losses.append(loss)
            if progress is not None:
                progress(step, settings.steps, loss)
        return losses


@dataclass
class HarmHead:
    """P(harmful) = sigmoid(w . x + b), ``x`` a request's embedding ``u`` followed by its
    text's hashed word n-grams when ``ngrams`` > 0 (see :meth:`inputs`)."""

    params: dict[str, np.ndarray] = field(default_factory=dict)
    ngrams: int = 0
    """Hashed word n-gram columns read beside the embedding (0: the embedding alone)."""

    @classmethod
    def init(cls, features: int, ngrams: int = 0) -> HarmHead:
        size = features + max(ngrams, 0)
        return cls({"w": np.zeros(size, np.float32), "b": np.zeros(1, np.float32)}, ngrams)

    def inputs(self, u: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        """The head's input rows: ``u``, and the n-grams of ``texts`` (the texts ``u`` embeds)."""
        if self.ngrams <= 0:
            return u
        if texts is None or len(texts) != len(u):
            raise ValueError("this harm head reads word n-grams: pass the texts with u")
        return np.concatenate([u, hashed_ngrams(texts, self.ngrams)], axis=1)

    def logits(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = x @ self.params["w"] + self.params["b"][0]
        return out

    def __call__(self, u: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        """P(harmful), one per row of ``u`` (the embeddings of ``texts``)."""
        return sigmoid(self.logits(self.inputs(u, texts)))

    def predict(
        self, texts: Sequence[str], embed: Callable[[Sequence[str]], np.ndarray]
    ) -> np.ndarray:
        """P(harmful) of each text, from ``embed``'s rows (the head's frozen encoder)."""
        return self(embed(texts), texts)

    def fit(
        self,
        u: np.ndarray,
        labels: np.ndarray,
        settings: TrainSettings,
        progress: Progress | None = None,
    ) -> list[float]:
        """Minimise class-balanced cross-entropy with (soft) labels in [0, 1].

        ``u`` holds the head's input rows (:meth:`inputs`)."""
        y = labels.astype(np.float32)
        # Balance the harmful and benign mass so that neither side dominates the fit.
        pos = float(y.sum())
        neg = float((1 - y).sum())
        weight = np.where(y >= 0.5, 0.5 / max(pos, 1e-9), 0.5 / max(neg, 1e-9))
        weight = (weight / weight.sum()).astype(np.float32)
        opt = _Adam(self.params, settings.learning_rate)
        losses = []
        for step in range(1, settings.steps + 1):
            z = self.logits(u)
            loss = float(-(weight * (y * log_sigmoid(z) + (1 - y) * log_sigmoid(-z))).sum())
            dz = (weight * (sigmoid(z) - y)).astype(np.float32)
            grads = {
                "w": u.T @ dz + settings.l2 * self.params["w"],
                "b": np.array([dz.sum()], np.float32),
            }
            loss += 0.5 * settings.l2 * float((self.params["w"] ** 2).sum())
            opt.step(self.params, grads)
            losses.append(loss)
            if progress is not None:
                progress(step, settings.steps, loss)
        return losses
