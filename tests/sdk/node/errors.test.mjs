// Error statuses as the Node SDK's error classes (with .status, .code,
// .param, .type and .requestID), and the SDK's retry behaviour with the
// gateway's retry-after and x-should-retry headers.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';

import OpenAI from 'openai';

import { CLIENT_KEY, Fake, FAL_KEY, Gateway, uniquePrompt } from './harness.mjs';

let fake;
let gw;
let deadlineGw;
let client;

before(async () => {
  fake = await Fake.start('--small-images');
  // The gateway's own fal retries off: one injected fault, one client error.
  gw = await Gateway.start(fake, {
    IMAGE_GATEWAY__AUTH__API_KEYS: `sk-some-other-key,${CLIENT_KEY}`,
    IMAGE_GATEWAY__FAL__MAX_RETRIES: '0',
  });
  deadlineGw = await Gateway.start(fake, { IMAGE_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS: '1' });
  client = gw.client();
});

after(async () => {
  await gw?.stop();
  await deadlineGw?.stop();
  await fake?.stop();
});

beforeEach(() => fake.reset());

const generate = (c, params = {}) =>
  c.images.generate({ prompt: uniquePrompt(), response_format: 'b64_json', ...params });

/** Assert one SDK error, field by field; returns true for assert.rejects. */
function expectError(cls, status, type, code, param) {
  return (e) => {
    assert.ok(e instanceof cls, `${e?.constructor?.name} is not ${cls.name}: ${e}`);
    assert.equal(e.status, status);
    assert.equal(e.type, type);
    assert.equal(e.code, code);
    assert.equal(e.param, param);
    assert.ok(e.requestID, 'requestID is set');
    assert.equal(e.requestID, e.headers.get('x-request-id'));
    return true;
  };
}

describe('error classes', () => {
  it('400 BadRequestError naming size', async () => {
    await assert.rejects(generate(client, { size: '1000x10' }), (e) => {
      expectError(OpenAI.BadRequestError, 400, 'invalid_request_error', null, 'size')(e);
      assert.equal(e.headers.get('x-should-retry'), 'false');
      return true;
    });
  });

  it('400 BadRequestError naming n', async () => {
    await assert.rejects(
      generate(client, { n: 11 }),
      expectError(OpenAI.BadRequestError, 400, 'invalid_request_error', null, 'n'),
    );
  });

  it('401 AuthenticationError for a wrong key', async () => {
    await assert.rejects(
      generate(gw.client({ apiKey: 'sk-wrong' })),
      expectError(OpenAI.AuthenticationError, 401, 'authentication_error', 'invalid_api_key', null),
    );
    assert.equal((await fake.counts()).submit, 0);
  });

  it('404 NotFoundError for an unknown model', async () => {
    await assert.rejects(
      generate(client, { model: 'dall-e-9' }),
      expectError(OpenAI.NotFoundError, 404, 'invalid_request_error', 'model_not_found', 'model'),
    );
  });

  it('429 RateLimitError when fal rate-limits, with retry-after', async () => {
    await fake.faults({
      op: 'submit',
      times: 0,
      action: { kind: 'respond', status: 429, headers: [['retry-after', '1']] },
    });
    await assert.rejects(generate(client), (e) => {
      expectError(OpenAI.RateLimitError, 429, 'rate_limit_error', 'rate_limit_exceeded', null)(e);
      assert.equal(e.headers.get('retry-after'), '1');
      return true;
    });
  });

  it('400 content_policy_violation when fal rejects the prompt', async () => {
    await fake.faults({
      op: 'result',
      action: { kind: 'respond', status: 422, body: '{"detail":[{"msg":"flagged by the safety checker"}]}' },
    });
    await assert.rejects(generate(client), (e) => {
      expectError(OpenAI.BadRequestError, 400, 'invalid_request_error', 'content_policy_violation', 'prompt')(e);
      assert.match(e.message, /flagged by the safety checker/);
      return true;
    });
  });

  it('502 InternalServerError when fal refuses the FAL_KEY', async () => {
    await fake.faults({ op: 'submit', action: { kind: 'respond', status: 401 } });
    await assert.rejects(generate(client), (e) => {
      expectError(OpenAI.InternalServerError, 502, 'server_error', 'upstream_error', null)(e);
      assert.match(e.message, /upstream credentials/);
      assert.ok(!e.message.includes(FAL_KEY));
      return true;
    });
  });

  it('504 InternalServerError when the deadline passes', async () => {
    await fake.configure({ queue_ms: 30_000 });
    await assert.rejects(
      generate(deadlineGw.client()),
      expectError(OpenAI.InternalServerError, 504, 'server_error', 'upstream_timeout', null),
    );
  });
});

describe('SDK retries', () => {
  it('retries a 429 after its retry-after and then succeeds', async () => {
    await fake.faults({
      op: 'submit',
      times: 1,
      action: { kind: 'respond', status: 429, headers: [['retry-after', '1']] },
    });

    const started = performance.now();
    const img = await generate(gw.client({ maxRetries: 2 }));
    const elapsed = performance.now() - started;

    assert.equal(img.data.length, 1);
    assert.equal((await fake.counts()).submit, 2);
    assert.ok(elapsed >= 900, `retried after ${elapsed} ms, before retry-after: 1`);
  });

  it('does not retry a 502 marked x-should-retry: false', async () => {
    await fake.faults({ op: 'submit', times: 0, action: { kind: 'respond', status: 401 } });

    await assert.rejects(generate(gw.client({ maxRetries: 2 })), OpenAI.InternalServerError);
    assert.equal((await fake.counts()).submit, 1);
  });

  it('retries a transient upstream failure', async () => {
    await fake.faults({ op: 'result', times: 1, action: { kind: 'respond', status: 500 } });

    const img = await generate(gw.client({ maxRetries: 2 }));
    assert.equal(img.data.length, 1);
    assert.equal((await fake.counts()).submit, 2);
  });
});
