"""What users do when they point an existing OpenAI client at the gateway:
base URLs with or without `/v1` and a trailing slash, `OPENAI_BASE_URL`,
organization and project headers, and the response headers OpenAI sends
(`x-request-id`, `openai-processing-ms`)."""

import openai
import pytest

from conftest import unique_prompt
from imageinfo import b64_image


@pytest.fixture(scope="module")
def fake(start_fake):
    return start_fake("--small-images")


@pytest.fixture(scope="module")
def gw(start_gateway, fake):
    return start_gateway(fake)


def generate_one(client):
    img = client.images.generate(prompt=unique_prompt(), size="1024x1792", response_format="b64_json")
    assert b64_image(img.data[0].b64_json) == ("png", 48, 88)
    return img


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "", "/"])
def test_base_url_with_or_without_v1_and_trailing_slash(gw, suffix):
    client = openai.OpenAI(base_url=gw.root + suffix, api_key="sk-x", max_retries=0, timeout=30)

    generate_one(client)
    assert "imagen-4-fast" in [m.id for m in client.models.list()]
    assert client.models.retrieve("imagen-4").id == "imagen-4"


@pytest.mark.parametrize("suffix", ["/v1", "/v1/"])
def test_openai_base_url_and_api_key_from_the_environment(gw, monkeypatch, suffix):
    monkeypatch.setenv("OPENAI_BASE_URL", gw.root + suffix)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")

    client = openai.OpenAI(max_retries=0, timeout=30)

    assert str(client.base_url).startswith(gw.root)
    generate_one(client)


def test_organization_and_project_headers_are_accepted(gw):
    client = gw.client(organization="org-abc123", project="proj_def456")

    raw = client.images.with_raw_response.generate(prompt=unique_prompt(), response_format="b64_json")

    assert raw.http_request.headers["OpenAI-Organization"] == "org-abc123"
    assert raw.http_request.headers["OpenAI-Project"] == "proj_def456"
    assert raw.status_code == 200
    assert len(raw.parse().data) == 1


def test_responses_carry_x_request_id_and_openai_processing_ms(gw):
    client = gw.client()

    raw = client.images.with_raw_response.generate(prompt=unique_prompt(), response_format="b64_json")
    img = raw.parse()

    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req_")
    assert img._request_id == request_id
    assert int(raw.headers["openai-processing-ms"]) >= 0
    models = client.models.with_raw_response.list()
    assert models.headers["x-request-id"] and models.headers["x-request-id"] != request_id
    assert int(models.headers["openai-processing-ms"]) >= 0


def test_a_client_x_request_id_is_kept(gw):
    client = gw.client()

    img = client.images.generate(
        prompt=unique_prompt(), response_format="b64_json", extra_headers={"X-Request-Id": "trace-42-abc"}
    )

    assert img._request_id == "trace-42-abc"


def test_null_optional_fields_as_the_sdk_may_send_them_are_accepted(gw):
    client = gw.client()

    img = client.images.generate(
        prompt=unique_prompt(),
        response_format="b64_json",
        extra_body={"quality": None, "style": None, "size": None, "n": None, "user": None, "background": None},
    )

    assert len(img.data) == 1
