"""`images.generate` through the sync Python client against fal (the fake):
url and b64_json, every size in OpenAI's enum, n from 1 to 10, each output
format, fields accepted but ignored, and the models endpoints."""

import math

import openai
import pytest

from conftest import unique_prompt
from imageinfo import b64_image, url_image

# OpenAI's size enum -> (fal aspect ratio, the size Imagen 4 delivers).
SIZES = {
    "auto": ("1:1", (1024, 1024)),
    "256x256": ("1:1", (1024, 1024)),
    "512x512": ("1:1", (1024, 1024)),
    "1024x1024": ("1:1", (1024, 1024)),
    "1792x1024": ("16:9", (1408, 768)),
    "1024x1792": ("9:16", (768, 1408)),
    "1536x1024": ("4:3", (1280, 896)),
    "1024x1536": ("3:4", (896, 1280)),
}

OPENAI_ALIASES = ["dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2"]


@pytest.fixture(scope="module")
def fake(start_fake):
    return start_fake()  # full-size images: delivered pixel sizes are checked


@pytest.fixture(scope="module")
def gw(start_gateway, fake):
    return start_gateway(fake)


@pytest.fixture(autouse=True)
def clean_fake(fake):
    fake.reset()


@pytest.fixture(scope="module")
def client(gw):
    return gw.client()


@pytest.mark.parametrize("size", list(SIZES))
def test_every_openai_size_is_delivered_at_imagens_size(client, fake, size):
    ratio, (w, h) = SIZES[size]

    img = client.images.generate(prompt=unique_prompt(), size=size, response_format="b64_json")

    [image] = img.data
    assert b64_image(image.b64_json) == ("png", w, h)
    assert img.size == f"{w}x{h}"
    [body] = fake.submit_bodies()
    assert body["aspect_ratio"] == ratio
    assert body["sync_mode"] is True


def test_url_answers_are_downloadable_images(client, fake):
    img = client.images.generate(prompt=unique_prompt(), size="1536x1024", response_format="url", n=2)

    assert len(img.data) == 2
    for image in img.data:
        assert image.b64_json is None
        assert image.url.startswith(fake.url)
        assert url_image(image.url) == ("png", 1280, 896)
    assert img.size == "1280x896"
    [body] = fake.submit_bodies()
    assert body["sync_mode"] is False
    assert body["num_images"] == 2


@pytest.mark.parametrize(
    "model,expected",
    [("dall-e-3", "url"), ("dall-e-2", "url"), ("gpt-image-1", "b64_json"), ("gpt-image-2", "b64_json")],
)
def test_an_omitted_response_format_defaults_like_openai(client, model, expected):
    img = client.images.generate(model=model, prompt=unique_prompt())

    [image] = img.data
    if expected == "url":
        assert image.url and image.b64_json is None
    else:
        assert image.b64_json and image.url is None
        assert b64_image(image.b64_json) == ("png", 1024, 1024)


@pytest.mark.parametrize("n", range(1, 11))
def test_n_images_come_from_ceil_n_over_4_fal_jobs(client, fake, n):
    img = client.images.generate(prompt=unique_prompt(), n=n, response_format="b64_json")

    assert len(img.data) == n
    for image in img.data:
        assert b64_image(image.b64_json) == ("png", 1024, 1024)
    bodies = fake.submit_bodies()
    assert len(bodies) == math.ceil(n / 4)
    assert sum(b["num_images"] for b in bodies) == n
    assert all(1 <= b["num_images"] <= 4 for b in bodies)
    assert len({b["prompt"] for b in bodies}) == 1


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("response_format", ["b64_json", "url"])
def test_each_output_format_is_encoded_as_asked(client, fake, fmt, response_format):
    img = client.images.generate(
        prompt=unique_prompt(), size="1792x1024", output_format=fmt, response_format=response_format
    )

    [image] = img.data
    got = b64_image(image.b64_json) if response_format == "b64_json" else url_image(image.url)
    assert got == (fmt, 1408, 768)
    assert img.output_format == fmt
    [body] = fake.submit_bodies()
    assert body["output_format"] == fmt


def test_openai_only_fields_are_accepted_and_reported_as_ignored(client):
    raw = client.images.with_raw_response.generate(
        model="dall-e-3",
        prompt=unique_prompt(),
        quality="hd",
        style="vivid",
        user="end-user-42",
        response_format="b64_json",
    )

    img = raw.parse()
    assert len(img.data) == 1
    ignored = set(raw.headers["x-image-gateway-ignored-fields"].split(","))
    assert {"quality", "style", "user"} <= ignored
    assert raw.headers["x-image-gateway-model"] == "imagen-4-fast"


def test_other_imagen_models_go_to_their_fal_endpoints(client, fake):
    for model, endpoint in [("imagen-4", "fal-ai/imagen4/preview"), ("imagen-4-ultra", "fal-ai/imagen4/preview/ultra")]:
        client.images.generate(model=model, prompt=unique_prompt(), response_format="b64_json")
        submit = [c for c in fake.calls() if c["op"] == "submit"][-1]
        assert submit["path"] == f"/{endpoint}"


def test_models_list_has_the_imagen_models_and_the_openai_aliases(client):
    page = client.models.list()

    ids = [m.id for m in page.data]
    for model in ["imagen-4-fast", "imagen-4", "imagen-4-ultra", *OPENAI_ALIASES]:
        assert model in ids
    assert all(m.object == "model" and m.owned_by and m.created > 0 for m in page.data)
    # The page iterates like OpenAI's.
    assert [m.id for m in page] == ids


def test_models_retrieve_answers_one_model(client):
    model = client.models.retrieve("imagen-4")

    assert model.id == "imagen-4"
    assert model.object == "model"
    alias = client.models.retrieve("dall-e-3")
    assert alias.id == "dall-e-3"
    assert alias.model_extra.get("alias_of") == "imagen-4-fast"


def test_models_retrieve_of_an_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("imagen-9-turbo")

    e = caught.value
    assert e.status_code == 404
    assert e.code == "model_not_found"
    assert e.type == "invalid_request_error"
    assert e.request_id
