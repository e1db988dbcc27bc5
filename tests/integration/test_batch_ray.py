"""``aligntime batch --ray`` on a real Ray cluster on loopback: a head and a worker node
from ``ray start`` (one CPU each). Every row must be in the output exactly once, also
when the worker node is killed in the middle of the run."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aligntime.batch.output import read_records
from hf_tiny import tiny_lm  # noqa: F401

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))
STORE = "--object-store-memory=80000000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray(*args: str) -> None:
    proc = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]


def start_worker(address: str) -> int:
    """Start a worker node; return its node manager port (which names its raylet)."""
    port = free_port()
    ray("start", f"--address={address}", "--num-cpus=1", f"--node-manager-port={port}", STORE)
    return port


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    # Ray's clusters use token authentication. `ray start` does not make a token (only
    # ray.init does, into ~/.ray), so on a fresh machine the head would refuse to start:
    # every process (nodes, drivers, this one) reads this one from the environment.
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "token")
    mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port = free_port()
    ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
        "--include-dashboard=false", "--disable-usage-stats", STORE)  # fmt: skip
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=180)
        mp.undo()


def rows_file(path: Path, count: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"Q {i}?"}) + "\n" for i in range(count))
    )
    return path


def batch(address: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aligntime",
            "batch",
            "--ray",
            "--ray-address",
            address,
            "--json",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )


def command_line(proc: object) -> str:
    """A process's command line; "" once it is gone or a zombie (the raylet reaps late)."""
    import psutil

    try:
        return " ".join(proc.cmdline())  # type: ignore[attr-defined]
    except psutil.Error:
        return ""


def raylet_of(node_port: int) -> object:
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if f"--node_manager_port={node_port}" in line and "raylet" in line:
            return proc
    raise AssertionError(f"no raylet with node manager port {node_port}")


FAKE = """
name: ray-fake
generator:
  {backend: fake, delay_s: 0.3, responses: ["A helpful answer here.", "the the the the the"]}
n: 2
scorers: [{name: rules, kind: rules}]
fallback: "Sorry."
"""


def test_every_row_once_after_the_worker_node_is_killed(cluster: str, tmp_path: Path) -> None:
    import psutil

    node_port = start_worker(cluster)
    policy = tmp_path / "p.yaml"
    policy.write_text(FAKE)
    rows = rows_file(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out"
    driver = batch(cluster, "-i", str(rows), "-o", str(out), "-p", str(policy),
                   "--actors", "2", "--batch-size", "2", "-c", "1")  # fmt: skip
    try:
        raylet = raylet_of(node_port)
        deadline = time.monotonic() + 120
        while not any("MapWorker" in command_line(c) for c in raylet.children()):  # type: ignore[attr-defined]
            assert driver.poll() is None, driver.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no aligner actor started on the worker node"
            time.sleep(0.2)
        time.sleep(2.0)  # the actor is now in the middle of its batches
        victims = [raylet, *raylet.children(recursive=True)]  # type: ignore[attr-defined]
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["aligned"] == 40
    assert summary["load_s"] is None  # the actors load inside the run's seconds
    ids = sorted(r["id"] for r in read_records(out))
    assert ids == sorted(f"q{i}" for i in range(40))  # every row, none twice


def test_tiny_hf_model_through_the_python_api(cluster: str, tiny_lm: Path, tmp_path: Path) -> None:  # noqa: F811
    import ray as ray_mod

    from aligntime.batch.ray_data import RayOptions, align_dataset
    from aligntime.batch.runner import BatchOptions
    from aligntime.policy.loader import load_policy

    start_worker(cluster)
    policy = tmp_path / "hf.yaml"
    policy.write_text(
        f"""
name: ray-hf
generator: {{backend: transformers, model: "{tiny_lm}", max_tokens: 8, threads: 1}}
n: 2
scorers: [{{name: rules, kind: rules}}]
fallback: "Sorry."
"""
    )
    ray_mod.init(address=cluster, log_to_driver=False)
    try:
        items = [{"id": f"h{i}", "prompt": f"Tell me about {i}."} for i in range(6)]
        aligned = align_dataset(
            ray_mod.data.from_items(items),
            load_policy(policy),
            options=BatchOptions(max_tokens=8),
            ray_options=RayOptions(actors=2, batch_size=2),
        )
        records = aligned.take_all()
    finally:
        ray_mod.shutdown()
    assert sorted(r["id"] for r in records) == [f"h{i}" for i in range(6)]
    for record in records:
        candidates = json.loads(record["candidates"])
        assert len(candidates) == 2 and all(c["tokens"] > 0 for c in candidates)


def test_two_pools_give_every_row_once_and_the_choices_of_one_pool(
    cluster: str, tmp_path: Path
) -> None:
    import ray as ray_mod

    from aligntime.batch.ray_data import RayOptions, align_dataset
    from aligntime.batch.runner import BatchOptions
    from aligntime.policy.loader import load_policy

    policy = tmp_path / "p.yaml"
    policy.write_text(FAKE.replace("delay_s: 0.3", "delay_s: 0.05").replace(
        "kind: rules}", "kind: rules, max_repetition: 0.3, gate: {min: 0.5}}"))  # fmt: skip
    pol = load_policy(policy)
    options = BatchOptions(seed=11, concurrency=2)
    # Half a CPU per actor: both pools fit on the head alone, whatever workers are left.
    one = RayOptions(actors=1, cpus_per_actor=0.5, batch_size=3)
    two = RayOptions(generator_actors=1, scorer_actors=1, cpus_per_generator=0.5,
                     cpus_per_scorer=0.5, batch_size=3)  # fmt: skip
    items = [{"id": f"s{i}", "prompt": f"Question {i}?"} for i in range(14)]
    ray_mod.init(address=cluster, log_to_driver=False)
    try:
        runs = [
            align_dataset(ray_mod.data.from_items(items), pol, options=options, ray_options=o)
            for o in (one, two)
        ]
        by_pool = [sorted(run.take_all(), key=lambda r: r["id"]) for run in runs]
    finally:
        ray_mod.shutdown()
    for records in by_pool:
        assert sorted(r["id"] for r in records) == sorted(i["id"] for i in items)  # once each
    for a, b in zip(*by_pool, strict=True):
        assert set(a) == set(b)
        assert json.loads(b["messages"]) == [
            {"role": "user", "content": f"Question {a['id'][1:]}?"}
        ]
        assert (a["text"], a["best"], a["fallback"]) == (b["text"], b["best"], b["fallback"])
        texts = [[c["text"] for c in json.loads(r["candidates"])] for r in (a, b)]
        assert texts[0] == texts[1] and len(texts[0]) == 2
    assert {r["text"] for r in by_pool[1]} == {"A helpful answer here."}
