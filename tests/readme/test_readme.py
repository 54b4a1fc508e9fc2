"""README.md's commands and examples, run as written (scripts/check-readme).

The quick start's commands are taken from README.md itself, never copied
here: `cargo run --release` runs exactly as the README writes it, from the
repository root, with only the listen address moved by the environment
(IMAGE_GATEWAY__SERVER__LISTEN) so it cannot collide with anything on 8080.
The other snippets (curl lines, the Python and Node examples) run with one
textual change, `localhost:8080` -> the gateway's loopback port, and what
they print is compared with what the README says they print.

If README.md or Cargo.toml is edited so a command stops working, this fails.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
sys.path.insert(0, str(REPO / "tests" / "sdk" / "python"))
from imageinfo import image_info  # noqa: E402

README_HOST = "localhost:8080"
# Long enough for the first command to compile the release binary when this
# runs on its own (in ./scripts/test the benchmark stage built it already).
START_TIMEOUT = float(os.environ.get("README_START_TIMEOUT", 45 * 60))
PYTHON = REPO / ".venv" / "bin" / "python"
NODE_MODULES = REPO / "tests" / "sdk" / "node" / "node_modules"


# --- reading the README ---------------------------------------------------------


@dataclass
class Block:
    lang: str
    code: str
    section: str  # the `## ` heading it sits under
    before: str  # prose between the previous block and this one
    after: str  # prose between this block and the next


def blocks() -> list[Block]:
    text = README.read_text()
    found: list[Block] = []
    section, prose = "", []
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("## "):
            section = line[3:].strip()
        m = re.match(r"^```(\w*)\s*$", line)
        if not m:
            prose.append(line)
            continue
        code = []
        for inner in lines:
            if inner.startswith("```"):
                break
            code.append(inner)
        if found:
            found[-1].after = "\n".join(prose)
        found.append(Block(m.group(1), "\n".join(code) + "\n", section, "\n".join(prose), ""))
        prose = []
    if found:
        found[-1].after = "\n".join(prose)
    return found


def commands(code: str) -> list[str]:
    """Shell lines without their trailing comments (continuations joined)."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def quick_start() -> list[Block]:
    qs = [b for b in blocks() if b.section == "Quick start" and b.lang == "sh"]
    assert qs, "README.md has no ```sh block under '## Quick start'"
    return qs


def the_two_commands() -> list[str]:
    return commands(quick_start()[0].code)


def output_after(block: Block) -> Block | None:
    """The block the README says `block` prints, if any."""
    all_blocks = blocks()
    i = next(i for i, b in enumerate(all_blocks) if b.code == block.code)
    if "prints" in block.after and i + 1 < len(all_blocks):
        return all_blocks[i + 1]
    return None


def expected_prints(code: str, comment: str) -> list[str]:
    return re.findall(rf"{re.escape(comment)} prints: (.+?)\s*$", code, flags=re.M)


# --- processes ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without gateway, fal or OpenAI settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IMAGE_GATEWAY_", "FAL_", "OPENAI_"))
    }
    env.update(extra)
    return env


def get(url: str, headers: dict | None = None, timeout: float = 5) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Started:
    """A README command running in its own session (cargo and the gateway)."""

    def __init__(self, command: str, port: int, env: dict[str, str], log: Path) -> None:
        self.command, self.port, self.log_path = command, port, log
        self.root = f"http://127.0.0.1:{port}"
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                ["bash", "-c", command],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"`{command}` exited with {self.proc.returncode} before /healthz answered:\n"
                    + self.log()[-4000:]
                )
            try:
                if get(f"{self.root}/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() - started > START_TIMEOUT:
                self.stop()
                raise AssertionError(f"`{command}`: no /healthz in {START_TIMEOUT:.0f} s:\n{self.log()[-4000:]}")
            time.sleep(0.25)
        self.seconds_to_healthy = time.monotonic() - started
        print(f"`{command}` answered /healthz after {self.seconds_to_healthy:.1f} s")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def readyz(self) -> dict:
        status, body = get(f"{self.root}/readyz")
        assert status == 200, body
        return json.loads(body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


class FakeFal:
    """crates/fake-fal, for the README's FAL_KEY line (no call leaves the machine)."""

    def __init__(self) -> None:
        target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
        if not target.is_absolute():
            target = REPO / target
        candidates = [Path(os.environ["FAKE_FAL_BIN"])] if os.environ.get("FAKE_FAL_BIN") else []
        candidates += [target / "release" / "fake-fal", target / "debug" / "fake-fal"]
        binary = next((c for c in candidates if c.is_file()), None)
        if binary is None:
            pytest.fail(f"no fake-fal binary among {candidates}: `cargo build -p fake-fal`")
        self.proc = subprocess.Popen(
            [str(binary), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        assert "listening on" in first, first
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.url = f"http://127.0.0.1:{int(first.split('listening on', 1)[1].strip())}"

    def calls(self) -> list[dict]:
        return json.loads(get(f"{self.url}/_fake/calls")[1])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """The quick start's first command, as written, with no FAL_KEY."""
    first = the_two_commands()[0]
    port = free_port()
    gw = Started(
        first,
        port,
        clean_env(IMAGE_GATEWAY__SERVER__LISTEN=f"127.0.0.1:{port}"),
        tmp_path_factory.mktemp("offline") / "gateway.log",
    )
    yield gw
    gw.stop()


def localise(code: str, gw: Started) -> str:
    assert README_HOST in code, f"the snippet does not use {README_HOST}:\n{code}"
    return code.replace(README_HOST, f"127.0.0.1:{gw.port}")


def run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{argv} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res


def files_named_after(block: Block) -> list[str]:
    """The files the README says a snippet writes ("It writes `a.png`, ...")."""
    m = re.search(r"writes ((?:`[^`]+`(?:,\s+|\s+and\s+)?)+)", block.after)
    return re.findall(r"`([^`]+)`", m.group(1)) if m else []


# --- the tests ------------------------------------------------------------------


def test_the_quick_start_is_two_commands_the_second_what_ci_runs():
    two = the_two_commands()
    assert len(two) == 2, two
    assert two[0].startswith("cargo run"), two
    assert two[1] == "./scripts/test", two
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^exec \./scripts/test\s*$", ci, flags=re.M), ".ci/run no longer runs ./scripts/test"


def test_the_first_command_serves_the_official_python_sdk_with_no_fal_key(offline):
    ready = offline.readyz()
    assert ready["backend"] == "local" and ready["offline"] is True, ready
    client = openai.OpenAI(base_url=f"{offline.root}/v1", api_key="sk-anything", max_retries=0)

    raw = client.images.with_raw_response.generate(prompt="a first image from the README", size="1024x1024")
    img = raw.parse()

    assert raw.headers["x-image-gateway-backend"] == "local"
    [image] = img.data
    status, body = get(image.url)
    assert status == 200
    assert image_info(body) == ("png", 1024, 1024)
    log = offline.log()
    assert "OFFLINE MODE" in log and "open to anyone" in log, log[-2000:]


def test_the_default_bind_is_every_interface_and_open_as_the_readme_says(offline):
    text = README.read_text()
    assert "0.0.0.0:8080" in text and "open to anyone" in text
    # The README's own way of looking (`cargo run --release -- --check-config`).
    [check] = re.findall(r"`(cargo run --release -- --check-config)`", text)
    res = subprocess.run(["bash", "-c", check], cwd=REPO, env=clean_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert 'listen = "0.0.0.0:8080"' in res.stdout, res.stdout
    assert "api_keys = []" in res.stdout, res.stdout


def quick_start_lines_with(word: str) -> list[str]:
    return [c for b in quick_start()[1:] for c in commands(b.code) if word in c]


def test_the_loopback_variant_of_the_first_command(tmp_path):
    [line] = quick_start_lines_with("IMAGE_GATEWAY__SERVER__LISTEN=127.0.0.1:8080")
    port = free_port()
    gw = Started(line.replace("127.0.0.1:8080", f"127.0.0.1:{port}"), port, clean_env(), tmp_path / "gw.log")
    try:
        assert gw.readyz()["backend"] == "local"
    finally:
        gw.stop()


def test_the_fal_key_line_uses_fal_and_requires_the_client_key(tmp_path):
    [line] = quick_start_lines_with("FAL_KEY=")
    fake = FakeFal()
    port = free_port()
    try:
        gw = Started(
            line,
            port,
            clean_env(
                IMAGE_GATEWAY__SERVER__LISTEN=f"127.0.0.1:{port}",
                IMAGE_GATEWAY__FAL__QUEUE_URL=fake.url,
                IMAGE_GATEWAY__FAL__RUN_URL=f"{fake.url}/run",
            ),
            tmp_path / "gw.log",
        )
        try:
            assert gw.readyz()["backend"] == "fal"
            key = re.search(r"IMAGE_GATEWAY__AUTH__API_KEYS=(\S+)", line).group(1)
            fal_key = re.search(r"FAL_KEY=(\S+)", line).group(1)
            anonymous = openai.OpenAI(base_url=f"{gw.root}/v1", api_key="sk-wrong", max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                anonymous.images.generate(prompt="a lighthouse at dusk")
            client = openai.OpenAI(base_url=f"{gw.root}/v1", api_key=key, max_retries=0)
            raw = client.images.with_raw_response.generate(
                prompt="a lighthouse at dusk", size="1792x1024", response_format="b64_json"
            )
            assert raw.headers["x-image-gateway-backend"] == "fal"
            [image] = raw.parse().data
            assert image_info(base64.b64decode(image.b64_json))[0] == "png"
            assert any(c.get("authorization") == f"Key {fal_key}" for c in fake.calls())
        finally:
            gw.stop()
    finally:
        fake.stop()


def python_blocks() -> list[Block]:
    found = [b for b in blocks() if b.lang == "python"]
    assert len(found) >= 2, "README.md lost its Python examples"
    return found


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_examples_run_and_print_what_the_readme_says(offline, tmp_path, index):
    block = python_blocks()[index]
    script = tmp_path / "example.py"
    script.write_text(localise(block.code, offline))

    res = run([str(PYTHON), str(script)], tmp_path)

    assert res.stdout.splitlines() == expected_prints(block.code, "#"), res.stdout
    for name in files_named_after(block):
        data = (tmp_path / name).read_bytes()
        assert image_info(data)[0] == name.rsplit(".", 1)[1], name


def test_the_node_example_runs_as_example_mjs(offline, tmp_path):
    [block] = [b for b in blocks() if b.lang in ("js", "javascript", "mjs")]
    assert "example.mjs" in block.before, "the README no longer says where to save the Node example"
    assert (NODE_MODULES / "openai").is_dir(), "run scripts/setup-test-deps (npm ci in tests/sdk/node)"
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    (tmp_path / "example.mjs").write_text(localise(block.code, offline))

    res = run(["node", "example.mjs"], tmp_path)

    assert res.stdout.splitlines() == expected_prints(block.code, "//"), res.stdout
    assert image_info((tmp_path / "lighthouse.png").read_bytes()) == ("png", 1408, 768)
    assert image_info((tmp_path / "stream.png").read_bytes())[0] == "png"
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    sdk = json.loads((NODE_MODULES / "openai" / "package.json").read_text())["version"]
    # The README names what this ran with: Node's major version (the
    # machine's), the openai release package-lock.json pins.
    node_major = node.lstrip("v").split(".")[0]
    sdk_minor = ".".join(sdk.split(".")[:2])
    assert f"Node {node_major}" in block.after, (node, block.after)
    assert f"openai {sdk_minor}" in block.after, (sdk, block.after)


def curl_blocks() -> list[Block]:
    found = [b for b in blocks() if b.lang == "sh" and b.code.lstrip().startswith("curl")]
    assert len(found) >= 3, "README.md lost its curl examples"
    return found


FILE_URL = re.compile(r"^http://(?P<host>[^/]+)/v1/images/files/[0-9a-f]{32}\.(png|jpeg|webp)$")


def same_answer(shown: dict, got: dict, host: str) -> None:
    """Equal but for `created` and the file name in each url."""
    assert set(got) == set(shown), (shown, got)
    assert isinstance(got["created"], int) and got["created"] > 1_700_000_000
    for key in set(shown) - {"created", "data"}:
        assert got[key] == shown[key], key
    assert len(got["data"]) == len(shown["data"])
    for s, g in zip(shown["data"], got["data"]):
        assert set(g) == set(s)
        if "url" in s:
            assert FILE_URL.match(s["url"]) and FILE_URL.match(s["url"])["host"] == README_HOST, s["url"]
            m = FILE_URL.match(g["url"])
            assert m and m["host"] == host, g["url"]


@pytest.mark.parametrize("index", range(len(curl_blocks())))
def test_curl_examples_print_what_the_readme_shows(offline, tmp_path, index):
    block = curl_blocks()[index]
    shown = output_after(block)
    assert shown is not None, f"the README shows no output for:\n{block.code}"

    res = run(["bash", "-c", localise(block.code, offline)], tmp_path)

    host = f"127.0.0.1:{offline.port}"
    if shown.lang == "json":
        same_answer(json.loads(shown.code), json.loads(res.stdout), host)
        for item in json.loads(res.stdout)["data"]:
            status, body = get(item["url"])
            assert status == 200 and image_info(body)[0] == "png"
    else:
        # An event stream: the same comment, event and data lines in order;
        # data objects equal but for the image and its time.
        def lines(text: str) -> list[str]:
            return [line for line in text.splitlines() if line.strip()]

        want, got = lines(shown.code), lines(res.stdout)
        assert [w.split(":", 1)[0] for w in want] == [g.split(":", 1)[0] for g in got], res.stdout[:2000]
        for w, g in zip(want, got):
            if w.startswith("data: "):
                wd, gd = json.loads(w[6:]), json.loads(g[6:])
                assert set(wd) == set(gd)
                for key in set(wd) - {"b64_json", "created_at"}:
                    assert gd[key] == wd[key], key
                assert gd["b64_json"].startswith(wd["b64_json"].rstrip(".")), wd["b64_json"]
                assert image_info(base64.b64decode(gd["b64_json"]))[0] == gd["output_format"]
            else:
                assert g == w
