// images.generate, models and base-URL habits through the official Node SDK,
// against fal (the fake, full-size images) and the offline backend.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';

import OpenAI from 'openai';

import { b64Image, Fake, FAL_KEY, Gateway, uniquePrompt, urlImage } from './harness.mjs';

const SIZES = {
  auto: ['1:1', 1024, 1024],
  '256x256': ['1:1', 1024, 1024],
  '512x512': ['1:1', 1024, 1024],
  '1024x1024': ['1:1', 1024, 1024],
  '1792x1024': ['16:9', 1408, 768],
  '1024x1792': ['9:16', 768, 1408],
  '1536x1024': ['4:3', 1280, 896],
  '1024x1536': ['3:4', 896, 1280],
};

let fake;
let gw;
let offline;
let client;

before(async () => {
  fake = await Fake.start();
  gw = await Gateway.start(fake);
  offline = await Gateway.start(null);
  client = gw.client();
});

after(async () => {
  await gw?.stop();
  await offline?.stop();
  await fake?.stop();
});

beforeEach(() => fake.reset());

describe('images.generate', () => {
  it('runs the README example: two 16:9 images as b64_json', async () => {
    const img = await gw.client({ apiKey: 'sk-my-gateway-key' }).images.generate({
      model: 'imagen-4-fast',
      prompt: 'a lighthouse at dusk',
      size: '1792x1024',
      n: 2,
      response_format: 'b64_json',
    });

    assert.equal(img.data.length, 2);
    for (const image of img.data) assert.deepEqual(b64Image(image.b64_json), ['png', 1408, 768]);
    assert.equal(img.size, '1408x768');
    const bodies = await fake.submitBodies();
    assert.deepEqual(bodies, [
      { prompt: 'a lighthouse at dusk', aspect_ratio: '16:9', num_images: 2, output_format: 'png', sync_mode: true },
    ]);
    const calls = await fake.control('GET', 'calls');
    assert.equal(calls[0].authorization, `Key ${FAL_KEY}`);
  });

  it('runs the README example offline, without FAL_KEY', async () => {
    assert.equal(offline.readyz.backend, 'local');
    const { data: img, response } = await offline
      .client()
      .images.generate({ model: 'imagen-4-fast', prompt: 'a lighthouse at dusk', size: '1792x1024', n: 2, response_format: 'b64_json' })
      .withResponse();

    assert.equal(response.headers.get('x-image-gateway-backend'), 'local');
    assert.equal(img.data.length, 2);
    for (const image of img.data) assert.deepEqual(b64Image(image.b64_json), ['png', 1408, 768]);
  });

  for (const [size, [ratio, w, h]] of Object.entries(SIZES)) {
    it(`delivers size ${size} at ${w}x${h}`, async () => {
      const img = await client.images.generate({ prompt: uniquePrompt(), size, response_format: 'b64_json' });

      assert.deepEqual(b64Image(img.data[0].b64_json), ['png', w, h]);
      assert.equal(img.size, `${w}x${h}`);
      const [body] = await fake.submitBodies();
      assert.equal(body.aspect_ratio, ratio);
    });
  }

  it('answers url with downloadable images', async () => {
    const img = await client.images.generate({ prompt: uniquePrompt(), size: '1024x1536', response_format: 'url' });

    assert.ok(img.data[0].url.startsWith(fake.url));
    assert.equal(img.data[0].b64_json, undefined);
    assert.deepEqual(await urlImage(img.data[0].url), ['png', 896, 1280]);
    const [body] = await fake.submitBodies();
    assert.equal(body.sync_mode, false);
  });

  it('makes n=6 into two fal jobs of 4 and 2', async () => {
    const img = await client.images.generate({ prompt: uniquePrompt(), n: 6, response_format: 'b64_json' });

    assert.equal(img.data.length, 6);
    for (const image of img.data) assert.deepEqual(b64Image(image.b64_json), ['png', 1024, 1024]);
    const bodies = await fake.submitBodies();
    assert.deepEqual(bodies.map((b) => b.num_images).sort(), [2, 4]);
  });

  for (const format of ['png', 'jpeg', 'webp']) {
    it(`encodes output_format ${format}`, async () => {
      const img = await client.images.generate({
        prompt: uniquePrompt(),
        size: '1536x1024',
        output_format: format,
        response_format: 'b64_json',
      });

      assert.deepEqual(b64Image(img.data[0].b64_json), [format, 1280, 896]);
      assert.equal(img.output_format, format);
    });
  }

  it('sends x-request-id and openai-processing-ms, and keeps a client x-request-id', async () => {
    const { response, request_id } = await client.images
      .generate({ prompt: uniquePrompt(), response_format: 'b64_json' })
      .withResponse();
    assert.match(request_id, /^req_/);
    assert.ok(Number(response.headers.get('openai-processing-ms')) >= 0);

    const own = await client.images
      .generate({ prompt: uniquePrompt(), response_format: 'b64_json' }, { headers: { 'X-Request-Id': 'node-trace-7' } })
      .withResponse();
    assert.equal(own.request_id, 'node-trace-7');
  });
});

describe('models', () => {
  it('lists the Imagen models and the OpenAI aliases', async () => {
    const ids = [];
    for await (const model of client.models.list()) ids.push(model.id);

    for (const id of ['imagen-4-fast', 'imagen-4', 'imagen-4-ultra', 'dall-e-2', 'dall-e-3', 'gpt-image-1', 'gpt-image-2']) {
      assert.ok(ids.includes(id), `${id} missing from ${ids}`);
    }
  });

  it('retrieves one model', async () => {
    const model = await client.models.retrieve('imagen-4');
    assert.equal(model.id, 'imagen-4');
    assert.equal(model.object, 'model');
  });

  it('answers NotFoundError for an unknown model', async () => {
    await assert.rejects(client.models.retrieve('imagen-9-turbo'), (e) => {
      assert.ok(e instanceof OpenAI.NotFoundError);
      assert.equal(e.status, 404);
      assert.equal(e.code, 'model_not_found');
      assert.equal(e.type, 'invalid_request_error');
      assert.ok(e.requestID);
      return true;
    });
  });
});

describe('base URL habits', () => {
  for (const suffix of ['/v1', '/v1/', '', '/']) {
    it(`works with baseURL ending in "${suffix}"`, async () => {
      const c = new OpenAI({ baseURL: gw.root + suffix, apiKey: 'sk-x', maxRetries: 0, timeout: 30_000 });

      const img = await c.images.generate({ prompt: uniquePrompt(), response_format: 'b64_json' });
      assert.equal(img.data.length, 1);
      assert.equal((await c.models.retrieve('imagen-4-fast')).id, 'imagen-4-fast');
    });
  }

  it('reads OPENAI_BASE_URL and OPENAI_API_KEY from the environment', async () => {
    const saved = { base: process.env.OPENAI_BASE_URL, key: process.env.OPENAI_API_KEY };
    process.env.OPENAI_BASE_URL = `${gw.root}/v1/`;
    process.env.OPENAI_API_KEY = 'sk-from-env';
    try {
      const c = new OpenAI({ maxRetries: 0, timeout: 30_000 });
      const img = await c.images.generate({ prompt: uniquePrompt(), response_format: 'b64_json' });
      assert.equal(img.data.length, 1);
    } finally {
      for (const [k, v] of [['OPENAI_BASE_URL', saved.base], ['OPENAI_API_KEY', saved.key]]) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it('accepts organization and project', async () => {
    const c = gw.client({ organization: 'org-abc123', project: 'proj_def456' });
    const img = await c.images.generate({ prompt: uniquePrompt(), response_format: 'b64_json' });
    assert.equal(img.data.length, 1);
  });
});
