// Model chains through the official Node SDK: when Imagen 4 is gone the next
// endpoint of the chain serves with its own size mapping, and the answer says
// who served.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';

import { Fake, Gateway, uniquePrompt } from './harness.mjs';

const IMAGEN_FAST = 'fal-ai/imagen4/preview/fast';
const NANO_BANANA_2 = 'fal-ai/nano-banana-2';

let fake;
let gw;

before(async () => {
  fake = await Fake.start();
  gw = await Gateway.start(fake, { IMAGE_GATEWAY__MODELS__SUCCESSORS: 'behind' });
});

after(async () => {
  await gw?.stop();
  await fake?.stop();
});

beforeEach(() => fake.reset());

describe('model chains', () => {
  it('serves from the successor when Imagen is gone', async () => {
    await fake.control('POST', 'endpoints', { [IMAGEN_FAST]: { mode: 'gone_404' } });
    const { data: img, response } = await gw
      .client()
      .images.generate({ model: 'gpt-image-1', prompt: uniquePrompt(), size: '1536x1024' })
      .withResponse();
    assert.equal(response.headers.get('x-image-gateway-endpoint'), NANO_BANANA_2);
    assert.equal(img.size, '1264x848');
    assert.equal(img.data.length, 1);
    const bodies = await fake.submitBodies();
    assert.equal(bodies.length, 2);
    assert.equal(bodies[1].aspect_ratio, '3:2');
  });

  it('lists the chain in models.retrieve', async () => {
    const model = await gw.client().models.retrieve('imagen-4');
    assert.deepEqual(model.endpoints, ['fal-ai/imagen4/preview', NANO_BANANA_2]);
    assert.deepEqual(model.capabilities.resolutions, ['1K', '2K']);
  });
});
