"""The core calls through `AsyncOpenAI`: generate (url and b64_json),
concurrent generations, models, an error class, and streaming with
`async for`."""

import asyncio

import openai
import pytest

from conftest import unique_prompt
from imageinfo import b64_image, url_image


@pytest.fixture(scope="module")
def fake(start_fake):
    return start_fake()


@pytest.fixture(scope="module")
def gw(start_gateway, fake):
    return start_gateway(fake, IMAGE_GATEWAY__FAL__MAX_RETRIES="0")


@pytest.fixture(autouse=True)
def clean_fake(fake):
    fake.reset()


async def test_async_generate_b64_json_and_url(gw, fake):
    async with gw.async_client() as client:
        b64 = await client.images.generate(
            model="imagen-4-fast", prompt=unique_prompt(), size="1792x1024", n=2, response_format="b64_json"
        )
        url = await client.images.generate(prompt=unique_prompt(), size="1024x1536", response_format="url")

    assert [b64_image(d.b64_json) for d in b64.data] == [("png", 1408, 768)] * 2
    assert url_image(url.data[0].url) == ("png", 896, 1280)
    assert url.size == "896x1280"
    assert fake.counts()["submit"] == 2


async def test_async_concurrent_generations_all_succeed(gw, fake):
    async with gw.async_client() as client:
        results = await asyncio.gather(
            *[client.images.generate(prompt=unique_prompt(), n=n, response_format="b64_json") for n in (1, 3, 6)]
        )

    assert [len(r.data) for r in results] == [1, 3, 6]
    assert fake.counts()["submit"] == 1 + 1 + 2


async def test_async_models_list_and_retrieve(gw):
    async with gw.async_client() as client:
        ids = [m.id async for m in client.models.list()]
        model = await client.models.retrieve("gpt-image-1")
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve("midjourney")

    assert {"imagen-4-fast", "imagen-4", "imagen-4-ultra", "dall-e-3", "gpt-image-1"} <= set(ids)
    assert model.id == "gpt-image-1"
    assert caught.value.code == "model_not_found"
    assert caught.value.request_id


async def test_async_errors_raise_the_matching_class(gw, fake):
    fake.faults({"op": "submit", "action": {"kind": "respond", "status": 429, "headers": [["retry-after", "2"]]}})
    async with gw.async_client() as client:
        with pytest.raises(openai.RateLimitError) as rate_limited:
            await client.images.generate(prompt=unique_prompt())
        with pytest.raises(openai.BadRequestError) as bad:
            await client.images.generate(prompt=unique_prompt(), size="4096x64")

    assert rate_limited.value.code == "rate_limit_exceeded"
    assert rate_limited.value.response.headers["retry-after"] == "2"
    assert bad.value.param == "size"
    assert bad.value.request_id


async def test_async_streaming(gw, fake):
    async with gw.async_client() as client:
        stream = await client.images.generate(prompt=unique_prompt(), stream=True, partial_images=1, n=3)
        events = [e async for e in stream]

        fake.faults({"op": "result", "action": {"kind": "respond", "status": 500}})
        failing = await client.images.generate(prompt=unique_prompt(), stream=True)
        with pytest.raises(openai.APIError) as caught:
            async for _ in failing:
                pass

    assert [e.type for e in events] == ["image_generation.completed"] * 3
    assert all(b64_image(e.b64_json) == ("png", 1024, 1024) and e.size == "1024x1024" for e in events)
    assert caught.value.code == "upstream_error"
