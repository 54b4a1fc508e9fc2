"""`stream=True`: the SDK's event iterator over the gateway's
`text/event-stream`: one `image_generation.completed` event per image, SSE
keep-alive comments while fal works, and a failure after the stream started
raised from the iterator."""

import openai
import pytest

from conftest import unique_prompt
from imageinfo import b64_image


@pytest.fixture(scope="module")
def fake(start_fake):
    return start_fake("--small-images")


@pytest.fixture(scope="module")
def gw(start_gateway, fake):
    return start_gateway(
        fake,
        IMAGE_GATEWAY__FAL__MAX_RETRIES="0",
        IMAGE_GATEWAY__SERVER__STREAM_KEEPALIVE_SECONDS="1",
    )


@pytest.fixture(autouse=True)
def clean_fake(fake):
    fake.reset()


@pytest.fixture(scope="module")
def client(gw):
    return gw.client()


@pytest.mark.parametrize("partial_images", [0, 2, 3])
def test_a_stream_yields_one_completed_event_per_image(client, fake, partial_images):
    stream = client.images.generate(
        prompt=unique_prompt(), stream=True, partial_images=partial_images, n=2, size="1792x1024"
    )

    events = list(stream)

    assert [e.type for e in events] == ["image_generation.completed"] * 2
    for e in events:
        # Small fake images: 1/16 of Imagen's 1408x768.
        assert b64_image(e.b64_json) == ("png", 88, 48)
        assert e.size == "88x48"
        assert e.output_format == "png"
        assert e.created_at > 1_700_000_000
        assert e.quality and e.background
        assert e.usage is not None
    assert events[0].b64_json != events[1].b64_json
    [body] = fake.submit_bodies()
    assert body["num_images"] == 2 and body["aspect_ratio"] == "16:9" and body["sync_mode"] is True


def test_a_stream_answers_text_event_stream_with_the_usual_headers(client):
    raw = client.images.with_raw_response.generate(prompt=unique_prompt(), stream=True, output_format="webp")

    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-request-id"]
    assert raw.headers["x-image-gateway-backend"] == "fal"
    [event] = list(raw.parse())
    assert event.type == "image_generation.completed"
    assert event.output_format == "webp"
    assert b64_image(event.b64_json)[0] == "webp"


def test_keep_alive_comments_flow_while_fal_works_and_the_sdk_skips_them(client, fake):
    fake.configure(queue_ms=2000)
    prompt = unique_prompt()

    with client.images.with_streaming_response.generate(prompt=prompt, stream=True) as res:
        lines = list(res.iter_lines())
    assert ": keep-alive" in lines[: lines.index("event: image_generation.completed")]
    assert lines.count(": keep-alive") >= 2  # the first at once, more each second

    events = list(client.images.generate(prompt=prompt, stream=True, extra_headers={"Cache-Control": "no-cache"}))
    assert [e.type for e in events] == ["image_generation.completed"]


def test_a_cached_answer_streams_at_once(client, fake):
    prompt = unique_prompt()
    first = client.images.generate(prompt=prompt, response_format="b64_json")

    raw = client.images.with_raw_response.generate(prompt=prompt, stream=True)

    assert raw.headers["x-cache"] == "HIT"
    [event] = list(raw.parse())
    assert event.b64_json == first.data[0].b64_json
    assert fake.counts()["submit"] == 1


@pytest.mark.parametrize(
    "fault,code,type_",
    [
        (
            {"op": "stream", "action": {"kind": "completed_with_error", "error": "runner crashed", "error_type": "runner_disconnected"}},
            "upstream_unavailable",
            "server_error",
        ),
        ({"op": "result", "action": {"kind": "respond", "status": 500}}, "upstream_error", "server_error"),
        (
            {"op": "result", "action": {"kind": "respond", "status": 422, "body": '{"detail":[{"msg":"flagged"}]}'}},
            "content_policy_violation",
            "invalid_request_error",
        ),
    ],
    ids=["completed-with-error", "result-500", "result-422"],
)
def test_a_failure_after_the_stream_started_raises_from_the_iterator(client, fake, fault, code, type_):
    fake.faults(fault)

    stream = client.images.generate(prompt=unique_prompt(), stream=True)
    assert stream.response.status_code == 200  # the stream had started
    with pytest.raises(openai.APIError) as caught:
        list(stream)

    e = caught.value
    assert not isinstance(e, openai.APIStatusError)
    assert e.code == code
    assert e.type == type_
    assert e.message and "runner crashed" not in e.message


def test_a_bad_request_fails_before_the_stream_starts(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt=unique_prompt(), stream=True, partial_images=4)

    assert caught.value.param == "partial_images"
