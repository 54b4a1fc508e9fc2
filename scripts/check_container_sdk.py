#!/usr/bin/env python3
"""The official `openai` Python SDK against a running gateway container
(scripts/check-container runs it with .venv's Python).

    check_container_sdk.py generate ROOT
        b64_json and url generations on the offline backend; every image is
        decoded in full (PNG chunks, CRCs, the zlib stream, every row) and its
        pixel size must be the `size` the answer states.
    check_container_sdk.py stop ROOT -- COMMAND...
        starts a generation, waits until the gateway reports it in flight
        (image_gateway_upstream_jobs_in_flight on /metrics), runs COMMAND
        (`docker stop ...`), and requires the generation to have completed
        with a decodable image: SIGTERM lets in-flight work finish.

Prints one `ok` line per check; exits 1 with the reason on the first failure.
"""

from __future__ import annotations

import base64
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib

import openai

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> samples per pixel.
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class Failed(Exception):
    pass


def decode_png(data: bytes) -> tuple[int, int]:
    """Decodes a non-interlaced PNG down to its filtered rows; returns
    (width, height). Raises Failed on anything a decoder would reject."""
    if not data.startswith(PNG_SIGNATURE):
        raise Failed(f"not a PNG: starts with {data[:8]!r}")
    pos, chunks = len(PNG_SIGNATURE), []
    while pos < len(data):
        if pos + 8 > len(data):
            raise Failed("truncated chunk header")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise Failed(f"truncated {kind!r} chunk")
        if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise Failed(f"bad CRC in {kind!r} chunk")
        chunks.append((kind, body))
        pos += 12 + length
        if kind == b"IEND":
            break
    if pos != len(data):
        raise Failed(f"{len(data) - pos} bytes after IEND")
    if not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        raise Failed("IHDR is not first or IEND is not last")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if colour not in CHANNELS or interlace != 0:
        raise Failed(f"unexpected colour type {colour} / interlace {interlace}")
    stride = (width * CHANNELS[colour] * depth + 7) // 8
    inflater = zlib.decompressobj()
    try:
        pixels = inflater.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
        pixels += inflater.flush()
    except zlib.error as e:
        raise Failed(f"image data does not inflate: {e}") from e
    if not inflater.eof or inflater.unused_data:
        raise Failed("image data is not one complete zlib stream")
    if len(pixels) != height * (1 + stride):
        raise Failed(f"{len(pixels)} bytes of rows, expected {height} x (1 + {stride})")
    if any(pixels[row * (1 + stride)] > 4 for row in range(height)):
        raise Failed("a row has an unknown filter type")
    return width, height


def check_image(data: bytes, stated_size: str | None, what: str) -> str:
    width, height = decode_png(data)
    if stated_size != f"{width}x{height}":
        raise Failed(f"{what}: decoded {width}x{height}, the answer says size={stated_size}")
    return f"{width}x{height} PNG, {len(data)} bytes, decoded"


def client(root: str) -> openai.OpenAI:
    # No client keys are configured in the container: any key is accepted.
    return openai.OpenAI(base_url=f"{root}/v1", api_key="sk-check-container", max_retries=0, timeout=60)


def generate_b64(root: str, prompt: str) -> str:
    raw = client(root).images.with_raw_response.generate(
        prompt=prompt, size="1024x1024", response_format="b64_json"
    )
    backend = raw.headers.get("x-image-gateway-backend")
    if backend != "local":
        raise Failed(f"x-image-gateway-backend: {backend!r}, expected the offline backend 'local'")
    answer = raw.parse()
    if len(answer.data) != 1 or not answer.data[0].b64_json:
        raise Failed(f"expected one b64_json image, got {answer.data!r:.200}")
    return check_image(base64.b64decode(answer.data[0].b64_json, validate=True), answer.size, "b64_json")


def cmd_generate(root: str) -> None:
    print(f"ok   b64_json (backend local): {generate_b64(root, 'a lighthouse at dusk, container check')}")
    answer = client(root).images.generate(prompt="a red kite over dunes, container check", response_format="url")
    url = answer.data[0].url or ""
    if not url.startswith(f"{root}/"):
        raise Failed(f"url {url!r} does not point at the container ({root})")
    with urllib.request.urlopen(url, timeout=30) as res:
        if res.status != 200:
            raise Failed(f"GET {url}: {res.status}")
        data = res.read()
    print(f"ok   url, downloaded from the container: {check_image(data, answer.size, 'url')}")


def jobs_in_flight(root: str) -> float:
    with urllib.request.urlopen(f"{root}/metrics", timeout=5) as res:
        for line in res.read().decode().splitlines():
            if line.startswith("image_gateway_upstream_jobs_in_flight "):
                return float(line.split()[1])
    raise Failed("/metrics has no image_gateway_upstream_jobs_in_flight")


def cmd_stop(root: str, command: list[str]) -> None:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["ok"] = generate_b64(root, "a generation in flight at SIGTERM")
        except Exception as e:  # reported below, in the main thread
            outcome["error"] = e

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 30
    while jobs_in_flight(root) < 1:
        if time.monotonic() > deadline or not worker.is_alive():
            raise Failed(f"the generation never showed as in flight ({outcome.get('error')})")
        time.sleep(0.05)
    started = time.monotonic()
    stopped = subprocess.run(command, capture_output=True, text=True)
    took = time.monotonic() - started
    if stopped.returncode != 0:
        raise Failed(f"{' '.join(command)}: exit {stopped.returncode}: {stopped.stderr.strip()}")
    worker.join(timeout=60)
    if "error" in outcome:
        raise Failed(f"the generation in flight at SIGTERM failed: {outcome['error']!r}")
    print(f"ok   SIGTERM with a generation in flight: it completed ({outcome['ok']}); "
          f"`{' '.join(command)}` returned after {took:.1f} s")


def main() -> int:
    args = sys.argv[1:]
    try:
        if len(args) == 2 and args[0] == "generate":
            cmd_generate(args[1])
        elif len(args) > 3 and args[0] == "stop" and args[2] == "--":
            cmd_stop(args[1], args[3:])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (Failed, openai.OpenAIError, OSError, ValueError) as e:
        print(f"FAIL {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
