"""Harness for the SDK end-to-end tests: the real `image-gateway` and
`fake-fal` binaries as processes on loopback, driven by the official `openai`
Python SDK.

Binaries: $IMAGE_GATEWAY_BIN and $FAKE_FAL_BIN, else
$CARGO_TARGET_DIR/debug/... (target/debug/... when unset); `fake-fal` is the
workspace's crates/fake-fal. `scripts/test-sdk` builds both and passes the paths.

Fixtures:
- `start_fake(*flags)` / `start_gateway(fake_or_None, **env)`: launch
  processes that live until the end of the test module (module-scoped
  fixtures in the test files call them; teardown is automatic).
- `Fake` speaks the fake's control API (`reset`, `faults`, `counts`,
  `calls`, `submit_bodies`, `configure`).
- `Gateway.client()` / `Gateway.async_client()` build SDK clients aimed at it.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest

REPO = Path(__file__).resolve().parents[3]

# Stand-in secrets: the fal key the gateway sends upstream and a client key.
FAL_KEY = "fal-sdk-test-key-5b2f0c"
CLIENT_KEY = "sk-sdk-test-client-key-0c9a"


def binary(env_name: str, name: str) -> Path:
    explicit = os.environ.get(env_name)
    if explicit:
        path = Path(explicit)
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
        if not target.is_absolute():
            target = REPO / target
        path = target / "debug" / name
    if not path.is_file():
        pytest.exit(
            f"{name} binary not found at {path}: run scripts/test-sdk or "
            f"`cargo build --workspace --bins` (fake-fal is crates/fake-fal), or set {env_name}",
            returncode=2,
        )
    return path


def http(method: str, url: str, body: Any = None, timeout: float = 10) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace: float = 3) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


_prompt_counter = itertools.count(1)


def unique_prompt(text: str = "a lighthouse at dusk") -> str:
    """A prompt no earlier request used, so the gateway's cache cannot answer it."""
    return f"{text} (#{next(_prompt_counter)} {time.monotonic_ns()})"


class Fake:
    """A running `fake-fal` process and its control API."""

    def __init__(self, *flags: str) -> None:
        self.flags = flags
        self.base_config = {
            "queue_ms": 0,
            "run_ms": 0,
            "record": "--no-record" not in flags,
            "full_size_images": "--small-images" not in flags,
            "noise": 0,
        }
        self.proc = subprocess.Popen(
            [str(binary("FAKE_FAL_BIN", "fake-fal")), "--listen", "127.0.0.1:0", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        first_line: list[str] = []
        ready = threading.Event()

        def drain() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if not first_line:
                    first_line.append(line)
                    ready.set()
                self.output.append(line)
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(20) or not first_line or "listening on" not in first_line[0]:
            stop_process(self.proc)
            raise RuntimeError(f"fake-fal did not start: {''.join(self.output)!r}")
        self.port = int(first_line[0].split("listening on", 1)[1].strip())
        self.url = f"http://127.0.0.1:{self.port}"

    def control(self, method: str, path: str, body: Any = None) -> Any:
        status, raw = http(method, f"{self.url}/_fake/{path}", body)
        assert 200 <= status < 300, f"fake control {path} answered {status}: {raw!r}"
        return json.loads(raw) if raw else None

    def reset(self) -> None:
        """Forget calls, jobs, counts and faults; restore the start-up config."""
        self.control("POST", "reset")
        self.control("POST", "config", self.base_config)

    def configure(self, **changes: Any) -> None:
        """Change behaviour knobs (the others keep their start-up values)."""
        self.control("POST", "config", {**self.base_config, **changes})

    def faults(self, *faults: dict) -> None:
        self.control("POST", "faults", list(faults))

    def counts(self) -> dict[str, int]:
        return self.control("GET", "counts")

    def calls(self) -> list[dict]:
        return self.control("GET", "calls")

    def submit_bodies(self) -> list[dict]:
        return [c["body"] for c in self.calls() if c["op"] in ("submit", "run")]

    def stop(self) -> None:
        stop_process(self.proc)


class Gateway:
    """A running `image-gateway` process configured by environment."""

    def __init__(self, fake: Fake | None, env: dict[str, str], log_dir: Path) -> None:
        self.fake = fake
        self.api_key = CLIENT_KEY if "IMAGE_GATEWAY__AUTH__API_KEYS" in env else "sk-anything"
        base_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("IMAGE_GATEWAY", "FAL_", "OPENAI_", "RUST_LOG"))
        }
        settings = {
            "IMAGE_GATEWAY__SERVER__WORKERS": "2",
            "IMAGE_GATEWAY__SERVER__SHUTDOWN_GRACE_SECONDS": "1",
            # Keys and ledger in memory: each gateway its own, nothing on disk.
            "IMAGE_GATEWAY__DATABASE__URL": "sqlite::memory:",
            "IMAGE_GATEWAY__FAL__POLL_INITIAL_DELAY_MS": "0",
            "IMAGE_GATEWAY__FAL__POLL_MAX_DELAY_MS": "20",
            "IMAGE_GATEWAY__FAL__RETRY_BASE_DELAY_MS": "5",
            "IMAGE_GATEWAY__FAL__RETRY_MAX_DELAY_MS": "50",
            "IMAGE_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS": "30",
        }
        if fake is not None:
            settings |= {
                "FAL_KEY": FAL_KEY,
                "IMAGE_GATEWAY__FAL__QUEUE_URL": fake.url,
                "IMAGE_GATEWAY__FAL__RUN_URL": f"{fake.url}/run",
            }
        settings |= env
        self.env = settings
        self.log_path = log_dir / f"gateway-{id(self)}.log"
        last_error = ""
        # A port picked free can be taken before the gateway binds it: retry.
        for _ in range(5):
            self.port = free_port()
            self.root = f"http://127.0.0.1:{self.port}"
            self.base_url = f"{self.root}/v1"
            full_env = base_env | settings | {"IMAGE_GATEWAY__SERVER__LISTEN": f"127.0.0.1:{self.port}"}
            with open(self.log_path, "w") as log:
                self.proc = subprocess.Popen(
                    [str(binary("IMAGE_GATEWAY_BIN", "image-gateway"))],
                    env=full_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready():
                return
            stop_process(self.proc)
            last_error = self.log()
            if "Address already in use" not in last_error:
                break
        raise RuntimeError(f"image-gateway did not become ready:\n{last_error}")

    def _wait_ready(self, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                status, body = http("GET", f"{self.root}/readyz", timeout=2)
                # Only our process can be ready here: it is still alive, so it
                # bound the port (a foreign listener would make it exit).
                if status == 200 and self.proc.poll() is None:
                    self.readyz = json.loads(body)
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kw: Any) -> openai.OpenAI:
        kw.setdefault("api_key", self.api_key)
        kw.setdefault("base_url", self.base_url)
        kw.setdefault("timeout", 30)
        kw.setdefault("max_retries", 0)
        return openai.OpenAI(**kw)

    def async_client(self, **kw: Any) -> openai.AsyncOpenAI:
        kw.setdefault("api_key", self.api_key)
        kw.setdefault("base_url", self.base_url)
        kw.setdefault("timeout", 30)
        kw.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(**kw)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def processes() -> Iterator[list]:
    """Every process started for one test module, stopped at its end."""
    started: list = []
    yield started
    for p in reversed(started):
        p.stop()


@pytest.fixture(scope="module")
def start_fake(processes: list):
    def start(*flags: str) -> Fake:
        fake = Fake(*flags)
        processes.append(fake)
        return fake

    return start


@pytest.fixture(scope="module")
def start_gateway(processes: list, tmp_path_factory: pytest.TempPathFactory):
    log_dir = Path(tempfile.mkdtemp(prefix="gw-", dir=tmp_path_factory.getbasetemp()))

    def start(fake: Fake | None, **env: str) -> Gateway:
        gw = Gateway(fake, env, log_dir)
        processes.append(gw)
        return gw

    return start


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the logs of the gateways the test used."""
    report = yield
    if report.failed and call.when == "call":
        for name, gw in getattr(item, "funcargs", {}).items():
            if isinstance(gw, Gateway):
                tail = "".join(gw.log().splitlines(keepends=True)[-40:])
                report.sections.append((f"{name} log (last 40 lines)", tail))
    return report
