"""The trained-scorer folder: weights, config, model card and a sha256 manifest.

Layout::

    weights.safetensors   the heads' arrays (safetensors, numpy API)
    config.json           encoder, heads, features, metrics, recommended thresholds
    README.md             the model card: data, split, accuracy
    MANIFEST.sha256       "<sha256>  <file>" for weights.safetensors and config.json

:func:`load_folder` checks every file in the manifest before it reads any of them,
so a corrupted or edited folder is a clear :class:`ConfigError`, never a scorer
that silently scores with other weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aligntime.errors import ConfigError
from aligntime.models.store import file_sha256
from aligntime.training.heads import HarmHead, RewardHead
from aligntime.training.tuned_head import TunedHarmHead

FORMAT = "aligntime-trained-scorer"
VERSION = 1
WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
CARD = "README.md"
MANIFEST = "MANIFEST.sha256"


@dataclass
class TrainedModel:
    """The heads (any may be missing) and the config that describes them.

    ``advice`` has the harm head's shape: P(the request needs a qualified professional).
    ``harm`` is a head over the frozen embedding or, where the config's harm section has a
    ``tuned`` entry, one on a fine-tuned encoder (:class:`TunedHarmHead`)."""

    config: dict[str, Any]
    reward: RewardHead | None
    harm: HarmHead | TunedHarmHead | None
    advice: HarmHead | None = None

    @property
    def encoder(self) -> dict[str, Any]:
        """``model``, ``tokenizer``, ``max_length`` and ``dim`` of the frozen encoder."""
        return dict(self.config["encoder"])

    @property
    def features(self) -> list[str]:
        """Blocks of the reward head's input, in order (see ``training.features``)."""
        return list(self.config.get("reward", {}).get("features", []))


def save_folder(model: TrainedModel, folder: Path, card: str) -> None:
    """Write the folder (created if needed); the manifest is written last."""
    try:
        from safetensors.numpy import save_file
    except ImportError as exc:
        from aligntime.extras import missing

        raise missing("saving a trained scorer", exc, extra="embedded") from exc

    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    if model.reward is not None:
        tensors |= {f"reward.{k}": np.ascontiguousarray(v) for k, v in model.reward.params.items()}
    if model.harm is not None:
        tensors |= {f"harm.{k}": np.ascontiguousarray(v) for k, v in model.harm.params.items()}
    if model.advice is not None:
        tensors |= {f"advice.{k}": np.ascontiguousarray(v) for k, v in model.advice.params.items()}
    if not tensors:
        raise ConfigError("nothing to save: neither head was trained")
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": FORMAT})
    config = {"format": FORMAT, "version": VERSION, **model.config}
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / CARD).write_text(card, encoding="utf-8")
    lines = [f"{file_sha256(folder / name)}  {name}" for name in (WEIGHTS, CONFIG)]
    (folder / MANIFEST).write_text("\n".join(lines) + "\n", encoding="utf-8")


def verify_folder(folder: Path) -> None:
    """Raise :class:`ConfigError` unless every file listed in the manifest matches it."""
    manifest = folder / MANIFEST
    if not folder.is_dir():
        raise ConfigError(
            f"trained scorer folder {str(folder)!r} does not exist",
            hint="give the folder that `aligntime train-scorer --out` wrote",
        )
    if not manifest.is_file():
        raise ConfigError(
            f"{folder} has no {MANIFEST}",
            hint="not a folder written by `aligntime train-scorer`; retrain or restore it",
        )
    listed: dict[str, str] = {}
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or "/" in name or name.startswith("."):
            raise ConfigError(f"{manifest}:{number}: expected '<sha256>  <file name>'")
        listed[name] = digest
    for required in (WEIGHTS, CONFIG):
        if required not in listed:
            raise ConfigError(f"{manifest} does not list {required}")
    for name, digest in listed.items():
        path = folder / name
        if not path.is_file():
            raise ConfigError(f"{path} is missing", hint="restore the folder or retrain")
        if file_sha256(path) != digest:
            raise ConfigError(
                f"{path} does not match its sha256 in {MANIFEST}",
                hint="the file was changed or corrupted; restore the folder or retrain",
            )


def load_folder(folder: Path) -> TrainedModel:
    """Verify and read a trained-scorer folder."""
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError as exc:
        from aligntime.extras import missing

        raise missing("a trained scorer", exc, extra="embedded") from exc

    verify_folder(folder)
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / WEIGHTS))
    except (ValueError, OSError, SafetensorError) as exc:
        raise ConfigError(f"cannot read the trained scorer in {folder}: {exc}") from exc
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise ConfigError(
            f"{folder / CONFIG} is not a version-{VERSION} {FORMAT} config",
            hint="retrain it with this version of aligntime",
        )
    reward = None
    harm: HarmHead | TunedHarmHead | None = None
    if config.get("reward"):
        params = {k[7:]: v for k, v in tensors.items() if k.startswith("reward.")}
        reward = RewardHead(params, int(config["reward"].get("hidden", 0)))
    if config.get("harm"):
        params = {k[5:]: v for k, v in tensors.items() if k.startswith("harm.")}
        tuned = config["harm"].get("tuned")
        if tuned:
            harm = TunedHarmHead(params, tuned)
        else:
            harm = HarmHead(params, int(config["harm"].get("ngrams", 0)))
    advice = None
    if config.get("advice"):
        params = {k[7:]: v for k, v in tensors.items() if k.startswith("advice.")}
        advice = HarmHead(params, int(config["advice"].get("ngrams", 0)))
    return TrainedModel(config, reward, harm, advice)
