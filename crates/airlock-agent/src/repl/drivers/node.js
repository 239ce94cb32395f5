// The JavaScript cell driver of airlock-agent (crates/airlock-agent/src/repl).
// Started as `node -e DRIVER`; talks to the agent only on fds 3 (commands)
// and 4 (reports), never on stdout or stderr.
//
// Cells are evaluated by Node's own REPL machinery (`repl.start` over null
// streams, then `server.eval`): it runs code in the global context, keeps
// top-level `let`/`const`/`class` declarations from cell to cell, hoists
// declarations out of code with top-level `await`, and supports `require`
// and dynamic `import()`. `breakEvalOnSigint` makes SIGINT stop synchronous
// code; a SIGINT while the cell awaits ends the cell (the promise is left
// behind). A cell ends, as `node -e` does, once its code has run and the
// event loop holds no more work it started (timers, sockets, children):
// something meant to outlive the cell must be `unref()`ed.
//
// Rich results (docs/protocol.md, "result"): the value of a cell's last
// expression, unless `undefined`, goes to the agent as a `result` with
// `text/plain` from `util.inspect` (as Node's REPL prints it); an error the
// eval reports goes as a `cell_error` besides its stack on stderr.
'use strict';
const fs = require('fs');
const net = require('net');
const repl = require('repl');
const util = require('util');
const v8 = require('v8');
const vm = require('vm');
const { Writable, Readable } = require('stream');

// Common modules, loaded once so that a cell requiring them is fast.
for (const name of ['path', 'os', 'crypto', 'child_process', 'events', 'http',
  'https', 'url', 'zlib', 'assert', 'buffer', 'string_decoder', 'readline', 'timers/promises']) {
  require(name);
}

// process.stdout and stderr are made on first use, and a pipe's handle
// counts as work in the loop: make them now, before any cell's baseline.
void process.stdout.fd;
void process.stderr.fd;

const COMMANDS = 3;
const REPORTS = 4;
const report = (line) => fs.writeSync(REPORTS, line + '\n');

// A `result` or `cell_error` of `cell`: its line, then its JSON. Output
// to pipes is synchronous in Node, so it is in its pipe already.
function sendPayload(cell, kind, payload) {
  if (current !== cell) return;
  const body = Buffer.from(JSON.stringify(payload), 'utf8');
  const all = Buffer.concat([Buffer.from(`${kind} ${cell.id} ${body.length}\n`), body]);
  let at = 0;
  while (at < all.length) at += fs.writeSync(REPORTS, all, at, all.length - at);
}

function showValue(cell, value) {
  if (value === undefined) return;
  let text;
  try {
    text = util.inspect(value);
  } catch (e) {
    text = `[value not shown: ${e}]`;
  }
  sendPayload(cell, 'result', { data: { 'text/plain': text }, is_main_result: true });
}

// The REPL's domain hands over only the printed error:
// `Uncaught TypeError: bad` then the stack.
function errorOfText(text) {
  const first = text.replace(/^\s+/, '').split('\n', 1)[0].replace(/^Uncaught /, '');
  const named = /^([A-Za-z_$][\w$]*): ([^]*)$/.exec(first);
  return {
    name: named ? named[1] : 'Error',
    value: named ? named[2] : first,
    traceback: text,
  };
}

function errorOf(err) {
  const isError = err !== null && typeof err === 'object';
  let stack = '';
  try {
    stack = isError && typeof err.stack === 'string' ? withoutDriverFrames(err.stack) : util.inspect(err);
  } catch (e) {
    stack = String(e);
  }
  return {
    name: isError && typeof err.name === 'string' ? err.name : typeof err,
    value: isError && typeof err.message === 'string' ? err.message : String(err),
    traceback: stack,
  };
}

// The REPL hands errors to its domain, which prints them on its output:
// errors of a cell's code and of its callbacks go to stderr and fail the
// running cell; an error before the eval called back ends the eval.
let current = null;
const errors = new Writable({
  write(chunk, _encoding, done) {
    const text = String(chunk);
    const cell = current;
    if (text.trim() !== '') {
      process.stderr.write(withoutDriverFrames(text));
      if (cell) sendPayload(cell, 'cell_error', errorOfText(withoutDriverFrames(text)));
      if (cell) {
        if (/ERR_SCRIPT_EXECUTION_INTERRUPTED|interrupted by `SIGINT`/.test(text)) {
          // Interrupted: the cell ends now, as on a SIGINT while it
          // awaits. Waiting for the loop to go idle would wait for the
          // timers it made before the interrupt (a SIGINT between
          // `setTimeout(ok, 100000)` and its `await`), past the agent's
          // grace, and the interpreter would be killed.
          cell.status = 130;
          cell.evaluated = true;
          finish(cell, 130);
        } else {
          if (cell.status === 0) cell.status = 1;
          if (!cell.evaluated) evaluated(cell);
        }
      }
    }
    done();
  },
});
const server = repl.start({
  input: new Readable({ read() {} }),
  output: errors,
  prompt: '',
  terminal: false,
  useGlobal: true,
  breakEvalOnSigint: true,
  ignoreUndefined: true,
});

// A stack ends where the REPL's machinery (and this driver) begins.
function withoutDriverFrames(text) {
  const lines = text.split('\n');
  const cut = lines.findIndex((l) => /^\s+at (sigintHandlersWrap|.*\(node:(vm|repl|domain):)/.test(l));
  if (cut < 0) return text;
  return lines.slice(0, cut).join('\n') + '\n';
}

const baseline = () => process.getActiveResourcesInfo().length;

function finish(cell, status) {
  if (current !== cell) return;
  current = null;
  if (process.exitCode !== undefined) {
    if (status === 0) status = process.exitCode;
    process.exitCode = undefined;
  }
  for (const [name, old] of cell.saved) {
    if (old === undefined) delete process.env[name];
    else process.env[name] = old;
  }
  report(`done ${cell.id} ${status & 0xff}`);
}

// The cell's work is done when the loop holds no more than it did before
// the cell (our own poll is unref'd, so it does not count).
function whenIdle(cell, base) {
  if (current !== cell) return;
  if (baseline() <= base) return finish(cell, cell.status);
  setTimeout(() => whenIdle(cell, base), 5).unref();
}

function run(id, path, env) {
  const cell = { id, path, status: 0, saved: [], evaluated: false, base: 0 };
  for (const [name, value] of env) {
    cell.saved.push([name, process.env[name]]);
    process.env[name] = value;
  }
  current = cell;
  let code;
  try {
    code = fs.readFileSync(path, 'utf8');
  } catch (e) {
    process.stderr.write(`${e.message}\n`);
    return finish(cell, 1);
  }
  cell.base = baseline();
  // While synchronous code runs, the REPL's SIGINT watchdog must be the
  // only SIGINT handler: a `process.on('SIGINT')` listener would make
  // libuv reset the signal to its default (death) when the REPL removes
  // listeners around the script.
  process.removeListener('SIGINT', interrupt);
  try {
    server.eval(code, server.context, '[eval]', (err, value) => {
      if (current !== cell || cell.evaluated) return;
      if (err) {
        process.stderr.write(withoutDriverFrames(`Uncaught ${util.inspect(err)}\n`));
        cell.status = 1;
        sendPayload(cell, 'cell_error', errorOf(err));
      } else {
        showValue(cell, value);
      }
      evaluated(cell);
    });
  } finally {
    process.on('SIGINT', interrupt);
  }
}

function evaluated(cell) {
  cell.evaluated = true;
  setImmediate(() => whenIdle(cell, cell.base));
}

// A SIGINT outside synchronous code (an await, the wait for timers) ends
// the running cell; one between cells is ignored.
function interrupt() {
  if (current) {
    process.stderr.write('Error: Script execution was interrupted by `SIGINT`\n');
    finish(current, 130);
  }
}
process.on('SIGINT', interrupt);
process.on('uncaughtException', (err) => {
  process.stderr.write(`Uncaught ${util.inspect(err)}\n`);
  if (current) current.status = 1;
});
process.on('unhandledRejection', (err) => {
  process.stderr.write(`Uncaught ${util.inspect(err)}\n`);
  if (current) current.status = 1;
});

// After a restore from a memory template (crates/airlock-agent/src/repl,
// docs/templates.md): every clone of the template holds this process with
// the same random state. Returns the report line.
//
// Math.random: V8 seeds a context's generator on its first Math.random(),
// from --random-seed when set (else from the isolate's own generator, which
// the clones share). This driver never draws in the main context, so with
// the agent's fresh seed set, the main context's first draw seeds it, and
// equals the first draw of a context made now; if they differ, the main
// context was seeded before (in the template: shared), and nothing here
// can reseed it. The flag goes back to 0 so that later contexts (and
// workers) seed themselves from their isolate's generator as usual.
//
// crypto: the agent started this Node with the clock a day back and the
// clone's reseed set the real time, so OpenSSL's DRBGs, which reseed when
// the clock is more than their interval from their last seeding, reseed
// from the clone's kernel on their first draw, whenever it comes: nothing
// to do here (a draw now would cost a run that never uses crypto about
// 200 ms under TCG).
//
// performance.timeOrigin was read from the clock when this Node started
// (in the template, a day back): it is rebased so that timeOrigin +
// performance.now() is the wall clock again, as in a Node started now.
function reseed(word) {
  const seed = Number(word) | 0;
  if (!/^[0-9]+$/.test(word) || seed === 0) return 'error bad seed';
  let fresh;
  try {
    v8.setFlagsFromString(`--random-seed=${seed}`);
    const first = vm.runInNewContext('Math.random()');
    fresh = Math.random() === first;
  } catch (e) {
    return `error ${String(e).replace(/\s+/g, ' ').slice(0, 120)}`;
  } finally {
    v8.setFlagsFromString('--random-seed=0');
  }
  if (!fresh) return 'error Math.random was seeded before the reseed';
  const { performance } = require('perf_hooks');
  Object.defineProperty(performance, 'timeOrigin', {
    value: Date.now() - performance.now(),
    enumerable: true,
    configurable: true,
  });
  return 'reseeded';
}

let pending = '';
let expected = null;
const commands = new net.Socket({ fd: COMMANDS, readable: true, writable: false });
commands.setEncoding('utf8');
commands.on('data', (chunk) => {
  pending += chunk;
  let at;
  while ((at = pending.indexOf('\n')) >= 0) {
    const line = pending.slice(0, at);
    pending = pending.slice(at + 1);
    handle(line);
  }
});
commands.on('end', () => process.exit(0));

function handle(line) {
  // The agent acknowledges each result; this driver does not wait for it
  // (it cannot block on the command socket).
  if (line === 'ack' && !expected) return;
  // The agent's interrupt, as a command: it ends a cell that awaits (the
  // event loop is free to read it) without a signal. A SIGINT follows
  // only if the cell is still running, i.e. runs synchronous code, where
  // the REPL's watchdog stops it; sent at any moment, a SIGINT can find
  // the REPL between its listeners and kill the interpreter.
  if (line === 'interrupt' && !expected) return interrupt();
  if (expected) {
    const eq = line.indexOf('=');
    expected.env.push([line.slice(0, eq), line.slice(eq + 1)]);
    if (expected.env.length === expected.count) {
      const { id, path, env } = expected;
      expected = null;
      run(id, path, env);
    }
    return;
  }
  const words = line.split(' ');
  if (words[0] === 'cell' && words.length === 4) {
    const count = Number(words[3]);
    if (count === 0) return run(words[1], words[2], []);
    expected = { id: words[1], path: words[2], count, env: [] };
  } else if (words[0] === 'reseed' && words.length === 2 && !current) {
    report(reseed(words[1]));
  } else {
    report('error unknown command');
  }
}

report('ready');
