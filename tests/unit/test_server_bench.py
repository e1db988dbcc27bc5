"""bench/server.py's old-versus-new mode: turns pooled per level, ratios, the old source."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_server", ROOT / "bench" / "server.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _turn(
    rps: float, seconds: float, latencies: list[float], cpu_s: float = 1.0
) -> dict[str, object]:
    return {
        "clients": 2,
        "requests": len(latencies),
        "errors": 0,
        "seconds": seconds,
        "throughput_rps": rps,
        "client_latency_ms": {"p50": latencies[len(latencies) // 2]},
        "_client_latency_ms": latencies,
        "_cpu_s": cpu_s,
    }


def test_turns_of_a_level_are_pooled_and_compared() -> None:
    bench = _bench()
    old = bench.merge([_turn(1.0, 4.0, [100.0, 300.0], 6.0), _turn(0.5, 4.0, [500.0, 700.0], 10.0)])
    assert old["requests"] == 4 and old["seconds"] == 8.0
    assert old["throughput_rps"] == 0.5  # 4 answered in 8 s, not the mean of the turns' rates
    assert old["client_latency_ms"]["p50"] == 500.0
    assert old["cpu_s_per_request"] == 4.0  # 16 CPU seconds over 4 answered requests
    new = bench.merge([_turn(2.0, 2.0, [50.0, 150.0]), _turn(2.0, 2.0, [250.0, 350.0])])
    ratio = bench.ratios({"2": new}, {"2": old, "audit": {}})
    assert ratio == {"2": {"throughput": 2.0, "p50_latency": 0.5, "cpu_per_request": 0.125}}


def test_the_cpu_clock_counts_this_process_and_not_a_missing_one() -> None:
    bench = _bench()
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc on this system")
    first = bench.process_cpu_s(os.getpid())
    sum(i * i for i in range(2_000_000))  # some CPU work
    assert first is not None and bench.process_cpu_s(os.getpid()) > first
    assert bench.process_cpu_s(2**22 + 12345) is None  # above Linux's pid limit


def test_the_old_side_is_the_package_source_at_a_revision(tmp_path: Path) -> None:
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    source = _bench().baseline_source("HEAD", tmp_path)
    assert (source / "aligntime" / "__init__.py").is_file()


FAKE_DEFAULT = """
name: default
generator: {backend: fake, responses: ["Boil the egg for seven minutes, then cool it."]}
n: 2
scorers:
  - {name: rules, kind: rules}
"""


@pytest.mark.slow
def test_old_and_new_servers_run_in_alternating_turns(tmp_path: Path) -> None:
    policy = tmp_path / "default.yaml"
    policy.write_text(FAKE_DEFAULT)
    levels = ["--default-levels", "1:2,2:4", "--rounds", "2"]
    report = _bench().main(
        ["--only", "default", "--policy", str(policy), "--baseline", "HEAD", *levels]
    )
    for side in ("default", "default_baseline"):
        assert report[side]["2"]["requests"] == 8  # two turns of four
        assert report[side]["2"]["errors"] == 0
        assert len(report[side]["2"]["turns"]) == 2
        assert report[side]["audit"]["lost"] == 0
    assert set(report["default_new_over_old"]) == {"1", "2"}
    assert not any(key.startswith("_") for key in report["default"]["2"])
    if Path("/proc/self/stat").exists():
        assert report["default"]["2"]["cpu_s_per_request"] > 0


def test_a_prompt_set_gives_every_run_the_same_varied_traffic() -> None:
    import json

    bench = _bench()
    prompts = [f"prompt {k}" for k in range(50)]
    make = bench.body_for("default", prompts, best_of=2)
    again = bench.body_for("default", list(prompts), best_of=2)
    texts = [json.loads(make(i, w))["messages"][0]["content"] for w in range(8) for i in range(6)]
    assert texts == [
        json.loads(again(i, w))["messages"][0]["content"] for w in range(8) for i in range(6)
    ]
    assert set(texts) <= set(prompts) and len(set(texts)) > 24
    assert json.loads(make(0, 0))["best_of"] == 2
    egg = json.loads(bench.body_for("default")(3, 1))["messages"][0]["content"]
    assert egg == "How do I boil an egg? (client 1, request 3)"
