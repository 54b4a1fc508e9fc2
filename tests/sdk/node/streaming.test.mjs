// `stream: true` consumed with `for await` through the Node SDK: one
// image_generation.completed event per image, and a failure after the stream
// started thrown from the iterator.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';

import OpenAI from 'openai';

import { b64Image, Fake, Gateway, uniquePrompt } from './harness.mjs';

let fake;
let gw;
let client;

before(async () => {
  fake = await Fake.start('--small-images');
  gw = await Gateway.start(fake, {
    IMAGE_GATEWAY__FAL__MAX_RETRIES: '0',
    IMAGE_GATEWAY__SERVER__STREAM_KEEPALIVE_SECONDS: '1',
  });
  client = gw.client();
});

after(async () => {
  await gw?.stop();
  await fake?.stop();
});

beforeEach(() => fake.reset());

describe('streaming', () => {
  for (const partial of [0, 2]) {
    it(`yields a completed event per image (partial_images ${partial})`, async () => {
      const stream = await client.images.generate({
        prompt: uniquePrompt(),
        stream: true,
        partial_images: partial,
        n: 2,
        size: '1024x1792',
      });

      const events = [];
      for await (const event of stream) events.push(event);

      assert.deepEqual(
        events.map((e) => e.type),
        ['image_generation.completed', 'image_generation.completed'],
      );
      for (const e of events) {
        assert.deepEqual(b64Image(e.b64_json), ['png', 48, 88]);
        assert.equal(e.size, '48x88');
        assert.equal(e.output_format, 'png');
        assert.ok(e.created_at > 1_700_000_000);
        assert.ok(e.usage);
      }
    });
  }

  it('keeps streaming through keep-alives while fal works', async () => {
    await fake.configure({ queue_ms: 1500 });
    const { data: stream, response } = await client.images
      .generate({ prompt: uniquePrompt(), stream: true, output_format: 'jpeg' })
      .withResponse();

    assert.match(response.headers.get('content-type'), /^text\/event-stream/);
    const events = [];
    for await (const event of stream) events.push(event);
    assert.deepEqual(events.map((e) => e.type), ['image_generation.completed']);
    assert.equal(b64Image(events[0].b64_json)[0], 'jpeg');
  });

  it('throws from the iterator when fal fails after the stream started', async () => {
    await fake.faults({
      op: 'stream',
      action: { kind: 'completed_with_error', error: 'runner crashed', error_type: 'runner_disconnected' },
    });
    const stream = await client.images.generate({ prompt: uniquePrompt(), stream: true });

    await assert.rejects(
      (async () => {
        for await (const _ of stream) {
          // nothing arrives before the error
        }
      })(),
      (e) => {
        assert.ok(e instanceof OpenAI.APIError);
        assert.equal(e.code, 'upstream_unavailable');
        assert.equal(e.type, 'server_error');
        assert.ok(e.requestID);
        return true;
      },
    );
  });

  it('rejects a bad request before the stream starts', async () => {
    await assert.rejects(
      client.images.generate({ prompt: uniquePrompt(), stream: true, partial_images: 4 }),
      (e) => e instanceof OpenAI.BadRequestError && e.param === 'partial_images',
    );
  });
});
