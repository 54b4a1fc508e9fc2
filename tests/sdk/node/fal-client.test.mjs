// fal's official JS client (`@fal-ai/client`) against the project's fake fal:
// the fake must answer what fal's own client accepts (queue submit, status,
// the status event stream, result, cancel, errors). The client is used as
// shipped; its documented request middleware only points `https://queue.fal.run`
// at the fake. (The JS client builds status/result/cancel URLs from the
// endpoint id; the Python suite checks the URLs the fake advertises.)

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';

import { ApiError, createFalClient } from '@fal-ai/client';

import { Fake, FAL_KEY } from './harness.mjs';

const ENDPOINT = 'fal-ai/imagen4/preview/fast';

let fake;
let fal;

before(async () => {
  fake = await Fake.start('--small-images');
  fal = createFalClient({
    credentials: FAL_KEY,
    requestMiddleware: async (req) => ({
      ...req,
      url: req.url.replace(/^https:\/\/queue\.fal\.run/, fake.url),
    }),
  });
});

after(async () => {
  await fake?.stop();
});

beforeEach(() => fake.reset());

describe('@fal-ai/client against the fake fal', () => {
  it('submits, polls the status and reads the result', async () => {
    const submitted = await fal.queue.submit(ENDPOINT, {
      input: { prompt: 'a lighthouse', num_images: 2, aspect_ratio: '9:16' },
    });
    assert.ok(submitted.request_id);
    const status = await fal.queue.status(ENDPOINT, { requestId: submitted.request_id });
    assert.ok(['IN_QUEUE', 'IN_PROGRESS', 'COMPLETED'].includes(status.status));

    const result = await fal.queue.result(ENDPOINT, { requestId: submitted.request_id });

    assert.deepEqual(
      result.data.images.map((i) => [i.width, i.height]),
      [
        [48, 88],
        [48, 88],
      ],
    );
    const calls = await fake.control('GET', 'calls');
    assert.ok(calls.every((c) => c.authorization === `Key ${FAL_KEY}`));
  });

  it('follows the status event stream to COMPLETED, keep-alive comments included', async () => {
    await fake.configure({ run_ms: 400, stream_keepalive_ms: 50 });
    const { request_id: requestId } = await fal.queue.submit(ENDPOINT, { input: { prompt: 'x' } });

    const done = await fal.queue.subscribeToStatus(ENDPOINT, { requestId, mode: 'streaming' });

    assert.equal(done.status, 'COMPLETED');
    assert.equal((await fake.counts()).stream, 1);
  });

  it('sends a start timeout the fake understands', async () => {
    const result = await fal.subscribe(ENDPOINT, {
      input: { prompt: 'x', sync_mode: true },
      startTimeout: 30,
      pollInterval: 50,
    });

    assert.match(result.data.images[0].url, /^data:image\/png;base64,/);
    const calls = await fake.control('GET', 'calls');
    const submit = calls.find((c) => c.op === 'submit');
    assert.equal(Object.fromEntries(submit.fal_headers)['x-fal-request-timeout'], '30');
  });

  it('cancels, and the result of a cancelled request is an error', async () => {
    await fake.configure({ run_ms: 30_000 });
    const { request_id: requestId } = await fal.queue.submit(ENDPOINT, { input: { prompt: 'x' } });

    await fal.queue.cancel(ENDPOINT, { requestId });

    assert.equal((await fake.counts()).cancelled_jobs, 1);
    await assert.rejects(fal.queue.result(ENDPOINT, { requestId }), (e) => {
      assert.ok(e instanceof ApiError);
      assert.equal(e.status, 499);
      return true;
    });
  });

  it("reads a failed job's result as the model's error", async () => {
    const detail = [{ loc: ['body', 'prompt'], msg: 'flagged', type: 'content_policy_violation' }];
    await fake.faults({
      op: 'status',
      action: {
        kind: 'completed_with_error',
        error: 'flagged',
        error_type: 'content_policy_violation',
        result_status: 422,
        result_body: JSON.stringify({ detail }),
      },
    });
    const { request_id: requestId } = await fal.queue.submit(ENDPOINT, { input: { prompt: 'x' } });
    const status = await fal.queue.status(ENDPOINT, { requestId });
    assert.equal(status.status, 'COMPLETED');

    await assert.rejects(fal.queue.result(ENDPOINT, { requestId }), (e) => {
      assert.ok(e instanceof ApiError);
      assert.equal(e.status, 422);
      assert.deepEqual(e.body.detail, detail);
      return true;
    });
  });
});
