// Whether this Node meets the `engines.node` range the installed `openai`
// package declares. npm only warns about an unmet engine (and `npm ci
// --loglevel=error` hides even that), so the harness checks it itself and
// refuses to run: a suite that passes on a Node the SDK does not support
// proves nothing about the versions the README names.

import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const parse = (v) => {
  const m = /^v?(\d+)(?:\.(\d+|x|\*))?(?:\.(\d+|x|\*))?/.exec(v.trim());
  if (!m) return null;
  const part = (s) => (s === undefined || s === 'x' || s === '*' ? null : Number(s));
  return [Number(m[1]), part(m[2]), part(m[3])];
};

const cmp = (a, b) => {
  for (let i = 0; i < 3; i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return Math.sign(d);
  }
  return 0;
};

/** One comparator (`>=22.0.0`, `^20.19`, `~18.2`, `20.x`, `*`) against `version`. */
function meets(version, comparator) {
  if (comparator === '' || comparator === '*' || comparator === 'x') return true;
  const m = /^(>=|<=|>|<|=|\^|~)?\s*(.+)$/.exec(comparator);
  const want = m && parse(m[2]);
  if (!want) throw new Error(`cannot read the engine range part ${JSON.stringify(comparator)}`);
  const op = m[1] ?? '=';
  const c = cmp(version, want);
  switch (op) {
    case '>=': return c >= 0;
    case '>': return c > 0;
    case '<=': return c <= 0;
    case '<': return c < 0;
    case '^': return c >= 0 && version[0] === want[0];
    case '~': return c >= 0 && version[0] === want[0] && (want[1] === null || version[1] === want[1]);
    default: // `=` or a bare version: the parts given must match
      return want.every((p, i) => p === null || p === version[i]);
  }
}

/** Whether `nodeVersion` (e.g. `v20.20.2`) satisfies an npm engines range. */
export function satisfies(nodeVersion, range) {
  const version = parse(nodeVersion);
  return range.split('||').some((alt) =>
    alt
      .trim()
      .replace(/(>=|<=|>|<|=|\^|~)\s+/g, '$1')
      .split(/\s+/)
      .every((c) => meets(version, c)),
  );
}

/** The installed `openai` package's version and declared Node range (if any). */
export function installedOpenAI() {
  // Some releases do not export ./package.json: walk up from the entry point.
  let dir = path.dirname(createRequire(import.meta.url).resolve('openai'));
  for (;;) {
    const file = path.join(dir, 'package.json');
    if (existsSync(file)) {
      const pkg = JSON.parse(readFileSync(file, 'utf8'));
      if (pkg.name === 'openai') return { version: pkg.version, node: pkg.engines?.node ?? null };
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find the installed openai package.json');
    dir = up;
  }
}

/** Throws, loudly, when this Node does not meet the installed openai's engines.node. */
export function assertNodeMeetsOpenAI() {
  const { version, node } = installedOpenAI();
  if (node && !satisfies(process.version, node)) {
    const line = '!'.repeat(78);
    throw new Error(
      `\n${line}\nThe installed openai ${version} declares engines.node "${node}", ` +
        `but this is Node ${process.version}.\nInstall a Node that meets it, or pin an openai ` +
        `release that supports this Node in tests/sdk/node/package.json (then npm install).\n${line}`,
    );
  }
}
