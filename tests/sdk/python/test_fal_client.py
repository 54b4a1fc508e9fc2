"""fal's official Python client (`fal-client`) against the project's fake fal:
the fake must answer what fal's own client accepts (queue submit, status,
result, cancel, errors), and the URLs it advertises must work, so the fake
cannot drift from the real protocol the gateway is tested against.

The client is used as shipped (its retries, its URL handling, its error
classes); only its connection is pointed at the fake: a transport below the
client's own sends `https://queue.fal.run/...` to the fake over plain HTTP.
Status, result and cancel go to the URLs the fake advertised, as the client
does with fal's."""

from __future__ import annotations

import json

import fal_client
import httpx
import pytest
from fal_client.client import USER_AGENT, BackupDomainTransport

from conftest import FAL_KEY

ENDPOINT = "fal-ai/imagen4/preview/fast"


class ToFake(httpx.BaseTransport):
    """Sends what the client addresses to fal's queue host to the fake."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host in ("queue.fal.run", "fal.run"):
            request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self.port)
            request.headers["Host"] = f"127.0.0.1:{self.port}"
        return self.inner.handle_request(request)


@pytest.fixture(scope="module")
def fake(start_fake):
    return start_fake("--small-images")


@pytest.fixture(autouse=True)
def clean_fake(fake):
    fake.reset()
    fake.configure(queue_ms=0, run_ms=0)


@pytest.fixture
def client(fake) -> fal_client.SyncClient:
    client = fal_client.SyncClient(key=FAL_KEY)
    # The client's own `_client` construction, with the fake underneath.
    client.__dict__["_client"] = httpx.Client(
        transport=BackupDomainTransport(transport=ToFake(fake.port)),
        headers={"Authorization": f"Key {FAL_KEY}", "User-Agent": USER_AGENT},
        timeout=30,
        follow_redirects=True,
    )
    return client


def test_submit_status_and_result_follow_the_advertised_urls(client, fake):
    handle = client.submit(ENDPOINT, {"prompt": "a lighthouse", "num_images": 2, "aspect_ratio": "16:9"})

    assert handle.request_id
    assert handle.status_url.startswith(fake.url)
    status = handle.status(with_logs=True)
    assert isinstance(status, (fal_client.Queued, fal_client.InProgress, fal_client.Completed))
    result = handle.get()

    assert [(i["width"], i["height"]) for i in result["images"]] == [(88, 48)] * 2
    assert all(i["url"].startswith("http://127.0.0.1:") for i in result["images"])
    calls = fake.calls()
    assert {c["op"] for c in calls} >= {"submit", "status", "result"}
    assert all(c["authorization"] == f"Key {FAL_KEY}" for c in calls)


def test_subscribe_sends_a_start_timeout_the_fake_understands(client, fake):
    result = client.subscribe(ENDPOINT, {"prompt": "x", "sync_mode": True}, start_timeout=30)

    assert result["images"][0]["url"].startswith("data:image/png;base64,")
    [submit] = [c for c in fake.calls() if c["op"] == "submit"]
    assert dict(submit["fal_headers"])["x-fal-request-timeout"] == "30.0"


def test_a_job_queued_past_its_start_timeout_fails_as_fal_documents(client, fake):
    fake.configure(queue_ms=30_000)
    handle = client.submit(ENDPOINT, {"prompt": "x"}, start_timeout=1.2)

    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        handle.get(interval=0.05)

    assert caught.value.status_code == 504
    assert caught.value.response_headers["x-fal-request-timeout-type"] == "user"


def test_cancel_answers_as_fal_does(client, fake):
    fake.configure(run_ms=30_000)
    handle = client.submit(ENDPOINT, {"prompt": "x"})

    handle.cancel()  # 202 CANCELLATION_REQUESTED: no error

    assert fake.counts()["cancelled_jobs"] == 1
    assert isinstance(handle.status(), fal_client.Completed)
    # The result of a cancelled request is an error, not images.
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        handle.get()
    assert caught.value.status_code == 499
    # Once done, a cancel is 400 ALREADY_COMPLETED; an unknown id 404.
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        handle.cancel()
    assert caught.value.status_code == 400
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        client.cancel(ENDPOINT, "no-such-request")
    assert caught.value.status_code == 404


def test_a_failed_job_completes_with_an_error_and_its_result_is_the_models_error(client, fake):
    detail = [{"loc": ["body", "prompt"], "msg": "flagged", "type": "content_policy_violation"}]
    fake.faults(
        {
            "op": "status",
            "action": {
                "kind": "completed_with_error",
                "error": "flagged",
                "error_type": "content_policy_violation",
                "result_status": 422,
                "result_body": json.dumps({"detail": detail}),
            },
        }
    )
    handle = client.submit(ENDPOINT, {"prompt": "x"})

    status = handle.status()
    assert isinstance(status, fal_client.Completed) and status.error == "flagged"
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        handle.get()

    assert caught.value.status_code == 422
    assert caught.value.message == detail


def test_input_outside_the_schema_is_a_422_at_submit(client):
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        client.submit(ENDPOINT, {"prompt": "x", "aspect_ratio": "21:9"})

    assert caught.value.status_code == 422
    assert caught.value.message[0]["loc"] == ["body", "aspect_ratio"]


def test_the_client_retries_an_ingress_error_and_not_fals_own(client, fake):
    nginx = "<html><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></html>"
    fake.faults({"op": "status", "times": 1, "action": {"kind": "respond", "status": 502, "body": nginx}})
    handle = client.submit(ENDPOINT, {"prompt": "x"})

    assert handle.get()["images"]
    assert fake.counts()["status"] >= 2

    # The fake's own answers carry x-fal-request-id: fal's client does not retry them.
    fake.reset()
    fake.faults(
        {
            "op": "result",
            "times": 1,
            "action": {
                "kind": "respond",
                "status": 503,
                "headers": [["x-fal-request-id", "fake-1"], ["x-fal-error-type", "runner_scheduling_failure"]],
                "body": '{"detail":"no runner","error_type":"runner_scheduling_failure"}',
            },
        }
    )
    handle = client.submit(ENDPOINT, {"prompt": "x"})
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        handle.get()
    assert caught.value.error_type == "runner_scheduling_failure"
    assert fake.counts()["result"] == 1


def test_every_answer_carries_its_own_fal_request_id(fake):
    ids = set()
    for _ in range(3):
        res = httpx.post(f"{fake.url}/{ENDPOINT}", json={"prompt": "x"})
        ids.add(res.headers["x-fal-request-id"])
    assert len(ids) == 3
