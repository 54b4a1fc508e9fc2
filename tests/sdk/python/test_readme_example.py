"""The README's SDK example, verbatim, against fal (the fake) and against the
offline `local` backend a gateway without FAL_KEY uses."""

import pytest

from imageinfo import b64_image, url_image

README_CALL = dict(
    model="imagen-4-fast",
    prompt="a lighthouse at dusk",
    size="1792x1024",
    n=2,
    response_format="b64_json",
)


@pytest.fixture(scope="module")
def fake(start_fake):
    return start_fake()  # full-size images: the pixel size is what is checked


@pytest.fixture(scope="module")
def gw(start_gateway, fake):
    return start_gateway(fake)


@pytest.fixture(scope="module")
def offline(start_gateway):
    return start_gateway(None)


def test_readme_example_returns_two_16x9_images_from_fal(gw, fake):
    client = gw.client(api_key="sk-my-gateway-key")

    img = client.images.generate(**README_CALL)

    assert len(img.data) == 2
    for image in img.data:
        assert b64_image(image.b64_json) == ("png", 1408, 768)
        assert image.url is None
    assert img.size == "1408x768"
    assert img.output_format == "png"
    assert img.created > 1_700_000_000
    [body] = fake.submit_bodies()
    assert body == {
        "prompt": "a lighthouse at dusk",
        "aspect_ratio": "16:9",
        "num_images": 2,
        "output_format": "png",
        "sync_mode": True,
    }
    [submit] = [c for c in fake.calls() if c["op"] == "submit"]
    assert submit["path"] == "/fal-ai/imagen4/preview/fast"
    assert submit["authorization"] == f"Key {gw.env['FAL_KEY']}"


def test_readme_example_works_offline_without_fal_key(offline):
    assert offline.readyz["backend"] == "local"
    client = offline.client(api_key="sk-my-gateway-key")

    raw = client.images.with_raw_response.generate(**README_CALL)
    img = raw.parse()

    assert raw.headers["x-image-gateway-backend"] == "local"
    assert len(img.data) == 2
    for image in img.data:
        assert b64_image(image.b64_json) == ("png", 1408, 768)
    assert img.size == "1408x768"
    # Deterministic per prompt, and the two images differ.
    assert img.data[0].b64_json != img.data[1].b64_json
    again = client.images.generate(**README_CALL, extra_headers={"Cache-Control": "no-cache"})
    assert [d.b64_json for d in again.data] == [d.b64_json for d in img.data]


def test_offline_url_answers_link_to_images_the_gateway_serves(offline):
    client = offline.client()

    img = client.images.generate(
        model="dall-e-3", prompt="a lighthouse at dusk", size="1024x1792", response_format="url"
    )

    [image] = img.data
    assert image.url.startswith(f"{offline.root}/v1/images/files/")
    assert url_image(image.url) == ("png", 768, 1408)
    assert img.size == "768x1408"
