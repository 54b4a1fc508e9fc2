"""The gateway process itself as an operator runs it: SIGTERM (what
Kubernetes, Docker and systemd send) stops it within its shutdown grace, after
it served SDK clients that keep idle connections open."""

import signal
import subprocess
import time

import pytest

from conftest import unique_prompt


@pytest.fixture(scope="module")
def fake(start_fake):
    return start_fake("--small-images")


@pytest.mark.parametrize("backend", ["fal", "local"])
def test_sigterm_stops_the_gateway_within_its_grace_period(start_gateway, fake, backend):
    gw = start_gateway(fake if backend == "fal" else None, IMAGE_GATEWAY__SERVER__SHUTDOWN_GRACE_SECONDS="1")
    client = gw.client()
    client.images.generate(prompt=unique_prompt(), response_format="b64_json")
    client.close()  # no idle connection left: only the signal matters

    started = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    try:
        code = gw.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"image-gateway ({backend}) still running {time.monotonic() - started:.0f} s after SIGTERM "
            "with server.shutdown_grace_seconds = 1"
        )
    assert code == 0
    assert "stopped" in gw.log()
