"""Loading Hugging Face models: where they come from, which device and dtype.

Everything aligntime runs on ``transformers`` (the generator, reward models,
text classifiers, judges) loads through here, so that the same rules hold for
all of them:

- ``model`` is a local folder, a GGUF file, a catalogue name (``aligntime models
  list``) or a hub id. A hub id is looked up in the local Hugging Face cache
  first and only then fetched; offline, that fails with a :class:`ModelError`
  that says to pass a local folder.
- ``device: auto`` is ``cuda`` when a CUDA device is visible, else ``cpu``. A
  generator and a scorer that both say ``auto`` (or both ``cuda:0``) land on the
  same GPU and share it.
- ``dtype: auto`` is bfloat16 on CUDA (float16 where bfloat16 is unsupported) and
  float32 on the CPU, where half precision is slow or unsupported.
- Loaded models are shared per (kind, path, GGUF file, device, dtype): a judge
  naming the generator's model reuses its weights instead of loading a copy.

torch and transformers are imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

from aligntime.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
ModelKind = Literal["causal_lm", "sequence_classifier"]

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?|mps)$"
"""Accepted values of every ``device`` option."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def require_torch() -> Any:
    """Import torch and quieten transformers, or say which extra to install."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        from aligntime.extras import missing

        raise missing("Hugging Face backends", exc, extra="hf") from exc
    # The library logs, the CLI owns the terminal: no loading bars from transformers.
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    return torch


def resolve_device(device: str) -> str:
    """A concrete torch device for a ``device`` option (``auto`` picks CUDA when present)."""
    torch = require_torch()
    if not re.match(DEVICE_PATTERN, device):
        raise ConfigError(
            f"device {device!r} is not understood", hint="use auto, cpu, cuda or cuda:N"
        )
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} was asked for but no CUDA device is available",
                hint="use device: cpu (or auto) on this machine",
            )
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)",
                hint="use cuda:0 .. cuda:N-1",
            )
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """The torch dtype for a ``dtype`` option on a concrete device."""
    torch = require_torch()
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ConfigError(
            f"dtype {dtype!r} is not understood", hint="use auto, float32, bfloat16 or float16"
        )
    return table[dtype]


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: a folder (or hub id) and optionally a GGUF file in it."""

    location: str
    """A local folder, or a hub id when ``local`` is False."""
    gguf_file: str | None = None
    """File name of a GGUF model inside ``location``."""
    local: bool = True


def locate(model: str, gguf_file: str | None = None) -> ModelSource:
    """Work out where ``model`` lives, with a helpful error when it does not exist.

    A path to a ``.gguf`` file (or a catalogue name of one) becomes its folder plus
    ``gguf_file``; a folder must hold a ``config.json`` unless a GGUF file is named.
    """
    path = Path(model).expanduser()
    if not path.exists() and not _HUB_ID.match(model):
        from aligntime.models import catalog, store

        if model in catalog.CATALOG:
            path = store.resolve(model)
        else:
            raise ModelError(
                f"model folder {model!r} does not exist",
                hint="pass the path of a folder saved with save_pretrained "
                "(it holds config.json and the weights), or a catalogue name",
            )
    if not path.exists():
        return ModelSource(model, gguf_file, local=False)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(
                f"model {str(path)!r} is a file, not a model folder",
                hint="pass the folder that holds config.json, or a .gguf file",
            )
        return ModelSource(str(path.parent), path.name)
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise ModelError(
                f"GGUF file {gguf_file!r} is not in {str(path)!r}",
                hint="gguf_file is a file name inside the model folder",
            )
        return ModelSource(str(path), gguf_file)
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{str(path)!r} is not a Hugging Face model folder: it has no config.json",
            hint="save the model with save_pretrained, or name a .gguf file with gguf_file",
        )
    return ModelSource(str(path))


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of transformers
        return True
    return bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection within ``timeout`` seconds.

    ``huggingface_hub`` retries an unreachable host for half a minute before it
    gives up; a quick probe lets an offline machine fail at once.
    """
    import socket
    import urllib.parse

    try:
        from huggingface_hub import constants

        endpoint = str(constants.ENDPOINT)
    except ImportError:  # pragma: no cover - a dependency of transformers
        return False
    parsed = urllib.parse.urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def from_pretrained(loader: Any, source: ModelSource, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` with errors a user can act on.

    A hub id is tried in the local Hugging Face cache first; only if it is not
    there (and the hub is not switched off) is a download attempted.
    """
    what = f"{source.location}" + (f" ({source.gguf_file})" if source.gguf_file else "")
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    if not source.local:
        try:
            return loader.from_pretrained(source.location, local_files_only=True, **kwargs)
        except OSError:
            if _hub_offline():
                raise ModelError(
                    f"{source.location!r} is not a local folder, not in the Hugging Face "
                    "cache, and the hub is offline (HF_HUB_OFFLINE)",
                    hint="download the model elsewhere and pass its local folder as model",
                ) from None
            if not _hub_reachable():
                raise ModelError(
                    f"{source.location!r} is not a local folder, not in the Hugging Face "
                    "cache, and the Hugging Face hub is unreachable from this machine",
                    hint="pass a local folder (saved with save_pretrained) as the model",
                ) from None
    try:
        return loader.from_pretrained(source.location, **kwargs)
    except OSError as exc:
        if not source.local:
            raise ModelError(
                f"{source.location!r} is not a local folder and the Hugging Face hub is "
                f"unreachable or does not have it: {_first_line(exc)}",
                hint="pass a local folder (saved with save_pretrained) as the model",
            ) from exc
        raise ModelError(
            f"could not load {what}: {_first_line(exc)}",
            hint="the folder is incomplete or its weights are corrupt; save or copy it again",
        ) from exc
    except Exception as exc:
        # Corrupt files surface as many types (SafetensorError, ValueError, KeyError,
        # RuntimeError from torch); all of them mean the same to the user.
        raise ModelError(
            f"could not load {what}: {type(exc).__name__}: {_first_line(exc)}",
            hint="the weights or config are corrupt or of an unsupported architecture",
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class LoadedModel:
    """A model and its tokenizer on one device; ``lock`` serialises its use."""

    model: Any
    tokenizer: Any
    device: str
    dtype: Any
    source: ModelSource
    lock: threading.Lock = field(default_factory=threading.Lock)


_models: dict[tuple[str, str, str | None, str, str], LoadedModel] = {}
_models_lock = threading.Lock()


def load(
    kind: ModelKind,
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    gguf_file: str | None = None,
    threads: int | None = None,
) -> LoadedModel:
    """The shared model of ``kind`` at ``model`` on ``device`` in ``dtype``, loaded once."""
    torch = require_torch()
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    if threads is not None:
        # Process-wide in torch; the last component to load decides.
        torch.set_num_threads(threads)
    source = locate(model, gguf_file)
    concrete = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, concrete)
    key = (kind, source.location, source.gguf_file, concrete, str(torch_dtype))
    with _models_lock:
        loaded = _models.get(key)
        if loaded is not None:
            return loaded
        log.info("loading %s %s on %s as %s", kind, source.location, concrete, torch_dtype)
        tokenizer = from_pretrained(AutoTokenizer, source)
        loader = AutoModelForCausalLM if kind == "causal_lm" else AutoModelForSequenceClassification
        net = from_pretrained(loader, source, dtype=torch_dtype)
        net = net.to(concrete).eval()
        if tokenizer.pad_token_id is None:
            # Batches need a pad token; the end-of-sequence token is the usual stand-in.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if kind == "sequence_classifier" and net.config.pad_token_id is None:
            # Sequence classifiers read the last non-pad token, so they must know the pad id.
            net.config.pad_token_id = tokenizer.pad_token_id
        loaded = LoadedModel(net, tokenizer, concrete, torch_dtype, source)
        _models[key] = loaded
        return loaded


class Runtime(Protocol):
    """Where a component's model runs: the options every Hugging Face component has."""

    @property
    def device(self) -> str: ...

    @property
    def dtype(self) -> str: ...

    @property
    def threads(self) -> int | None: ...


class LazyModel:
    """A component's model, loaded by :func:`load` on first use (thread-safe).

    ``on_load`` runs once on the loaded model (to check options against its config)
    before anyone else can use it.
    """

    def __init__(
        self,
        kind: ModelKind,
        model: str,
        runtime: Runtime,
        *,
        gguf_file: str | None = None,
        on_load: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        r = runtime
        self._load = partial(
            load,
            kind,
            model,
            device=r.device,
            dtype=r.dtype,
            gguf_file=gguf_file,
            threads=r.threads,
        )
        self._on_load = on_load
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()

    def get(self) -> LoadedModel:
        """The model, loading it on the first call."""
        with self._lock:
            if self._loaded is None:
                loaded = self._load()
                if self._on_load is not None:
                    self._on_load(loaded)
                self._loaded = loaded
            return self._loaded


def clear_cache() -> None:
    """Forget every shared model (the next :func:`load` loads afresh)."""
    with _models_lock:
        _models.clear()
