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

    python bench/batch.py [--rows 48] [--max-tokens 48] [--fake-delay S]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def run_cli(args: list[str]) -> dict[str, float]:
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--fake-delay",
        type=float,
        default=None,
        help="seconds per call on the fake backend instead of the tiny model (latency-bound)",
    )
    args = parser.parse_args()
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
    # The load average before each part: the three parts run one after another, so a
    # machine that other work fills meanwhile skews the ratios (read them with it).
    figures["one_process_load_1min"] = round(os.getloadavg()[0], 2)
    one = run_cli([*common, "-o", str(work / "one.jsonl")])
    figures["one_process_rows_per_s"] = one["rows_per_s"]
    figures["one_process_seconds"] = one["seconds"]
    figures["one_process_wall_s"] = one["wall_s"]
    figures["one_process_load_s"] = one["load_s"]
    port = free_port()
    ray_cmd("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=0",
            "--include-dashboard=false", "--object-store-memory=100000000")  # fmt: skip
    try:
        for workers in (1, 2):
            ray_cmd("start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                    "--object-store-memory=100000000")  # fmt: skip
            time.sleep(2)
            out = work / f"ray{workers}"
            address = f"127.0.0.1:{port}"
            figures[f"ray_{workers}_workers_load_1min"] = round(os.getloadavg()[0], 2)
            result = run_cli([*common, "-o", str(out), "--ray", "--ray-address", address,
                              "--actors", str(workers), "--batch-size", "4"])  # fmt: skip
            figures[f"ray_{workers}_workers_rows_per_s"] = result["rows_per_s"]
            figures[f"ray_{workers}_workers_seconds"] = result["seconds"]
            figures[f"ray_{workers}_workers_wall_s"] = result["wall_s"]
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
    r1 = float(figures["ray_1_workers_rows_per_s"])  # type: ignore[arg-type]
    r2 = float(figures["ray_2_workers_rows_per_s"])  # type: ignore[arg-type]
    figures["ray_1_vs_one_process"] = round(r1 / float(one["rows_per_s"]), 3)
    figures["ray_2_vs_1_workers"] = round(r2 / r1, 3) if r1 else None
    # Like for like: a Ray run's seconds include its actors starting and loading their
    # models, so the in-process run's loading is added to its seconds for this ratio.
    job_one = float(one["seconds"]) + float(one["load_s"])
    job_ray1 = float(str(figures["ray_1_workers_seconds"]))
    figures["job_ray_1_vs_one_process"] = round(job_one / job_ray1, 3)
    # The same ratios on whole-command time (rows are equal, so a ratio of times).
    parts = ("one_process", "ray_1_workers", "ray_2_workers")
    wall = {k: float(str(figures[f"{k}_wall_s"])) for k in parts}
    figures["wall_ray_1_vs_one_process"] = round(wall["one_process"] / wall["ray_1_workers"], 3)
    figures["wall_ray_2_vs_1_workers"] = round(wall["ray_1_workers"] / wall["ray_2_workers"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
