// E2B's official JavaScript SDK (`@e2b/code-interpreter` from npm,
// unchanged) under Node against `airlock serve --e2b-listen`, in either
// routing mode (tests/e2b_e2e.rs):
// - `headers URL`: E2B_API_URL and E2B_SANDBOX_URL both name the E2B
//   listener (plain HTTP; the sandbox is named in headers);
// - `domain DOMAIN`: only E2B_DOMAIN (`localhost:PORT`), so the SDK builds
//   `https://api.DOMAIN` and `https://<port>-<id>.DOMAIN`; Node trusts the
//   listener's local CA through NODE_EXTRA_CA_CERTS (set by the test: Node
//   reads it at start).
// The SDK comes from NODE_PATH (<cache>/node-clients, made by
// `cargo xtask test` from tests/clients/node/package-lock.json).
//
// Usage: node e2b_client.cjs headers URL KEY_OF_ALICE KEY_OF_BOB
//        node e2b_client.cjs domain DOMAIN KEY_OF_ALICE KEY_OF_BOB
'use strict'

const [MODE, WHERE, KEY_A, KEY_B] = process.argv.slice(2)
for (const name of ['E2B_API_URL', 'E2B_SANDBOX_URL', 'E2B_DOMAIN']) delete process.env[name]
if (MODE === 'headers') {
  process.env.E2B_API_URL = WHERE
  process.env.E2B_SANDBOX_URL = WHERE
} else if (MODE === 'domain') {
  if (!process.env.NODE_EXTRA_CA_CERTS) throw new Error('domain mode needs NODE_EXTRA_CA_CERTS')
  process.env.E2B_DOMAIN = WHERE
} else {
  throw new Error(`unknown mode ${MODE}: headers or domain`)
}
process.env.E2B_API_KEY = KEY_A

const { Sandbox } = require('@e2b/code-interpreter')
const { CommandExitError, NotFoundError, TimeoutError } = require('e2b')
const assert = require('node:assert/strict')

const CHART = `import matplotlib.pyplot as plt
plt.plot([1, 2, 3], [1, 4, 9])
plt.show()`

async function main() {
  const sbx = await Sandbox.create({ timeoutMs: 600_000 })
  let killed
  try {
    const first = await sbx.runCode('x = 1')
    assert.equal(first.error, undefined, String(first.error))
    const second = await sbx.runCode('x + 1')
    assert.equal(second.text, '2', JSON.stringify(second))
    const chart = await sbx.runCode(CHART)
    assert.equal(chart.error, undefined, String(chart.error))
    const png = Buffer.from(chart.results[0].png, 'base64')
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])

    const hi = await sbx.commands.run('echo hi')
    assert.equal(hi.stdout, 'hi\n')
    assert.equal(hi.exitCode, 0)

    const info = await sbx.files.write('/home/user/js.txt', 'hello from node')
    assert.equal(info.path, '/home/user/js.txt')
    assert.equal(await sbx.files.read('/home/user/js.txt'), 'hello from node')
    const names = (await sbx.files.list('/home/user')).map((e) => e.name)
    assert.ok(names.includes('js.txt'), String(names))

    // A background command: onStdout sees its lines as they come, in order.
    const lines = []
    const counting = await sbx.commands.run('for i in 1 2 3; do echo $i; sleep 0.2; done', {
      background: true,
      onStdout: (data) => lines.push(data),
    })
    assert.ok(counting.pid, 'no pid')
    const done = await counting.wait()
    assert.equal(lines.join(''), '1\n2\n3\n')
    assert.equal(done.exitCode, 0)

    // A command that reads what the client writes to its stdin.
    const reader = await sbx.commands.run('cat; echo end', { background: true, stdin: true })
    await sbx.commands.sendStdin(reader.pid, 'fed through stdin\n')
    await sbx.commands.closeStdin(reader.pid)
    const fed = await reader.wait()
    assert.equal(fed.stdout, 'fed through stdin\nend\n')

    // One that runs on until it is killed: the sandbox does other work
    // meanwhile, and a second client follows it (commands.connect).
    const ticker = await sbx.commands.run('for i in $(seq 1 600); do echo tick $i; sleep 0.1; done', {
      background: true,
    })
    const pids = (await sbx.commands.list()).map((p) => p.pid)
    assert.ok(pids.includes(ticker.pid), String(pids))
    const beside = await sbx.runCode('x + 10')
    assert.equal(beside.text, '11', JSON.stringify(beside))
    assert.equal((await sbx.commands.run('echo beside')).stdout, 'beside\n')
    const followed = []
    const follower = await sbx.commands.connect(ticker.pid, { onStdout: (data) => followed.push(data) })
    await new Promise((resolve) => setTimeout(resolve, 1000))
    assert.equal(await ticker.kill(), true)
    await assert.rejects(ticker.wait(), CommandExitError)
    await assert.rejects(follower.wait(), CommandExitError)
    assert.ok(followed.join('').includes('tick'), JSON.stringify(followed))
    const after = (await sbx.commands.list()).map((p) => p.pid)
    assert.ok(!after.includes(ticker.pid), String(after))

    // A cell past its timeout raises the SDK's TimeoutError; the
    // interpreter keeps its state.
    await assert.rejects(sbx.runCode('import time\ntime.sleep(60)', { timeoutMs: 3000 }), TimeoutError)
    const still = await sbx.runCode('x')
    assert.equal(still.text, '1', JSON.stringify(still))

    // Another tenant's key: the SDK's not-found error, and kill says
    // there was none.
    await assert.rejects(Sandbox.connect(sbx.sandboxId, { apiKey: KEY_B }), NotFoundError)
    assert.equal(await Sandbox.kill(sbx.sandboxId, { apiKey: KEY_B }), false)
    assert.equal(await sbx.isRunning(), true)
  } finally {
    killed = await sbx.kill()
  }
  assert.equal(killed, true)
  assert.equal(await sbx.isRunning(), false)
  console.log(`node (${MODE}): ok`)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
