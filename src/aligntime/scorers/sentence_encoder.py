"""Torch-free sentence embeddings: all-MiniLM-L6-v2 as int8 ONNX on onnxruntime.

The ONNX file (catalogue ``all-minilm-l6-v2-int8``) holds the encoder only; the
tokenizer is the model's own ``tokenizer.json`` (from the ``all-minilm-l6-v2``
folder), run by the ``tokenizers`` package. Rows are mean-pooled over real
tokens and scaled to unit length, as sentence-transformers does for this model,
so cosine similarity is a dot product. Loading takes well under a second and
needs neither torch nor transformers, which is what a request-level gate wants.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aligntime.errors import ConfigError, ModelError
from aligntime.models import store

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-minilm-l6-v2-int8"
DEFAULT_TOKENIZER = "all-minilm-l6-v2"

CACHE_ROWS = 2048
"""Embeddings kept per encoder file (about 1.5 KB each for MiniLM's 384 floats)."""


@dataclass
class Claim:
    """What :meth:`EmbeddingCache.claim` found for some texts."""

    found: dict[str, np.ndarray] = field(default_factory=dict)
    """Rows already embedded."""
    waiting: dict[str, Future[np.ndarray]] = field(default_factory=dict)
    """Texts another caller is embedding now: their rows when it is done."""
    mine: list[str] = field(default_factory=list)
    """Texts nobody has: this caller embeds them and hands the rows to :meth:`put`."""


class EmbeddingCache:
    """Recently embedded texts of one encoder file, shared by every encoder on it.

    The default policy embeds each answer twice (the relevance scorer and the
    reward head both read it with the same MiniLM file) and each request up to
    four times (the input gate's two heads, relevance, reward). Encoders of the
    same files and length share one cache. A text being embedded is marked in
    flight, so of two scorers embedding the same answers at once the second
    waits for those rows instead of computing them again; forward passes of
    different texts run at the same time, so a request's input gate (one short
    text) never queues behind another request's answers.
    """

    def __init__(self, rows: int = CACHE_ROWS) -> None:
        self.rows = rows
        self.lock = threading.Lock()
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pending: dict[str, Future[np.ndarray]] = {}

    def claim(self, texts: Sequence[str]) -> Claim:
        """Sort distinct ``texts`` into cached, in flight elsewhere, and this caller's to
        embed (marked in flight until :meth:`put` or :meth:`release`)."""
        claim = Claim()
        with self.lock:
            for text in dict.fromkeys(texts):
                row = self.get(text)
                if row is not None:
                    claim.found[text] = row
                elif text in self._pending:
                    claim.waiting[text] = self._pending[text]
                else:
                    self._pending[text] = Future()
                    claim.mine.append(text)
        return claim

    def release(self, texts: Sequence[str], error: BaseException) -> None:
        """Give up claimed ``texts`` that were not embedded: their waiters get ``error``."""
        with self.lock:
            pending = [self._pending.pop(t) for t in texts if t in self._pending]
        for future in pending:
            future.set_exception(error)

    def get(self, text: str) -> np.ndarray | None:
        """The cached row of ``text`` (marked recently used), or None; the caller holds
        :attr:`lock` when other threads may use the cache."""
        row = self._vectors.get(text)
        if row is not None:
            self._vectors.move_to_end(text)
        return row

    def put(self, text: str, row: np.ndarray) -> None:
        """Keep ``row`` for ``text``, evicting the least recently used beyond ``rows``,
        and hand it to anyone waiting for it."""
        with self.lock:
            self._vectors[text] = row
            self._vectors.move_to_end(text)
            while len(self._vectors) > self.rows:
                self._vectors.popitem(last=False)
            future = self._pending.pop(text, None)
        if future is not None:
            future.set_result(row)


_caches: dict[tuple[str, str, int], EmbeddingCache] = {}
_caches_lock = threading.Lock()


def shared_cache(onnx_file: Path, tokenizer_file: Path, max_length: int) -> EmbeddingCache:
    """The process-wide cache of an encoder file read with a tokenizer at a length."""
    key = (str(onnx_file.resolve()), str(tokenizer_file.resolve()), max_length)
    with _caches_lock:
        return _caches.setdefault(key, EmbeddingCache())


class SentenceEncoder:
    """Unit-length sentence embeddings from an ONNX BERT-style encoder.

    ``model`` is a catalogue name, an ``.onnx`` file or a folder holding
    ``model.onnx``; ``tokenizer`` a catalogue name, a ``tokenizer.json`` or a
    folder holding one. :meth:`load` is thread-safe and idempotent; :meth:`embed`
    may be called from several threads at once (onnxruntime sessions are).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        tokenizer: str = DEFAULT_TOKENIZER,
        *,
        max_length: int = 256,
        threads: int = 1,
        batch_size: int = 32,
    ) -> None:
        if max_length < 8:
            raise ConfigError(f"max_length must be at least 8, got {max_length}")
        if threads < 1 or batch_size < 1:
            raise ConfigError("threads and batch_size must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.threads = threads
        self.batch_size = batch_size
        self._session: Any = None
        self._tok: Any = None
        self._inputs: set[str] = set()
        self._lock = threading.Lock()
        self._cache: EmbeddingCache | None = None

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def load(self) -> None:
        """Resolve (pulling if needed) and open the model and tokenizer."""
        with self._lock:
            if self._session is not None:
                return
            try:
                import onnxruntime as ort
                from tokenizers import Tokenizer
            except ImportError as exc:
                from aligntime.extras import missing

                raise missing("sentence embeddings", exc, extra="embedded") from exc
            onnx_file = _find(store.resolve(self.model), "model.onnx", self.model)
            tok_file = _find(store.resolve(self.tokenizer), "tokenizer.json", self.tokenizer)
            tok = Tokenizer.from_file(str(tok_file))
            pad_id = tok.token_to_id("[PAD]")
            tok.enable_truncation(max_length=self.max_length)
            tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
            options = ort.SessionOptions()
            # One thread by default: the gate embeds one short text, and more threads
            # would contend with llama.cpp decoding on the same cores.
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            try:
                session = ort.InferenceSession(
                    str(onnx_file), sess_options=options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises its own, untyped errors
                raise ModelError(
                    f"onnxruntime could not load {onnx_file}: {exc}",
                    hint="pull it again with `aligntime models pull NAME --force`",
                ) from exc
            self._inputs = {i.name for i in session.get_inputs()}
            self._cache = shared_cache(onnx_file, tok_file, self.max_length)
            self._tok = tok
            self._session = session
            log.info("sentence encoder %s loaded from %s", self.model, onnx_file)

    @property
    def dim(self) -> int:
        """Width of an embedding row."""
        self.load()
        return int(self._session.get_outputs()[0].shape[-1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length float32 row per text, in the order given."""
        self.load()
        cache = self._cache
        assert cache is not None
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        clean = [t or " " for t in texts]
        claim = cache.claim(clean)
        rows = dict(claim.found)
        # Batches of similar length waste less work on padding.
        new = sorted(claim.mine, key=len)
        done = 0
        try:
            for start in range(0, len(new), self.batch_size):
                batch = new[start : start + self.batch_size]
                for text, row in zip(batch, self._embed_batch(batch), strict=True):
                    rows[text] = row.copy()
                    cache.put(text, rows[text])
                done += len(batch)
        except BaseException as exc:
            cache.release(new[done:], exc)
            raise
        # Texts another thread claimed first: computed there, once.
        rows.update((text, future.result()) for text, future in claim.waiting.items())
        for i, text in enumerate(clean):
            out[i] = rows[text]
        return out

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self._tok.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: np.ndarray = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return result


def _find(path: Path, filename: str, name: str) -> Path:
    """``path`` itself when it is a file, else ``path/filename``; a clear error if absent."""
    target = path / filename if path.is_dir() else path
    if not target.is_file():
        raise ModelError(
            f"{name!r} has no {filename} at {target}",
            hint=f"give a {filename} file or a folder that holds one",
        )
    return target
