// The engine check the harness runs before any SDK test.

import assert from 'node:assert/strict';
import { it } from 'node:test';

import { installedOpenAI, satisfies } from './engines.mjs';

it('reads npm engine ranges the way npm does for the forms packages use', () => {
  const cases = [
    ['v20.20.2', '>=22.0.0', false],
    ['v22.0.0', '>=22.0.0', true],
    ['v24.3.1', '>=22.0.0', true],
    ['v20.20.2', '>=18', true],
    ['v20.20.2', '^20.19.0 || >=22.12.0', true],
    ['v21.0.0', '^20.19.0 || >=22.12.0', false],
    ['v22.11.0', '^20.19.0 || >=22.12.0', false],
    ['v20.20.2', '>= 18.0.0 < 21', true],
    ['v21.1.0', '>= 18.0.0 < 21', false],
    ['v20.20.2', '20.x', true],
    ['v20.20.2', '~20.19', false],
    ['v20.20.2', '*', true],
  ];
  for (const [node, range, expected] of cases) {
    assert.equal(satisfies(node, range), expected, `${node} against ${range}`);
  }
});

it('the installed openai supports this Node', () => {
  const { version, node } = installedOpenAI();
  assert.ok(
    node === null || satisfies(process.version, node),
    `openai ${version} declares engines.node ${node}; this is ${process.version}`,
  );
});
