// Harness for the Node SDK end-to-end tests: the real `image-gateway` and
// `fake-fal` binaries as processes on loopback, driven by the official
// `openai` npm package. The same shape as tests/sdk/python/conftest.py.
//
// Binaries: $IMAGE_GATEWAY_BIN and $FAKE_FAL_BIN, else
// $CARGO_TARGET_DIR/debug/... (target/debug/... when unset); `fake-fal` is the
// workspace's crates/fake-fal.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readFileSync, closeSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import OpenAI from 'openai';

import { assertNodeMeetsOpenAI } from './engines.mjs';

// Before anything runs: a Node the installed SDK does not support fails the suite.
assertNodeMeetsOpenAI();

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export const FAL_KEY = 'fal-sdk-test-key-node-71c3';
export const CLIENT_KEY = 'sk-sdk-test-client-key-node-4e1d';

function binary(envName, name) {
  let file = process.env[envName];
  if (!file) {
    let target = process.env.CARGO_TARGET_DIR || path.join(REPO, 'target');
    if (!path.isAbsolute(target)) target = path.join(REPO, target);
    file = path.join(target, 'debug', name);
  }
  if (!existsSync(file)) {
    throw new Error(
      `${name} binary not found at ${file}: run scripts/test-sdk or \`cargo build --workspace --bins\` (fake-fal is crates/fake-fal), or set ${envName}`,
    );
  }
  return file;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function stopProcess(child, graceMs = 3000) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

let promptCounter = 0;
/** A prompt no earlier request used, so the gateway's cache cannot answer it. */
export function uniquePrompt(text = 'a lighthouse at dusk') {
  promptCounter += 1;
  return `${text} (#${promptCounter} ${process.pid} ${process.hrtime.bigint()})`;
}

/** A running `fake-fal` and its control API. */
export class Fake {
  static async start(...flags) {
    const fake = new Fake();
    fake.baseConfig = {
      queue_ms: 0,
      run_ms: 0,
      record: !flags.includes('--no-record'),
      full_size_images: !flags.includes('--small-images'),
      noise: 0,
    };
    fake.child = spawn(binary('FAKE_FAL_BIN', 'fake-fal'), ['--listen', '127.0.0.1:0', ...flags], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const lines = createInterface({ input: fake.child.stdout });
    fake.port = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('fake-fal did not start')), 20_000);
      fake.child.once('exit', (code) => reject(new Error(`fake-fal exited with ${code}`)));
      lines.on('line', (line) => {
        const m = /listening on (\d+)/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      });
    });
    fake.url = `http://127.0.0.1:${fake.port}`;
    return fake;
  }

  async control(method, what, body) {
    const res = await fetch(`${this.url}/_fake/${what}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`fake control ${what} answered ${res.status}: ${text}`);
    return text ? JSON.parse(text) : null;
  }

  /** Forget calls, jobs, counts and faults; restore the start-up config. */
  async reset() {
    await this.control('POST', 'reset');
    await this.control('POST', 'config', this.baseConfig);
  }

  configure(changes) {
    return this.control('POST', 'config', { ...this.baseConfig, ...changes });
  }

  faults(...faults) {
    return this.control('POST', 'faults', faults);
  }

  counts() {
    return this.control('GET', 'counts');
  }

  async submitBodies() {
    const calls = await this.control('GET', 'calls');
    return calls.filter((c) => c.op === 'submit' || c.op === 'run').map((c) => c.body);
  }

  stop() {
    return stopProcess(this.child);
  }
}

/** A running `image-gateway` configured by environment. */
export class Gateway {
  static async start(fake, env = {}) {
    const gw = new Gateway();
    gw.apiKey = 'IMAGE_GATEWAY__AUTH__API_KEYS' in env ? CLIENT_KEY : 'sk-anything';
    const base = Object.fromEntries(
      Object.entries(process.env).filter(
        ([k]) => !/^(IMAGE_GATEWAY|FAL_|OPENAI_|RUST_LOG)/.test(k),
      ),
    );
    const settings = {
      IMAGE_GATEWAY__SERVER__WORKERS: '2',
      IMAGE_GATEWAY__SERVER__SHUTDOWN_GRACE_SECONDS: '1',
      // Keys and ledger in memory: each gateway its own, nothing on disk.
      IMAGE_GATEWAY__DATABASE__URL: 'sqlite::memory:',
      IMAGE_GATEWAY__FAL__POLL_INITIAL_DELAY_MS: '0',
      IMAGE_GATEWAY__FAL__POLL_MAX_DELAY_MS: '20',
      IMAGE_GATEWAY__FAL__RETRY_BASE_DELAY_MS: '5',
      IMAGE_GATEWAY__FAL__RETRY_MAX_DELAY_MS: '50',
      IMAGE_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS: '30',
      ...(fake
        ? {
            FAL_KEY,
            IMAGE_GATEWAY__FAL__QUEUE_URL: fake.url,
            IMAGE_GATEWAY__FAL__RUN_URL: `${fake.url}/run`,
          }
        : {}),
      ...env,
    };
    gw.env = settings;
    gw.logPath = path.join(mkdtempSync(path.join(tmpdir(), 'gw-node-')), 'gateway.log');
    let lastLog = '';
    // A port picked free can be taken before the gateway binds it: retry.
    for (let attempt = 0; attempt < 5; attempt += 1) {
      gw.port = await freePort();
      gw.root = `http://127.0.0.1:${gw.port}`;
      gw.baseURL = `${gw.root}/v1`;
      const log = openSync(gw.logPath, 'w');
      gw.child = spawn(binary('IMAGE_GATEWAY_BIN', 'image-gateway'), [], {
        env: { ...base, ...settings, IMAGE_GATEWAY__SERVER__LISTEN: `127.0.0.1:${gw.port}` },
        stdio: ['ignore', log, log],
      });
      closeSync(log);
      if (await gw.waitReady()) return gw;
      await stopProcess(gw.child);
      lastLog = gw.log();
      if (!lastLog.includes('Address already in use')) break;
    }
    throw new Error(`image-gateway did not become ready:\n${lastLog}`);
  }

  async waitReady(timeoutMs = 20_000) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.child.exitCode !== null) return false;
      try {
        const res = await fetch(`${this.root}/readyz`);
        if (res.status === 200 && this.child.exitCode === null) {
          this.readyz = await res.json();
          return true;
        }
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    return false;
  }

  log() {
    return readFileSync(this.logPath, 'utf8');
  }

  client(options = {}) {
    return new OpenAI({
      apiKey: this.apiKey,
      baseURL: this.baseURL,
      timeout: 30_000,
      maxRetries: 0,
      ...options,
    });
  }

  stop() {
    return stopProcess(this.child);
  }
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const JPEG_SOF = new Set([0xc0, 0xc1, 0xc2, 0xc3, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcd, 0xce, 0xcf]);

/** [format, width, height] of a PNG, JPEG or WebP, read from its header. */
export function imageInfo(buf) {
  if (buf.subarray(0, 8).equals(PNG_SIGNATURE)) {
    if (buf.toString('latin1', 12, 16) !== 'IHDR') throw new Error('PNG without IHDR first');
    return ['png', buf.readUInt32BE(16), buf.readUInt32BE(20)];
  }
  if (buf[0] === 0xff && buf[1] === 0xd8 && buf[2] === 0xff) {
    let i = 2;
    while (i + 4 <= buf.length) {
      if (buf[i] !== 0xff) throw new Error(`JPEG segment without marker at ${i}`);
      const marker = buf[i + 1];
      if (marker === 0xff) {
        i += 1;
        continue;
      }
      if (JPEG_SOF.has(marker)) return ['jpeg', buf.readUInt16BE(i + 7), buf.readUInt16BE(i + 5)];
      i += 2 + buf.readUInt16BE(i + 2);
    }
    throw new Error('JPEG without a start-of-frame segment');
  }
  if (buf.toString('latin1', 0, 4) === 'RIFF' && buf.toString('latin1', 8, 12) === 'WEBP') {
    const chunk = buf.toString('latin1', 12, 16);
    if (chunk === 'VP8 ') return ['webp', buf.readUInt16LE(26) & 0x3fff, buf.readUInt16LE(28) & 0x3fff];
    if (chunk === 'VP8L') {
      const bits = buf.readUInt32LE(21);
      return ['webp', (bits & 0x3fff) + 1, ((bits >>> 14) & 0x3fff) + 1];
    }
    if (chunk === 'VP8X') return ['webp', buf.readUIntLE(24, 3) + 1, buf.readUIntLE(27, 3) + 1];
    throw new Error(`unknown WebP chunk ${chunk}`);
  }
  throw new Error(`not a PNG, JPEG or WebP image: ${buf.subarray(0, 16).toString('hex')}`);
}

export const b64Image = (b64) => imageInfo(Buffer.from(b64, 'base64'));

export async function urlImage(url) {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`${url} answered ${res.status}`);
  return imageInfo(Buffer.from(await res.arrayBuffer()));
}
