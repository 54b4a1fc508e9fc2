"""Model chains through the official Python SDK: when Imagen 4 is gone the
next endpoint of the chain serves, with its own size mapping, and the SDK
sees an ordinary answer saying who served; `models.retrieve` shows chains."""

import pytest

from conftest import unique_prompt

IMAGEN_FAST = "fal-ai/imagen4/preview/fast"
NANO_BANANA_2 = "fal-ai/nano-banana-2"


@pytest.fixture(scope="module")
def fake(start_fake):
    return start_fake()


@pytest.fixture(scope="module")
def gw(start_gateway, fake):
    return start_gateway(fake, IMAGE_GATEWAY__MODELS__SUCCESSORS="behind")


@pytest.fixture(autouse=True)
def fresh(fake):
    fake.reset()


def test_an_sdk_client_is_served_by_the_successor_when_imagen_is_gone(gw, fake):
    fake.control("POST", "endpoints", {IMAGEN_FAST: {"mode": "gone_410"}})
    raw = gw.client().images.with_raw_response.generate(
        model="dall-e-3", prompt=unique_prompt(), size="1536x1024"
    )
    img = raw.parse()
    assert raw.headers["x-image-gateway-endpoint"] == NANO_BANANA_2
    assert raw.headers["x-image-gateway-model"] == "imagen-4-fast"
    # nano-banana-2's own 3:2, delivered at its size.
    assert img.size == "1264x848"
    assert img.data[0].url.startswith(fake.url)
    paths = [c["path"] for c in fake.calls() if c["op"] == "submit"]
    assert paths == [f"/{IMAGEN_FAST}", f"/{NANO_BANANA_2}"]
    assert fake.submit_bodies()[1]["aspect_ratio"] == "3:2"

    ready = gw.client().with_options(base_url=gw.root).get("/readyz", cast_to=object)
    assert ready["endpoints_gone"][0]["endpoint"] == IMAGEN_FAST


def test_models_retrieve_shows_the_chain_with_prices(gw):
    model = gw.client().models.retrieve("imagen-4-fast").to_dict()
    assert model["endpoints"] == [IMAGEN_FAST, NANO_BANANA_2]
    assert model["chain"][1]["price"] == {
        "unit": "image",
        "usd": "0.08",
        "description": "$0.08 per image, $0.06 at 0.5K, $0.12 at 2K, $0.16 at 4K",
        "checked": "2026-11-30",
    }
    assert "1264x848" in model["chain"][1]["capabilities"]["sizes"]


def test_a_2_3_size_on_flux_is_sent_as_its_image_size(gw, fake):
    raw = gw.client().images.with_raw_response.generate(
        model="flux-schnell", prompt=unique_prompt(), size="1024x1536", extra_body={"seed": 5}
    )
    img = raw.parse()
    assert img.size == "1024x1536"
    assert fake.submit_bodies()[0]["image_size"] == {"width": 1024, "height": 1536}
    assert raw.headers["x-image-gateway-seed"] == "5"
