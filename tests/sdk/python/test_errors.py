"""Every error status the gateway answers surfaces in the Python SDK as the
matching exception class, with `.status_code`, `.code`, `.param`, `.type` and
`.request_id` populated as OpenAI populates them."""

import json
import time
import urllib.request

import openai
import pytest

from conftest import CLIENT_KEY, FAL_KEY, unique_prompt


@pytest.fixture(scope="module")
def fake(start_fake):
    return start_fake("--small-images")


@pytest.fixture(scope="module")
def gw(start_gateway, fake):
    # The gateway's own fal retries off: each injected fault is answered at once.
    return start_gateway(
        fake,
        IMAGE_GATEWAY__AUTH__API_KEYS=f"sk-some-other-key,{CLIENT_KEY}",
        IMAGE_GATEWAY__FAL__MAX_RETRIES="0",
    )


@pytest.fixture(scope="module")
def deadline_gw(start_gateway, fake):
    return start_gateway(fake, IMAGE_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS="1")


@pytest.fixture(autouse=True)
def clean_fake(fake):
    fake.reset()


@pytest.fixture(scope="module")
def client(gw):
    return gw.client()


def generate(client, **kw):
    kw.setdefault("prompt", unique_prompt())
    kw.setdefault("response_format", "b64_json")
    return client.images.generate(**kw)


def assert_error(e, cls, status, type_, code, param):
    """The SDK's view of one error, field by field."""
    assert type(e) is cls, f"{type(e).__name__} is not {cls.__name__}: {e}"
    assert e.status_code == status
    assert e.type == type_
    assert e.code == code
    assert e.param == param
    assert e.request_id and e.request_id == e.response.headers["x-request-id"]
    assert e.message and isinstance(e.body, dict) and e.body["message"]


def test_a_bad_size_is_bad_request_naming_size(client):
    with pytest.raises(openai.BadRequestError) as caught:
        generate(client, size="1000x10")

    e = caught.value
    assert_error(e, openai.BadRequestError, 400, "invalid_request_error", None, "size")
    assert e.response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("n", [0, 11])
def test_n_outside_1_to_10_is_bad_request_naming_n(client, n):
    with pytest.raises(openai.BadRequestError) as caught:
        generate(client, n=n)

    assert_error(caught.value, openai.BadRequestError, 400, "invalid_request_error", None, "n")


def test_an_empty_prompt_is_bad_request_naming_prompt(client):
    with pytest.raises(openai.BadRequestError) as caught:
        generate(client, prompt="")

    assert_error(caught.value, openai.BadRequestError, 400, "invalid_request_error", None, "prompt")


def test_a_wrong_client_key_is_an_authentication_error(gw, fake):
    client = gw.client(api_key="sk-wrong-key")

    with pytest.raises(openai.AuthenticationError) as caught:
        generate(client)

    e = caught.value
    assert_error(e, openai.AuthenticationError, 401, "authentication_error", "invalid_api_key", None)
    assert e.response.headers["x-should-retry"] == "false"
    assert "sk-wrong-key" not in e.message
    assert fake.counts()["submit"] == 0


def test_the_right_client_key_is_accepted_and_guards_models_too(gw):
    assert gw.client().models.retrieve("imagen-4-fast").id == "imagen-4-fast"
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key="sk-wrong-key").models.list()


def test_an_unknown_model_is_not_found_naming_model(client, fake):
    with pytest.raises(openai.NotFoundError) as caught:
        generate(client, model="imagen-9-turbo")

    assert_error(caught.value, openai.NotFoundError, 404, "invalid_request_error", "model_not_found", "model")
    assert fake.counts()["submit"] == 0


def test_fal_rate_limiting_is_a_rate_limit_error_with_retry_after(client, fake):
    fake.faults(
        {"op": "submit", "times": 0, "action": {"kind": "respond", "status": 429, "headers": [["retry-after", "1"]]}}
    )

    with pytest.raises(openai.RateLimitError) as caught:
        generate(client)

    e = caught.value
    assert_error(e, openai.RateLimitError, 429, "rate_limit_error", "rate_limit_exceeded", None)
    assert e.response.headers["retry-after"] == "1"
    assert e.response.headers["x-should-retry"] == "true"


def test_a_fal_422_is_a_content_policy_violation(client, fake):
    fake.faults(
        {
            "op": "result",
            "action": {
                "kind": "respond",
                "status": 422,
                "headers": [["content-type", "application/json"]],
                "body": '{"detail":[{"loc":["body","prompt"],"msg":"flagged by the safety checker","type":"content_policy"}]}',
            },
        }
    )

    with pytest.raises(openai.BadRequestError) as caught:
        generate(client)

    e = caught.value
    assert_error(e, openai.BadRequestError, 400, "invalid_request_error", "content_policy_violation", "prompt")
    assert "flagged by the safety checker" in e.message


def test_fal_refusing_the_fal_key_is_a_502_about_upstream_credentials(client, fake):
    fake.faults({"op": "submit", "action": {"kind": "respond", "status": 401, "body": '{"detail":"bad key"}'}})

    with pytest.raises(openai.InternalServerError) as caught:
        generate(client)

    e = caught.value
    assert_error(e, openai.InternalServerError, 502, "server_error", "upstream_error", None)
    assert "upstream credentials" in e.message
    assert FAL_KEY not in e.message and "bad key" not in e.message
    assert e.response.headers["x-should-retry"] == "false"


def test_a_fal_server_error_is_a_502_upstream_error(client, fake):
    fake.faults({"op": "result", "action": {"kind": "respond", "status": 500, "body": "internal details"}})

    with pytest.raises(openai.InternalServerError) as caught:
        generate(client)

    assert_error(caught.value, openai.InternalServerError, 502, "server_error", "upstream_error", None)
    assert "internal details" not in caught.value.message


def test_a_passed_deadline_is_a_504_upstream_timeout_and_the_fal_job_is_cancelled(deadline_gw, fake):
    fake.configure(queue_ms=30_000)
    client = deadline_gw.client()

    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        generate(client)
    elapsed = time.monotonic() - started

    e = caught.value
    assert_error(e, openai.InternalServerError, 504, "server_error", "upstream_timeout", None)
    assert e.response.headers["x-should-retry"] == "false"
    assert elapsed >= 0.9
    deadline = time.monotonic() + 5
    while fake.counts()["cancelled_jobs"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.counts()["cancelled_jobs"] == 1


def test_a_body_over_the_size_limit_is_413_request_too_large(client, fake):
    with pytest.raises(openai.APIStatusError) as caught:
        generate(client, prompt="x" * (1024 * 1024 + 1))

    e = caught.value
    assert_error(e, openai.APIStatusError, 413, "invalid_request_error", "request_too_large", None)
    assert fake.counts()["submit"] == 0


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_edits_and_variations_are_a_clear_unsupported_operation(client):
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=("in.png", png, "image/png"), prompt="add a boat")
    assert_error(caught.value, openai.BadRequestError, 400, "invalid_request_error", "unsupported_operation", None)

    with pytest.raises(openai.BadRequestError) as caught:
        client.images.create_variation(image=("in.png", png, "image/png"))
    assert_error(caught.value, openai.BadRequestError, 400, "invalid_request_error", "unsupported_operation", None)


def test_a_client_request_id_is_propagated_to_the_error(client):
    with pytest.raises(openai.BadRequestError) as caught:
        generate(client, size="huge", extra_headers={"X-Request-Id": "my-trace-123"})

    assert caught.value.request_id == "my-trace-123"


def test_keys_never_reach_the_gateway_log(gw, fake):
    fake.faults({"op": "submit", "action": {"kind": "respond", "status": 401}})
    with pytest.raises(openai.InternalServerError):
        generate(gw.client())
    with pytest.raises(openai.AuthenticationError):
        generate(gw.client(api_key="sk-wrong-key-to-hide"))

    log = gw.log()
    assert "fal refused" in log  # the failure was logged, without the key
    for secret in (FAL_KEY, CLIENT_KEY, "sk-wrong-key-to-hide"):
        assert secret not in log


ADMIN_KEY = "admin-sdk-test-0123456789abcdef"


def admin(gw, method, path, body=None):
    """An admin API call; the parsed JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(gw.root + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {ADMIN_KEY}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as res:
        return json.loads(res.read())


@pytest.fixture(scope="module")
def budget_gw(start_gateway, fake):
    return start_gateway(fake, IMAGE_GATEWAY__AUTH__ADMIN_KEY=ADMIN_KEY)


def test_a_spent_budget_is_a_rate_limit_error_insufficient_quota_the_sdk_does_not_retry(budget_gw, fake):
    key = admin(budget_gw, "POST", "/admin/v1/keys", {"name": "sdk", "budget_usd": 0.05})
    # The SDK's default retries: x-should-retry: false must stop them.
    client = budget_gw.client(api_key=key["key"], max_retries=2)

    raw = client.images.with_raw_response.generate(prompt=unique_prompt(), model="imagen-4")
    assert raw.headers["x-image-gateway-cost-usd"] == "0.04"
    assert raw.parse().data

    with pytest.raises(openai.RateLimitError) as caught:
        client.images.generate(prompt=unique_prompt(), model="imagen-4")
    e = caught.value
    assert_error(e, openai.RateLimitError, 429, "insufficient_quota", "insufficient_quota", None)
    assert e.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in e.response.headers
    assert fake.counts()["submit"] == 1, "no fal job for the refused request"

    # One refusal: the SDK did not retry it.
    req = urllib.request.Request(budget_gw.root + "/metrics")
    req.add_header("Authorization", f"Bearer {key['key']}")
    with urllib.request.urlopen(req, timeout=10) as res:
        metrics = res.read().decode()
    assert "image_gateway_budget_refusals_total 1\n" in metrics

    spent = admin(budget_gw, "GET", f"/admin/v1/keys/{key['id']}")
    assert spent["spend_usd"] == 0.04
