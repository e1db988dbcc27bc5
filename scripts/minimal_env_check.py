"""The minimal environment's check (run by scripts/minimal_env.sh inside that environment).

Serves a policy on the ``openai`` backend with ``aligntime serve``, against the
stub OpenAI server of the tests, drives it with the official ``openai`` client
(plain, n > 1 and streaming), and fails if the server process ever tried to
import a heavy backend (torch, transformers, llama.cpp, scikit-learn, ...).
Also checks that a policy needing a missing extra fails with a message that
names the extra. Exits non-zero with a message on the first failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from openai_stub_server import StubServer  # noqa: E402

HEAVY = (
    "torch",
    "transformers",
    "accelerate",
    "gguf",
    "xllamacpp",
    "sklearn",
    "profanity_check",
    "onnxruntime",
    "tokenizers",
    "matplotlib",
)

# Runs `aligntime ARGS` with an import hook that reports any attempt to import a
# heavy module, and writes the heavy modules loaded at exit to $HEAVY_REPORT.
LAUNCHER = f"""
import atexit, importlib.abc, json, os, sys
HEAVY = {HEAVY!r}
attempts = []
class Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in HEAVY:
            attempts.append(name)
        return None
sys.meta_path.insert(0, Guard())
def report():
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in HEAVY)
    with open(os.environ["HEAVY_REPORT"], "w") as f:
        json.dump({{"attempts": attempts, "loaded": loaded}}, f)
atexit.register(report)
sys.argv = ["aligntime", *sys.argv[1:]]
from aligntime.cli.main import main
main()
"""

POLICY = """
name: minimal
generator:
  backend: openai
  base_url: {url}
  model: stub-model
  max_tokens: 32
  max_retries: 1
  backoff_s: 0.01
n: 3
scorers:
  - {{name: rules, kind: rules, weight: 1.0}}
strategy: {{kind: best_of_n}}
"""


def fail(message: str) -> None:
    print(f"minimal environment check FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def installed_heavy() -> list[str]:
    from importlib.util import find_spec

    return [name for name in HEAVY if find_spec(name) is not None]


def serve(policy: Path, report: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "HEAVY_REPORT": str(report), "ALIGNTIME_POLICY": str(policy)}
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "serve", "--port", "0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        found = re.search(r"aligntime serving minimal on (http://\S+)", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, found.group(1)
    proc.kill()
    fail("aligntime serve did not start:\n" + "".join(seen))
    raise AssertionError("unreachable")


def drive(url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
    ids = [m.id for m in client.models.list().data]
    if ids != ["minimal"]:
        fail(f"/v1/models lists {ids}, expected ['minimal']")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model="minimal", messages=messages)  # type: ignore[arg-type]
    text = reply.choices[0].message.content or ""
    if not text.strip() or reply.usage is None or reply.usage.completion_tokens <= 0:
        fail(f"unexpected reply: {reply}")
    stream = client.chat.completions.create(
        model="minimal",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    if not streamed.strip():
        fail("the streamed reply was empty")


def missing_extra_is_named(tmp: Path) -> None:
    model = tmp / "model.gguf"
    model.write_bytes(b"GGUF")
    policy = tmp / "local.yaml"
    policy.write_text(f"name: local\ngenerator: {{backend: llamacpp, model: {model}}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "aligntime", "run", "hi", "--policy", str(policy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 2 or "aligntime[embedded]" not in proc.stderr:
        fail(f"a missing extra was not named (exit {proc.returncode}):\n{proc.stderr}")


def main() -> None:
    heavy = installed_heavy()
    if heavy:
        fail(f"the minimal environment has heavy packages installed: {heavy}")
    stub = StubServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            policy = tmp / "minimal.yaml"
            policy.write_text(POLICY.format(url=stub.base_url))
            report = tmp / "heavy.json"
            proc, url = serve(policy, report)
            try:
                drive(url)
            finally:
                # SIGINT, not SIGTERM: uvicorn re-raises the signal after shutting down,
                # and only SIGINT ends Python through exceptions, so atexit still runs.
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
            if not stub.chat_requests():
                fail("the stub OpenAI server received no request")
            found = json.loads(report.read_text())
            if found["attempts"] or found["loaded"]:
                fail(f"the server tried to import heavy modules: {found}")
            missing_extra_is_named(tmp)
    finally:
        stub.stop()
    print(f"served and drove an openai-backend policy; {len(stub.chat_requests())} upstream calls")


if __name__ == "__main__":
    main()
