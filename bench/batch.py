"""Rows per second of ``aligntime batch`` in one process vs on a local Ray cluster.

One run, one input: a tiny randomly initialised Llama-shaped model on the
``transformers`` backend (one torch thread per process, so each row's cost is CPU
work), aligned in this process, then on a loopback Ray cluster with 1, then 2,
worker nodes of one CPU each, one aligner actor per worker. The head node offers no
CPU, so no actor lands there and "N workers" means N actors; Ray Data's reading,
cutting into blocks and writing reserve no CPU and run there. Model loading is
outside the timed part in-process; on Ray the timed part is the whole job (actors
start and load their model inside it, a few seconds), so a larger ``--rows`` makes
the comparison fairer. ``*_rows_per_s`` is the command's own summary (rows aligned
per second); ``job_ray_1_vs_one_process`` sets the in-process loading plus rows
(its summary's ``load_s + seconds``) against Ray's seconds, like for like;
``wall_*`` ratios compare whole commands (interpreter, Ray connection, loading and
rows) as a user waits for them. ``*_load_1min`` is the load average before each
part, since the parts run one after another. Prints one JSON object; ``cpus`` is
how many cores this machine has, since 2 workers cannot beat 1 by more than the
cores left beside Ray's own processes.

``--fake-delay S`` swaps the model for the fake backend waiting S seconds a call:
rows bound by latency (as against a remote engine), not by this machine's cores.

``--rounds R`` runs the three parts R times in turn and reports each ratio's median
over the rounds (and each round's ratio): this machine's speed drifts by more than
the differences measured, so ratios are taken between parts minutes apart.

    python bench/batch.py [--rows 48] [--max-tokens 48] [--rounds 1] [--fake-delay S]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_cmd(*args: str) -> None:
    proc = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"ray {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def policy_text(model: Path, max_tokens: int) -> str:
    return f"""
name: bench-batch
generator: {{backend: transformers, model: "{model}", max_tokens: {max_tokens}, threads: 1,
            ignore_eos: true, temperature: 1.0}}
n: 2
scorers:
  - {{name: rules, kind: rules}}
fallback: "Sorry."
"""


def fake_policy_text(delay_s: float) -> str:
    """A latency-bound row: the fake backend waits ``delay_s`` per call (as a remote
    engine would) and uses almost no CPU, so workers matter even on a busy machine."""
    return f"""
name: bench-batch-fake
generator: {{backend: fake, delay_s: {delay_s}, responses: ["A fine answer to that."]}}
n: 2
scorers:
  - {{name: rules, kind: rules}}
fallback: "Sorry."
"""


def run_cli(args: list[str]) -> dict[str, Any]:
    """The command's summary, plus ``wall_s``: the whole command (start-up and model
    loading included, on both sides) as a user waits for it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "aligntime", "batch", *args, "--json"],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    summary = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {**summary, "wall_s": round(time.perf_counter() - started, 3)}


PARTS = ("one_process", "ray_1_workers", "ray_2_workers")


def one_round(work: Path, common: list[str], index: int) -> dict[str, dict[str, Any]]:
    """One in-process run, then a fresh loopback cluster with 1, then 2, worker nodes.

    Each part also records the load average before it, since a machine that other
    work fills meanwhile skews the ratios (read them with it).
    """
    parts: dict[str, dict[str, Any]] = {}
    load = round(os.getloadavg()[0], 2)
    parts["one_process"] = {**run_cli([*common, "-o", str(work / f"one{index}.jsonl")]),
                            "load_1min": load}  # fmt: skip
    port = free_port()
    ray_cmd("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=0",
            "--include-dashboard=false", "--object-store-memory=100000000")  # fmt: skip
    try:
        for workers in (1, 2):
            ray_cmd("start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                    "--object-store-memory=100000000")  # fmt: skip
            time.sleep(2)
            out = work / f"ray{workers}_{index}"
            load = round(os.getloadavg()[0], 2)
            result = run_cli([*common, "-o", str(out), "--ray", "--ray-address",
                              f"127.0.0.1:{port}", "--actors", str(workers),
                              "--batch-size", "4"])  # fmt: skip
            parts[f"ray_{workers}_workers"] = {**result, "load_1min": load}
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
    return parts


def round_ratios(parts: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The targets' ratios within one round."""
    one, ray1, ray2 = (parts[k] for k in PARTS)
    # Like for like: a Ray run's seconds include its actors starting and loading their
    # models, so the in-process run's loading is added to its seconds for ``job_*``.
    job_one = one["seconds"] + (one["load_s"] or 0.0)
    return {
        "ray_1_vs_one_process": round(ray1["rows_per_s"] / one["rows_per_s"], 3),
        "ray_2_vs_1_workers": round(ray2["rows_per_s"] / ray1["rows_per_s"], 3),
        "job_ray_1_vs_one_process": round(job_one / ray1["seconds"], 3),
        # whole commands (rows are equal, so a ratio of times)
        "wall_ray_1_vs_one_process": round(one["wall_s"] / ray1["wall_s"], 3),
        "wall_ray_2_vs_1_workers": round(ray1["wall_s"] / ray2["wall_s"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the three parts in turn; ratios are taken within a round, then the median",
    )
    parser.add_argument(
        "--fake-delay",
        type=float,
        default=None,
        help="seconds per call on the fake backend instead of the tiny model (latency-bound)",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    # Ray's clusters use token authentication; every process here reads the head's token.
    os.environ["RAY_AUTH_MODE"] = "token"
    from hf_tiny import build_causal_lm

    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    policy = work / "policy.yaml"
    if args.fake_delay is None:
        policy.write_text(policy_text(build_causal_lm(work / "lm"), args.max_tokens))
    else:
        policy.write_text(fake_policy_text(args.fake_delay))
    rows = work / "in.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"id": i, "prompt": f"Question number {i}?"}) + "\n"
            for i in range(args.rows)
        )
    )
    common = ["-i", str(rows), "-p", str(policy), "-c", "1"]
    figures: dict[str, object] = {
        "rows": args.rows,
        "max_tokens": args.max_tokens,
        "backend": "transformers" if args.fake_delay is None else f"fake {args.fake_delay}s/call",
        "cpus": os.cpu_count(),
    }
    figures["rounds"] = args.rounds
    try:
        rounds = [one_round(work, common, r) for r in range(args.rounds)]
    finally:  # the tiny model, the input and every part's output
        shutil.rmtree(work, ignore_errors=True)
    for part in PARTS:
        for key in ("rows_per_s", "seconds", "wall_s", "load_s", "load_1min"):
            values = [rnd[part][key] for rnd in rounds]
            figures[f"{part}_{key}"] = values[0] if len(values) == 1 else values
    # Ratios within each round (its parts ran minutes apart, not hours), then their
    # median: this machine's speed drifts by more than the effects measured.
    ratios = [round_ratios(rnd) for rnd in rounds]
    for key in ratios[0]:
        values = [r[key] for r in ratios]
        figures[key] = round(statistics.median(values), 3)
        if len(values) > 1:
            figures[f"{key}_by_round"] = values
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
