"""The SDK's own retry logic working with the gateway: a 429 with
`retry-after` is retried after that delay and then succeeds; an error marked
`x-should-retry: false` is not retried; a transient upstream failure is.

Timing is checked only as a lower bound (the SDK did wait), never as an upper
one."""

import threading
import time

import openai
import pytest

from conftest import unique_prompt


@pytest.fixture(scope="module")
def fake(start_fake):
    return start_fake("--small-images")


@pytest.fixture(scope="module")
def gw(start_gateway, fake):
    # No gateway-side fal retries: one fal 429 becomes one 429 to the client.
    return start_gateway(fake, IMAGE_GATEWAY__FAL__MAX_RETRIES="0")


@pytest.fixture(scope="module")
def single_slot(start_gateway, fake):
    # Room for one generation at a time and none waiting: the next is shed.
    return start_gateway(
        fake,
        IMAGE_GATEWAY__LIMITS__MAX_CONCURRENT_JOBS="1",
        IMAGE_GATEWAY__LIMITS__MAX_QUEUED_JOBS="0",
    )


@pytest.fixture(autouse=True)
def clean_fake(fake):
    fake.reset()


def fal_429(times, retry_after="1"):
    return {
        "op": "submit",
        "times": times,
        "action": {"kind": "respond", "status": 429, "headers": [["retry-after", retry_after]]},
    }


def test_a_429_with_retry_after_is_retried_by_the_sdk_after_the_delay(gw, fake):
    fake.faults(fal_429(times=1))
    client = gw.client(max_retries=2)

    started = time.monotonic()
    raw = client.images.with_raw_response.generate(prompt=unique_prompt(), response_format="b64_json")
    elapsed = time.monotonic() - started

    img = raw.parse()
    assert len(img.data) == 1 and img.data[0].b64_json
    assert raw.retries_taken == 1
    assert fake.counts()["submit"] == 2
    assert elapsed >= 0.9, f"the SDK retried after {elapsed:.2f} s, before retry-after: 1"


def test_the_sdk_gives_up_after_max_retries_on_persistent_429(gw, fake):
    fake.faults(fal_429(times=0))
    client = gw.client(max_retries=1)

    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as caught:
        client.images.generate(prompt=unique_prompt(), response_format="b64_json")
    elapsed = time.monotonic() - started

    assert caught.value.code == "rate_limit_exceeded"
    assert fake.counts()["submit"] == 2
    assert elapsed >= 0.9


def test_the_gateways_own_overload_429_is_retried_by_the_sdk_and_succeeds(single_slot, fake):
    fake.configure(queue_ms=600)
    first_result = {}

    def first():
        first_result["img"] = single_slot.client().images.generate(
            prompt=unique_prompt("the first"), response_format="b64_json"
        )

    t = threading.Thread(target=first)
    t.start()
    deadline = time.monotonic() + 5
    while fake.counts()["submit"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.counts()["submit"] == 1, "the first request never reached fal"

    started = time.monotonic()
    raw = single_slot.client(max_retries=3).images.with_raw_response.generate(
        prompt=unique_prompt("the second"), response_format="b64_json"
    )
    elapsed = time.monotonic() - started
    t.join(10)

    assert len(raw.parse().data) == 1
    assert raw.retries_taken >= 1
    assert elapsed >= 0.9
    assert len(first_result["img"].data) == 1
    assert fake.counts()["submit"] == 2


def test_x_should_retry_false_stops_the_sdk_retrying_a_5xx(gw, fake):
    # fal refusing FAL_KEY: a 502 that no retry can fix.
    fake.faults({"op": "submit", "times": 0, "action": {"kind": "respond", "status": 401}})
    client = gw.client(max_retries=2)

    with pytest.raises(openai.InternalServerError) as caught:
        client.images.generate(prompt=unique_prompt(), response_format="b64_json")

    assert caught.value.status_code == 502
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert fake.counts()["submit"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [dict(size="12x34"), dict(n=11), dict(model="no-such-model")],
    ids=["bad-size", "bad-n", "unknown-model"],
)
def test_client_errors_say_x_should_retry_false(gw, kwargs):
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client(max_retries=2).images.generate(prompt=unique_prompt(), **kwargs)

    assert caught.value.status_code in (400, 404)
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_a_transient_upstream_failure_is_retried_by_the_sdk(gw, fake):
    fake.faults({"op": "result", "times": 1, "action": {"kind": "respond", "status": 500}})
    client = gw.client(max_retries=2)

    raw = client.images.with_raw_response.generate(prompt=unique_prompt(), response_format="b64_json")

    assert len(raw.parse().data) == 1
    assert raw.retries_taken == 1
    assert fake.counts()["submit"] == 2
