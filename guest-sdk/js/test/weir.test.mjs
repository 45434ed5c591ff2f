// Unit tests of weir.js against the in-memory host in host.mjs:
//   node --import ./test/register.mjs --test test/weir.test.mjs
// (cargo runs them too: tests/e2e/javascript.rs).

import assert from 'node:assert/strict';
import { beforeEach, test } from 'node:test';

import {
  I64_MAX,
  I64_MIN,
  Malformed,
  advanceProcessingTime,
  advanceWatermark,
  finish,
  fireProcessingTime,
  foreign,
  host,
  reset,
  timersOf,
  unpackWrites,
  writePacked,
} from './host.mjs';

let fresh = 0;

/** A new instance of weir.js: its state registry is per module instance. */
async function sdk() {
  fresh += 1;
  return import(`../weir.js?instance=${fresh}`);
}

const utf8 = (s) => new TextEncoder().encode(s);
const str = (b) => new TextDecoder().decode(b);

/**
 * A packed batch (layout v1) of `[key, value, timestamp]` records, made in
 * another realm as the bindings make it.
 */
function batch(records) {
  const parts = [];
  for (const [key, value, ts] of records) {
    const k = key === null ? null : utf8(key);
    const v = utf8(value);
    const rec = new Uint8Array(1 + (ts === null ? 0 : 8) + (k === null ? 0 : 4 + k.length) + 4 + v.length);
    const view = new DataView(rec.buffer);
    rec[0] = (k === null ? 0 : 1) | (ts === null ? 0 : 2);
    let pos = 1;
    if (ts !== null) {
      view.setBigInt64(pos, ts, true);
      pos += 8;
    }
    if (k !== null) {
      view.setUint32(pos, k.length, true);
      rec.set(k, pos + 4);
      pos += 4 + k.length;
    }
    view.setUint32(pos, v.length, true);
    rec.set(v, pos + 4);
    parts.push(rec);
  }
  const out = new foreign.Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

/** The records of every batch emitted so far, as `[key, value, timestamp]`. */
function emitted(weir) {
  return host.emitted.flatMap((b) =>
    weir.decodeBatch(b).map((r) => [r.key === null ? null : str(r.key), str(r.value), r.timestamp]),
  );
}

/** `v` with every Uint8Array (of any realm) as a plain array, to compare. */
const plain = (v) =>
  ArrayBuffer.isView(v)
    ? [...v]
    : v !== null && typeof v === 'object'
      ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]))
      : v;

const ctx = (config = '') => ({ uid: 'op', config, subtaskIndex: 0, parallelism: 1, maxParallelism: 128, attemptNumber: 2 });

/** Exports `Op` from a fresh SDK and opens it; returns `[weir, operator]`. */
async function open(makeOp, config = '') {
  const weir = await sdk();
  const operator = weir.exportOperator(makeOp(weir));
  assert.equal(operator.open(ctx(config)), undefined);
  return [weir, operator];
}

function wordCount(weir) {
  return class extends weir.Operator {
    open() {
      this.count = new weir.ValueState('count');
    }

    process(record, out) {
      // The batch comes from the bindings' realm; the SDK re-views it in ours.
      assert.ok((record.key === null || record.key instanceof Uint8Array) && record.value instanceof Uint8Array);
      const n = this.count.get(0) + 1;
      this.count.set(n);
      out.emit(record.key, String(n));
    }
  };
}

beforeEach(reset);

test('a packed batch round-trips through the emitter and the decoder', async () => {
  const weir = await sdk();
  const out = new weir.Emitter();
  const big = 'é'.repeat(1000);
  out.emit('k', 'v', 5n);
  out.emit(null, utf8('no key'), null);
  out.emit(utf8('bytes'), big, -(2n ** 63n));
  out.emit('', '', 0);
  out._send();
  assert.equal(host.emitted.length, 1, 'one batch per send');
  assert.deepEqual(emitted(weir), [
    ['k', 'v', 5n],
    [null, 'no key', null],
    ['bytes', big, -(2n ** 63n)],
    ['', '', 0n],
  ]);
  assert.throws(() => out.emit('k', 'v', 2n ** 63n), /outside the signed 64-bit range/);
  assert.throws(() => out.emit('k', 42), /an emitted value is a string or Uint8Array, not number/);
  assert.throws(() => out.emit(7, 'v'), /an emitted key is a string or Uint8Array or null, not number/);
});

test('the decoder rejects unknown flags and every truncation', async () => {
  const weir = await sdk();
  const good = batch([['key', 'value', 7n]]);
  assert.equal(weir.decodeBatch(good).length, 1);
  const bad = good.slice();
  bad[0] |= 4;
  assert.throws(() => weir.decodeBatch(bad), /unknown record flags 0x07/);
  for (let len = 1; len < good.length; len += 1) {
    assert.throws(() => weir.decodeBatch(good.subarray(0, len)), /packed batch truncated/, `length ${len}`);
  }
});

test('word count emits one batch per call and writes state back only at snapshot and close', async () => {
  const [weir, op] = await open(wordCount);
  assert.equal(op.process(batch([['a', 'a', 1n], ['b', 'b', 2n], ['a', 'a', 3n]])), undefined);
  assert.equal(host.emitted.length, 1);
  assert.deepEqual(emitted(weir), [['a', '1', 1n], ['b', '1', 2n], ['a', '2', 3n]]);
  assert.equal(host.writeCalls.length, 0, 'nothing written before a snapshot');
  assert.equal(host.reads, 2, 'one read per new key');

  assert.equal(op.snapshot(1n), undefined);
  assert.equal(host.writeCalls.length, 1, 'one write call per flush');
  assert.deepEqual(host.store.get('count\0a').value, { tag: 'int', val: 2n });
  assert.deepEqual(host.store.get('count\0b').value, { tag: 'int', val: 1n });

  op.process(batch([['a', 'a', null]]));
  assert.equal(host.reads, 2, 'cached after the flush');
  assert.equal(op.onCheckpointComplete(1n), undefined);
  assert.equal(op.close(), undefined);
  assert.equal(host.writeCalls.length, 2);
  assert.deepEqual(host.writeCalls[1].map((w) => [w.state, str(w.key), w.update]), [
    ['count', 'a', { tag: 'value-set', val: { tag: 'int', val: 3n } }],
  ]);
  assert.equal(op.snapshot(2n), undefined);
  assert.equal(host.writeCalls.length, 2, 'no call when nothing is dirty');
});

test('state written by another operator is read back, and a capacity of 0 re-reads it', async () => {
  const [, first] = await open(wordCount);
  first.process(batch([['w', 'w', null]]));
  first.close();
  const [weir, second] = await open(wordCount);
  weir.setCacheCapacity(0);
  second.process(batch([['w', 'w', null]]));
  assert.equal(host.reads, 2);
  second.snapshot(1n);
  second.process(batch([['w', 'w', null]]));
  assert.equal(host.reads, 3, 'evicted after the flush');
  second.close();
  assert.deepEqual(host.store.get('count\0w').value, { tag: 'int', val: 3n });
  assert.throws(() => weir.setCacheCapacity(-1), RangeError);
});

test('more dirty keys than the dirty limit are flushed after the process call', async () => {
  const [weir, op] = await open(wordCount);
  weir.setDirtyLimit(2);
  op.process(batch([['a', 'a', null], ['b', 'b', null]]));
  assert.equal(host.writeCalls.length, 0, 'at the limit');
  op.process(batch([['c', 'c', null], ['a', 'a', null]]));
  assert.equal(host.writeCalls.length, 1, 'over the limit: one flush after the call');
  assert.deepEqual(host.writeCalls[0].map((w) => str(w.key)).sort(), ['a', 'b', 'c']);
  assert.deepEqual(host.store.get('count\0a').value, { tag: 'int', val: 2n });
  op.close();
  assert.equal(host.writeCalls.length, 1, 'nothing left to write at close');
  weir.setDirtyLimit(Infinity);
  assert.throws(() => weir.setDirtyLimit(-1), RangeError);
  assert.throws(() => weir.setDirtyLimit(1.5), RangeError);
});

test('a restored entry read but not written is not flushed', async () => {
  // Restored state: 1,000 counts the host holds before the operator opens.
  const [weir, first] = await open(wordCount);
  first.process(batch(Array.from({ length: 1000 }, (_, i) => [`k${i}`, 'x', null])));
  first.close();
  const written = new Set(['k7', 'k900']);
  const [, op] = await open((w) =>
    class extends w.Operator {
      open() {
        this.count = new w.ValueState('count');
      }

      process(record) {
        const key = record.keyString();
        const n = this.count.get(0);
        if (written.has(key)) {
          this.count.set(n + 1);
        } else if (Number(key.slice(1)) % 2 === 1) {
          this.count.set(n); // unchanged: stays clean
        } // else only read
      }
    },
  );
  host.writeCalls = [];
  op.process(batch(Array.from({ length: 1000 }, (_, i) => [`k${i}`, 'x', null])));
  assert.equal(op.snapshot(1n), undefined);
  assert.deepEqual(
    host.writeCalls.map((c) => c.map((w) => str(w.key)).sort()),
    [['k7', 'k900']],
    'only the written keys, in one call',
  );
  assert.deepEqual(host.store.get('count\0k7').value, { tag: 'int', val: 2n });
  assert.equal(op.snapshot(2n), undefined);
  assert.equal(host.writeCalls.length, 1, 'flushed entries are clean');
  assert.equal(typeof weir.DIRTY_LIMIT, 'number');
});

test('JavaScript values map to WIT values and back', async () => {
  const values = [
    [true, { tag: 'boolean', val: true }, true],
    [42, { tag: 'int', val: 42n }, 42],
    [-7, { tag: 'int', val: -7n }, -7],
    [1.5, { tag: 'float', val: 1.5 }, 1.5],
    [2 ** 60, { tag: 'float', val: 2 ** 60 }, 2 ** 60],
    [12n, { tag: 'int', val: 12n }, 12],
    [2n ** 53n, { tag: 'int', val: 2n ** 53n }, 2n ** 53n],
    [-(2n ** 63n), { tag: 'int', val: -(2n ** 63n) }, -(2n ** 63n)],
    [2n ** 63n, { tag: 'uint', val: 2n ** 63n }, 2n ** 63n],
    [2n ** 64n - 1n, { tag: 'uint', val: 2n ** 64n - 1n }, 2n ** 64n - 1n],
    ['text', { tag: 'text', val: 'text' }, 'text'],
    [utf8('raw'), { tag: 'bytes', val: utf8('raw') }, utf8('raw')],
  ];
  const [, op] = await open((weir) =>
    class extends weir.Operator {
      open() {
        this.v = new weir.ValueState('v');
      }

      process(record) {
        this.v.set(values[Number(record.valueString())][0]);
      }
    },
  );
  values.forEach((_, i) => op.process(batch([[`k${i}`, String(i), null]])));
  op.close();
  values.forEach(([, wit], i) => assert.deepEqual(plain(host.store.get(`v\0k${i}`).value), plain(wit), `value ${i}`));

  // Read back by a fresh operator: int and uint become Numbers when safe.
  host.store.get('v\0k0').value = { tag: 'uint', val: 9n };
  const read = [];
  const [, reader] = await open((weir) =>
    class extends weir.Operator {
      open() {
        this.v = new weir.ValueState('v');
      }

      process(record) {
        read.push(this.v.get());
      }
    },
  );
  values.forEach((_, i) => reader.process(batch([[`k${i}`, '', null]])));
  assert.deepEqual(read, [9, ...values.slice(1).map(([, , js]) => js)]);
  assert.ok(read.at(-1) instanceof Uint8Array, 'bytes read from the host are of this realm');
});

test('float() stores a whole number as a float, in values and in trees', async () => {
  let read;
  const [weir, op] = await open((w) =>
    class extends w.Operator {
      open() {
        this.v = new w.ValueState('v');
        this.m = new w.MapState('m');
      }

      process(record) {
        if (record.valueString() === 'write') {
          this.v.set({ total: w.float(6), count: 6 });
          this.m.put(w.float(2), w.float(3));
        } else {
          read = [this.v.get(), this.m.get(2), this.m.entries()];
        }
      }
    },
  );
  op.process(batch([['k', 'write', null]]));
  op.snapshot(1n);
  assert.deepEqual(host.store.get('v\0k').value.val.slice(1), [
    { tag: 'float', val: 6 },
    { tag: 'int', val: 6n },
  ]);
  assert.deepEqual([...host.store.get('m\0k').entries.values()][0][1], { tag: 'float', val: 3 });
  op.process(batch([['k', 'read', null]]));
  assert.equal(read[0].total.toFixed(1), '6.0', 'the cache holds the Number object set');
  assert.equal(read[1] * 2, 6);
  const [, reader] = await open((w) =>
    class extends w.Operator {
      open() {
        this.v = new w.ValueState('v');
        this.m = new w.MapState('m');
      }

      process() {
        read = [this.v.get(), this.m.get(2), this.m.entries()];
      }
    },
  );
  reader.process(batch([['k', '', null]]));
  assert.deepEqual(read, [{ total: 6, count: 6 }, 3, [[2, 3]]], 'floats read from the host are numbers');
  assert.equal(weir.float(1.5) + 1, 2.5);
  assert.throws(() => weir.float(1n), /float\(\) takes a number, not bigint/);
});

test('values outside the mapping fail the hook with a type or range error', async () => {
  let deep = 1;
  for (let i = 0; i < 65; i += 1) {
    deep = [deep];
  }
  class Point {
    constructor() {
      this.x = 1;
    }
  }
  for (const [bad, message] of [
    [2n ** 64n, /RangeError: state integer 18446744073709551616 is outside the signed and unsigned 64-bit ranges/],
    [-(2n ** 63n) - 1n, /RangeError: state integer/],
    [[1, { big: 2n ** 64n }], /RangeError: state integer/],
    [new Point(), /TypeError: state values are .* a plain object, not Point/],
    [new Set([1]), /not Set/],
    [[() => 1], /not function/],
    [new Uint16Array(2), /not Uint16Array/],
    [deep, /RangeError: state values nest at most 64 levels deep/],
  ]) {
    reset();
    const [, op] = await open((weir) =>
      class extends weir.Operator {
        open() {
          this.v = new weir.ValueState('v');
        }

        process() {
          this.v.set(bad);
        }
      },
    );
    const r = op.process(batch([['k', 'x', null]]));
    assert.equal(r.tag, 'err');
    assert.match(r.val, message);
  }
});

test('arrays, Maps, plain objects and null are nested values', async () => {
  const stats = {
    count: 3,
    tags: ['a', null, undefined],
    scores: new Map([[1, 1.5], ['two', [true]]]),
    raw: utf8('r'),
    big: 2n ** 63n,
    inner: { empty: {}, none: null },
  };
  let read;
  const [, op] = await open((weir) =>
    class extends weir.Operator {
      open() {
        this.v = new weir.ValueState('v');
      }

      process(record) {
        const cmd = record.valueString();
        if (cmd === 'set') {
          this.v.set(stats);
        } else if (cmd === 'doc') {
          this.v.set({ count: 3, tags: ['a'] });
        } else if (cmd === 'clear-with-null') {
          this.v.set(null);
        } else {
          read = this.v.get('default');
        }
      }
    },
  );
  op.process(batch([['s', 'set', null], ['d', 'doc', null], ['n', 'set', null]]));
  op.snapshot(1n);
  // The example of docs/wit.md, node for node.
  assert.deepEqual(host.store.get('v\0d').value, {
    tag: 'nested',
    val: [
      { tag: 'record', val: ['count', 'tags'] },
      { tag: 'int', val: 3n },
      { tag: 'list', val: 1 },
      { tag: 'text', val: 'a' },
    ],
  });
  assert.deepEqual(
    host.store.get('v\0s').value.val.map((n) => n.tag),
    ['record', 'int', 'list', 'text', 'none', 'none', 'map', 'int', 'float', 'text', 'list', 'boolean', 'bytes', 'uint', 'record', 'record', 'none'],
  );
  op.process(batch([['n', 'clear-with-null', null]]));
  op.snapshot(2n);
  assert.equal(host.store.get('v\0n').value, undefined, 'set(null) clears');

  // A fresh operator reads the trees back.
  const [, reader] = await open((weir) =>
    class extends weir.Operator {
      open() {
        this.v = new weir.ValueState('v');
      }

      process() {
        read = this.v.get('default');
      }
    },
  );
  reader.process(batch([['s', '', null]]));
  assert.deepEqual(read, { ...stats, tags: ['a', null, null] });
  assert.ok(read.scores instanceof Map && Array.isArray(read.tags));
  reader.process(batch([['n', '', null]]));
  assert.equal(read, 'default');

  // A record field named __proto__ stays a field.
  host.store.set('v\0p', {
    kind: 'value',
    value: { tag: 'nested', val: [{ tag: 'record', val: ['__proto__', 'x'] }, { tag: 'int', val: 1n }, { tag: 'none' }] },
  });
  reader.process(batch([['p', '', null]]));
  assert.deepEqual(Object.keys(read), ['__proto__', 'x']);
  assert.equal(Object.getPrototypeOf(read), Object.prototype);
  assert.equal(read.x, null);
});

test('map state compares keys by value and writes back entry by entry', async () => {
  let seen;
  const [, op] = await open((weir) =>
    class extends weir.Operator {
      open() {
        this.m = new weir.MapState('m');
      }

      process(record) {
        switch (record.valueString()) {
          case 'fill':
            this.m.put(utf8('bin'), 'b');
            this.m.put(5, 'five');
            this.m.put('gone', 1);
            this.m.put(['pair', 1], { nested: true });
            break;
          case 'read':
            seen = {
              pair: this.m.get(['pair', 1n]),
              bin: this.m.get(utf8('bin')),
              five: this.m.get(5n),
              missing: this.m.get('nope', 'default'),
              has: this.m.has(5),
              entries: this.m.entries(),
            };
            break;
          case 'remove':
            this.m.remove('gone');
            this.m.put(5n, 'FIVE');
            break;
          case 'clear':
            this.m.clear();
            this.m.put('after', true);
            break;
          default:
            throw new Error('unknown command');
        }
      }
    },
  );
  op.process(batch([['k', 'fill', null]]));
  op.snapshot(1n);
  assert.equal(host.store.get('m\0k').entries.size, 4);
  op.process(batch([['k', 'remove', null], ['k', 'read', null]]));
  assert.deepEqual(seen.pair, { nested: true }, 'composite keys compare by value');
  assert.equal(seen.bin, 'b');
  assert.equal(seen.five, 'FIVE');
  assert.equal(seen.missing, 'default');
  assert.equal(seen.has, true);
  assert.deepEqual(seen.entries, [[utf8('bin'), 'b'], [5, 'FIVE'], [['pair', 1], { nested: true }]]);
  op.snapshot(2n);
  assert.deepEqual(
    host.writeCalls[1].map((w) => w.update),
    [
      { tag: 'map-remove', val: { tag: 'text', val: 'gone' } },
      { tag: 'map-put', val: [{ tag: 'int', val: 5n }, { tag: 'text', val: 'FIVE' }] },
    ],
  );
  op.process(batch([['k', 'clear', null]]));
  op.close();
  assert.deepEqual(
    host.writeCalls[2].map((w) => w.update.tag),
    ['map-clear', 'map-put'],
  );
  assert.deepEqual([...host.store.get('m\0k').entries.values()], [[{ tag: 'text', val: 'after' }, { tag: 'boolean', val: true }]]);

  // A fresh operator loads the map from the host.
  reset();
  host.store.set('m\0k', {
    kind: 'map',
    entries: new Map([['x', [{ tag: 'float', val: 5 }, { tag: 'int', val: 1n }]]]),
  });
  const [, reader] = await open((w) =>
    class extends w.Operator {
      open() {
        this.m = new w.MapState('m');
      }

      process() {
        seen = this.m.get(5);
      }
    },
  );
  assert.equal(reader.process(batch([['k', '', null]])), undefined);
  assert.equal(seen, 1, 'a whole float key is found by the Number');
});

test('list state and operator list state', async () => {
  let seen;
  const [, op] = await open((weir) =>
    class extends weir.Operator {
      open() {
        this.l = new weir.ListState('l');
        this.ops = new weir.OperatorListState('offsets');
      }

      process(record) {
        const cmd = record.valueString();
        if (cmd === 'add') {
          this.l.add(1);
          this.l.add('two');
          const copy = this.l.get();
          copy.push('not stored');
          seen = this.l.get();
        } else if (cmd === 'set') {
          this.l.set(new Set([3n, 4.5]));
        } else {
          this.l.clear();
        }
      }

      snapshot() {
        this.ops.replace([1, 'x']);
        seen = this.ops.get();
      }
    },
  );
  op.process(batch([['k', 'add', null]]));
  assert.deepEqual(seen, [1, 'two'], 'get returns a copy');
  op.snapshot(1n);
  assert.deepEqual(seen, [1, 'x']);
  assert.deepEqual(host.store.get('l\0k').list, [{ tag: 'int', val: 1n }, { tag: 'text', val: 'two' }]);
  op.process(batch([['k', 'set', null], ['j', 'clear', null]]));
  op.close();
  assert.deepEqual(host.store.get('l\0k').list, [{ tag: 'int', val: 3n }, { tag: 'float', val: 4.5 }]);
  assert.deepEqual(
    host.writeCalls[1].map((w) => [str(w.key), w.update.tag]),
    [['k', 'list-set'], ['j', 'list-clear']],
  );
});

test('a thrown error becomes the hook error with its name, message and location', async () => {
  const [, op] = await open(
    (weir) =>
      class extends weir.Operator {
        process(record, out) {
          out.emit(null, 'dropped with the failed batch');
          throw new Error(`cannot count '${record.valueString()}'`);
        }
      },
  );
  const r = op.process(batch([['k', 'hello', null]]));
  assert.equal(r.tag, 'err');
  assert.match(r.val, /^Error: cannot count 'hello' \(at .*weir\.test\.mjs:\d+\)$/);
  assert.equal(host.emitted.length, 0, 'a failed call emits nothing');

  const cases = [
    ['type', /^TypeError: .*null.* \(at .*weir\.test\.mjs:\d+\)$/],
    ['string', /^a thrown string$/],
    ['number', /^uncaught number: 42$/],
    ['async', /^TypeError: process returned a promise: operator hooks are synchronous/],
  ];
  for (const [mode, message] of cases) {
    const weir = await sdk();
    const Op = class extends weir.Operator {
      process() {
        switch (mode) {
          case 'type':
            return null.field;
          case 'string':
            throw 'a thrown string';
          case 'number':
            throw 42;
          default:
            return Promise.resolve();
        }
      }
    };
    const e = weir.exportOperator(Op);
    e.open(ctx());
    const res = e.process(batch([['k', 'v', null]]));
    assert.equal(res.tag, 'err', mode);
    assert.match(res.val, message, mode);
  }
});

test('a host error passes through verbatim, and keyed state needs a key', async () => {
  const [, op] = await open(wordCount);
  host.refusedKey = 'theirs';
  const r = op.process(batch([['theirs', 'x', null]]));
  assert.deepEqual(r, { tag: 'err', val: 'key group of key "theirs" is not owned by this subtask' });

  const [, keyless] = await open(wordCount);
  const e = keyless.process(batch([[null, 'x', null]]));
  assert.match(e.val, /^Error: state `count` is keyed: use it while processing a record that has a key/);

  const [, closing] = await open((weir) =>
    class extends weir.Operator {
      open() {
        this.v = new weir.ValueState('v');
      }

      process() {}

      close() {
        this.v.get();
      }
    },
  );
  closing.process(batch([['k', 'x', null]]));
  assert.match(closing.close().val, /state `v` is keyed/);
});

test('a state name is bound to one kind', async () => {
  const weir = await sdk();
  const Op = class extends weir.Operator {
    open() {
      this.a = new weir.ValueState('s');
      this.b = new weir.MapState('s');
    }
  };
  const r = weir.exportOperator(Op).open(ctx());
  assert.match(r.val, /^Error: state `s` is already a value state, not a map state/);
});

test('process is required and log checks its level', async () => {
  const weir = await sdk();
  const e = weir.exportOperator(class extends weir.Operator {});
  e.open(ctx());
  assert.match(e.process(batch([['k', 'v', null]])).val, /does not implement process\(record, out\)/);
  weir.log('info', 'hello');
  weir.log('warn', 42);
  assert.deepEqual(host.logs, [['info', 'hello'], ['warn', '42']]);
  assert.throws(() => weir.log('fatal', 'x'), /log level is one of trace, debug, info, warn, error, not fatal/);
});

test('the context carries the subtask facts', async () => {
  let seen;
  await open(
    (weir) =>
      class extends weir.Operator {
        open(c) {
          seen = c;
        }
      },
    'cfg',
  );
  assert.deepEqual({ ...seen }, { uid: 'op', config: 'cfg', subtaskIndex: 0, parallelism: 1, maxParallelism: 128, attemptNumber: 2 });
  assert.ok(Object.isFrozen(seen));
});

test('state handles declare their kind, type and redistribution when created', async () => {
  await open((weir) =>
    class extends weir.Operator {
      open() {
        this.count = new weir.ValueState('count', { type: 'int' });
        this.seen = new weir.ListState('seen');
        this.per = new weir.MapState('per', { type: 'float' });
        this.ids = new weir.OperatorListState('ids', { redistribution: 'union', type: 'uint' });
        // A second handle on the same state declares the same again: fine.
        this.again = new weir.ValueState('count', { type: 'int' });
      }

      process() {}
    },
  );
  assert.deepEqual(host.declared, [
    ['count', 'value', 'int'],
    ['seen', 'list', undefined],
    ['per', 'map', 'map<any, float>'],
    ['ids', 'union', 'list<uint>'],
  ]);

  // A conflicting declaration fails `open` naming the state and the reason
  // (a new instance: the host's declarations start afresh).
  host.declared = [];
  const weir = await sdk();
  const op = weir.exportOperator(
    class extends weir.Operator {
      open() {
        this.a = new weir.OperatorListState('ids');
        this.b = new weir.OperatorListState('ids', { redistribution: 'union' });
      }

      process() {}
    },
  );
  const failed = op.open(ctx());
  assert.equal(failed.tag, 'err');
  assert.match(failed.val, /declaring state `ids`: state `ids` is already declared as split, not as union/);
  const bad = weir.exportOperator(
    class extends weir.Operator {
      open() {
        this.c = new weir.OperatorListState('c', { redistribution: 'broadcast' });
      }

      process() {}
    },
  );
  assert.match(bad.open(ctx()).val, /redistribution is 'split' or 'union', not broadcast/);
});

test('a value state with defaults reads what an earlier version wrote, filling new fields', async () => {
  // Version 1 stores `{ count }`.
  const [, v1] = await open((weir) =>
    class extends weir.Operator {
      open() {
        this.stats = new weir.ValueState('stats');
      }

      process(record) {
        const s = this.stats.get({ count: 0 });
        s.count += 1;
        this.stats.set(s);
      }
    },
  );
  v1.process(batch([['k', 'a', null], ['k', 'b', null]]));
  v1.close();
  assert.deepEqual(host.store.get('stats\0k').value, {
    tag: 'nested',
    val: [{ tag: 'record', val: ['count'] }, { tag: 'int', val: 2n }],
  });

  // Version 2 gained `avg` and `tags`, with defaults; the host kept v1's state.
  host.declared = [];
  const seen = [];
  const [weir, v2] = await open((weir) =>
    class extends weir.Operator {
      open() {
        this.stats = new weir.ValueState('stats', { defaults: { count: 0, avg: 0.5, tags: [] } });
      }

      process(record, out) {
        const s = this.stats.get();
        seen.push(s === null ? null : JSON.parse(JSON.stringify(s)));
        if (s !== null) {
          s.count += 1;
          s.tags.push(record.valueString());
          this.stats.set(s);
        }
        out.emit(record.key, String(s?.count));
      }
    },
  );
  v2.process(batch([['k', 'c', null], ['fresh', 'd', null]]));
  v2.process(batch([['k', 'e', null]]));
  assert.deepEqual(seen, [
    { count: 2, avg: 0.5, tags: [] },
    null, // a key without state reads null, not the defaults
    { count: 3, avg: 0.5, tags: ['c'] },
  ]);
  v2.close();
  const stored = host.store.get('stats\0k').value;
  assert.deepEqual(stored.val[0], { tag: 'record', val: ['count', 'avg', 'tags'] });
  assert.deepEqual(emitted(weir).map(([, v]) => v), ['3', 'undefined', '4']);
});

// Event time: timers, watermarks, metrics and windows (docs/sdk.md, "Event time").

/** The records emitted since the last `take`, as `[key, value, timestamp]` with numbers. */
function take(weir) {
  const records = emitted(weir).map(([k, v, ts]) => [k, v, ts === null ? null : Number(ts)]);
  host.emitted = [];
  return records;
}

/** Processes `records` (`[key, value, timestamp]`, timestamps numbers or null) and fires past processing-time timers. */
function feed(op, ...records) {
  const r = op.process(batch(records.map(([k, v, ts]) => [k, v, ts === null || ts === undefined ? null : BigInt(ts)])));
  if (r !== undefined) {
    return r;
  }
  fireProcessingTime(op);
  return undefined;
}

/** The host's `windows` map of `key` as { start: [end, acc] }, checking the layout every SDK shares. */
function windowState(key) {
  const s = host.store.get(`windows\0${key}`);
  const out = {};
  for (const [k, v] of s === undefined ? [] : s.entries.values()) {
    assert.equal(k.tag, 'int');
    assert.equal(v.tag, 'nested');
    const [record, end, acc] = v.val;
    assert.deepEqual(record, { tag: 'record', val: ['end', 'acc'] });
    assert.equal(end.tag, 'int');
    out[Number(k.val)] = [Number(end.val), acc.tag === 'int' ? Number(acc.val) : acc];
  }
  return out;
}

const decoder = new TextDecoder();

/** A count aggregate; results read `key,start,end,count`. */
const count = {
  create: () => 0,
  add: (acc) => acc + 1,
  merge: (a, b) => a + b,
  result: (key, window, acc) => `${decoder.decode(key)},${window.start},${window.end},${acc}`,
};

/** Opens a window operator made of `options` (assigner a function of the SDK). */
function windowed(assigner, options = {}) {
  return (weir) =>
    class extends weir.WindowOperator {
      constructor() {
        super({ assigner: assigner(weir), aggregate: count, ...options });
      }
    };
}

test('event-time timers fire in order, scoped to their key, before onWatermark', async () => {
  const seen = [];
  const [weir, op] = await open((w) =>
    class extends w.Operator {
      open() {
        this.count = new w.ValueState('count');
      }

      process(record) {
        this.count.set(this.count.get(0) + 1);
        w.registerEventTimeTimer(BigInt(record.valueString()));
      }

      onTimer(timer, out) {
        assert.ok(timer instanceof w.Timer && Object.isFrozen(timer));
        seen.push([str(timer.key), timer.timestamp, timer.domain, w.currentWatermark()]);
        // State and emits are the timer's key's; the emit carries the
        // timer's timestamp.
        out.emit(timer.key, String(this.count.get()));
        this.count.clear();
      }

      onWatermark(watermark, out) {
        seen.push(['watermark', watermark]);
        out.emit(null, `wm ${watermark}`);
      }
    },
  );
  feed(op, ['a', '20', 1], ['b', '10', 2], ['a', '10', 3], ['a', '20', 4], ['c', '99', 5]);
  assert.deepEqual(timersOf(), [['a', 10], ['a', 20], ['b', 10], ['c', 99]]);
  advanceWatermark(op, 20n);
  assert.deepEqual(seen, [
    ['a', 10n, 'event-time', 20n],
    ['b', 10n, 'event-time', 20n],
    ['a', 20n, 'event-time', 20n],
    ['watermark', 20n],
  ]);
  assert.deepEqual(take(weir), [['a', '3', 10], ['b', '1', 10], ['a', 'null', 20], [null, 'wm 20', null]]);
  assert.deepEqual(timersOf(), [['c', 99]]);
  // The writes of onTimer reach the host at the snapshot.
  assert.equal(op.snapshot(1n), undefined);
  assert.equal(host.store.get('count\0a').value, undefined);
  assert.equal(host.store.get('count\0b').value, undefined);
  assert.deepEqual(host.store.get('count\0c').value, { tag: 'int', val: 1n });
});

test('processing-time timers, deletion and the clocks', async () => {
  const [weir, op] = await open((w) =>
    class extends w.Operator {
      process(record, out) {
        const [cmd, at] = record.valueString().split(' ');
        if (cmd === 'now') {
          out.emit(record.key, `${w.currentProcessingTime()} ${w.currentWatermark()}`);
        } else if (cmd === 'in') {
          w.registerProcessingTimeTimer(w.currentProcessingTime() + BigInt(at));
        } else if (cmd === 'del') {
          w.deleteProcessingTimeTimer(Number(at)); // a number works too
          w.deleteEventTimeTimer(Number(at)); // none: does nothing
        }
      }

      onTimer(timer, out) {
        out.emit(timer.key, `${timer.domain} ${timer.timestamp}`);
      }
    },
  );
  host.processingTime = 1000n;
  feed(op, ['k', 'now', 5], ['k', 'in 50'], ['j', 'in 70'], ['j', 'in 100'], ['j', 'del 1100']);
  assert.deepEqual(take(weir), [['k', `1000 ${I64_MIN}`, 5]]);
  assert.deepEqual(timersOf('processing-time'), [['j', 1070], ['k', 1050]]);
  advanceProcessingTime(op, 1060n);
  // A processing-time timer's emits carry no timestamp by default.
  assert.deepEqual(take(weir), [['k', 'processing-time 1050', null]]);
  advanceWatermark(op, 7n);
  feed(op, ['k', 'now'], ['k', 'in -1']);
  // A timer in the past fires as soon as the call returns.
  assert.deepEqual(take(weir), [['k', '1060 7', null], ['k', 'processing-time 1059', null]]);
  advanceProcessingTime(op, 5000n);
  assert.deepEqual(take(weir), [['j', 'processing-time 1070', null]]);
});

test('timers need a key and an s64 timestamp; counters add up and check names', async () => {
  const [, op] = await open((w) =>
    class extends w.Operator {
      process(record) {
        const [cmd, arg, delta] = record.valueString().split(' ');
        if (cmd === 'timer') {
          w.registerEventTimeTimer(arg.endsWith('n') ? BigInt(arg.slice(0, -1)) : Number(arg));
        } else {
          w.counterAdd(arg, delta === undefined ? undefined : delta.endsWith('n') ? BigInt(delta.slice(0, -1)) : Number(delta));
        }
      }

      onWatermark(watermark) {
        w.registerEventTimeTimer(watermark);
      }
    },
  );
  assert.match(feed(op, [null, 'timer 1']).val, /^Error: timers are keyed/);
  assert.match(feed(op, ['k', `timer ${2n ** 63n}n`]).val, /^RangeError: a timer timestamp is a signed 64-bit integer .* not 9223372036854775808n/);
  assert.match(feed(op, ['k', 'timer 1.5']).val, /^RangeError: a timer timestamp/);
  assert.match(op.onWatermark(3n).val, /^Error: timers are keyed/);

  assert.equal(feed(op, ['k', 'count refused'], ['k', 'count refused 4'], ['k', `count a.b-c_D9 ${2n ** 64n - 1n}n`]), undefined);
  assert.deepEqual(host.counters, new Map([['refused', 5n], ['a.b-c_D9', 2n ** 64n - 1n]]));
  assert.match(feed(op, ['k', 'count bad/name']).val, /^TypeError: a counter name is 1 to 64 of/);
  assert.match(feed(op, ['k', `count ${'x'.repeat(65)}`]).val, /counter name/);
  assert.match(feed(op, ['k', 'count refused -1']).val, /^RangeError: counter refused: delta is an unsigned 64-bit integer, not -1/);
  assert.equal(feed(op, ...Array.from({ length: 30 }, (_, i) => ['k', `count c${i}`])), undefined);
  assert.match(feed(op, ['k', 'count one_too_many']).val, /at most 32 counters/);
});

test('the default event-time hooks do nothing', async () => {
  const [weir, op] = await open((w) =>
    class extends w.Operator {
      process() {
        w.registerEventTimeTimer(5);
        w.registerProcessingTimeTimer(5n);
      }
    },
  );
  feed(op, ['k', 'x']);
  advanceProcessingTime(op, 10n);
  finish(op);
  assert.deepEqual(take(weir), []);
  assert.equal(host.timers.size, 0);
});

test('tumbling windows fire at their last timestamp in start order and are dropped', async () => {
  const [weir, op] = await open(windowed((w) => w.tumbling(10)));
  assert.deepEqual(
    host.declared.find(([name]) => name === 'windows'),
    ['windows', 'map', 'map<int, record{end: int, acc: any}>'],
  );
  feed(op, ['a', 'x', 3], ['a', 'x', 12], ['b', 'x', 9], ['a', 'x', 0], ['a', 'x', -1], ['a', 'x', -10]);
  assert.deepEqual(timersOf(), [['a', -1], ['a', 9], ['a', 19], ['b', 9]]);
  op.snapshot(1n);
  assert.deepEqual(windowState('a'), { '-10': [0, 2], 0: [10, 2], 10: [20, 1] });
  advanceWatermark(op, 8);
  assert.deepEqual(take(weir), [['a', 'a,-10,0,2', -1]]);
  advanceWatermark(op, 9);
  assert.deepEqual(take(weir), [['a', 'a,0,10,2', 9], ['b', 'b,0,10,1', 9]]);
  op.snapshot(2n);
  assert.deepEqual(windowState('a'), { 10: [20, 1] });
  assert.deepEqual(windowState('b'), {});
  finish(op);
  assert.deepEqual(take(weir), [['a', 'a,10,20,1', 19]]);
  assert.deepEqual(windowState('a'), {});

  // An offset shifts the windows.
  reset();
  const [w2, shifted] = await open(windowed((w) => w.tumbling(10n, 3)));
  feed(shifted, ['a', 'x', 3], ['a', 'x', 2], ['a', 'x', 12], ['a', 'x', 13]);
  finish(shifted);
  assert.deepEqual(take(w2), [['a', 'a,-7,3,1', 2], ['a', 'a,3,13,2', 12], ['a', 'a,13,23,1', 22]]);
});

test('resultKey re-keys a window result', async () => {
  const byStart = { ...count, resultKey: (key, window) => (decoder.decode(key) === 'b' ? null : `${window.start}`) };
  const [weir, op] = await open(windowed((w) => w.tumbling(10), { aggregate: byStart }));
  feed(op, ['a', 'x', 3], ['b', 'x', 4], ['a', 'x', 12]);
  finish(op);
  assert.deepEqual(take(weir), [['0', 'a,0,10,1', 9], ['b', 'b,0,10,1', 9], ['10', 'a,10,20,1', 19]]);
});

test('a window operator needs timestamps, keys, an assigner and an aggregate', async () => {
  const [weir, op] = await open(windowed((w) => w.tumbling(10)));
  assert.match(feed(op, ['a', 'x', null]).val, /^Error: a window operator needs event time/);
  assert.match(feed(op, [null, 'x', 5]).val, /state `windows` is keyed/);
  assert.match(weir.exportOperator(weir.WindowOperator).open(ctx()).val, /needs an assigner/);
  const noMerge = { ...count, merge: undefined };
  const withAgg = (assigner, aggregate) =>
    class extends weir.WindowOperator {
      constructor() {
        super({ assigner, aggregate });
      }
    };
  assert.match(weir.exportOperator(withAgg(weir.session(5), noMerge)).open(ctx()).val, /aggregate Object lacks merge/);
  assert.equal(weir.exportOperator(withAgg(weir.tumbling(5), noMerge)).open(ctx()), undefined);
  assert.throws(() => weir.tumbling(0), /size is positive/);
  assert.throws(() => weir.sliding(10, 1.5), /slide is a signed 64-bit integer/);
  assert.throws(() => weir.tumbling(10).assign(I64_MAX - 2n), /ends past the largest timestamp/);
});

test('a window state written by another language restores', async () => {
  // What the Rust and Python SDKs write: int starts, record { end, acc }.
  host.store.set('windows\0a', {
    kind: 'map',
    entries: new Map([
      ['x', [{ tag: 'int', val: 0n }, { tag: 'nested', val: [{ tag: 'record', val: ['end', 'acc'] }, { tag: 'int', val: 10n }, { tag: 'int', val: 4n }] }]],
    ]),
  });
  host.timers.set('event-time 9 a', { key: utf8('a'), timestamp: 9n, domain: 'event-time' });
  const [weir, op] = await open(windowed((w) => w.tumbling(10)));
  feed(op, ['a', 'x', 5]);
  advanceWatermark(op, 9);
  assert.deepEqual(take(weir), [['a', 'a,0,10,5', 9]]);
});

test('sliding windows: a record is in every window that contains it, and late ones are skipped', async () => {
  const weir = await sdk();
  const starts = (a, ts) => a.assign(ts).map((w) => [Number(w.start), Number(w.end)]);
  assert.deepEqual(starts(weir.sliding(10, 5), 12n), [[10, 20], [5, 15]]);
  assert.deepEqual(starts(weir.sliding(10, 3), -1n), [[-3, 7], [-6, 4], [-9, 1]]);
  const [w1, op] = await open(windowed((w) => w.sliding(10, 5)));
  feed(op, ['a', 'x', 12], ['a', 'x', 7], ['a', 'x', 3]);
  advanceWatermark(op, 14);
  assert.deepEqual(take(w1), [['a', 'a,-5,5,1', 4], ['a', 'a,0,10,2', 9], ['a', 'a,5,15,2', 14]]);
  advanceWatermark(op, 15);
  feed(op, ['a', 'x', 13]); // [5, 15) is late, [10, 20) is not
  finish(op);
  assert.deepEqual(take(w1), [['a', 'a,10,20,2', 19]]);
  assert.equal(host.counters.size, 0);
});

/** A session count as a plugin writes it: config in open, the aggregate as methods. */
function sessionCount(w) {
  return class extends w.WindowOperator {
    open(ctx) {
      const { gap = 3000, lateness = 0 } = JSON.parse(ctx.config || '{}');
      this.assigner = w.session(gap);
      this.allowedLateness = lateness;
    }

    create() {
      return 0;
    }

    add(acc) {
      return acc + 1;
    }

    merge(a, b) {
      return a + b;
    }

    result(key, window, acc) {
      return `${decoder.decode(key)},${window.start},${window.end},${acc}`;
    }
  };
}

test('session windows merge when a record bridges them', async () => {
  const [weir, op] = await open(sessionCount, '{"gap": 3000}');
  feed(op, ['k', 'x', 1000], ['k', 'x', 5000], ['j', 'x', 1500]);
  assert.deepEqual(timersOf(), [['j', 4499], ['k', 3999], ['k', 7999]]);
  feed(op, ['k', 'x', 3500]); // [3500, 6500) touches both
  op.snapshot(1n);
  assert.deepEqual(windowState('k'), { 1000: [8000, 3] });
  assert.deepEqual(timersOf(), [['j', 4499], ['k', 7999]]);
  feed(op, ['k', 'x', 2000]); // inside: nothing moves
  feed(op, ['k', 'x', 8000]); // touches the end: extends it
  feed(op, ['k', 'x', 500]); // extends the start
  assert.deepEqual(timersOf(), [['j', 4499], ['k', 10999]]);
  advanceWatermark(op, 10_000);
  assert.deepEqual(take(weir), [['j', 'j,1500,4500,1', 4499]]);
  finish(op);
  assert.deepEqual(take(weir), [['k', 'k,500,11000,6', 10999]]);
  assert.deepEqual(windowState('k'), {});

  // The default gap; separate sessions fire in start order.
  reset();
  const [w2, op2] = await open(sessionCount);
  feed(op2, ['k', 'x', 10_000], ['k', 'x', 0], ['k', 'x', 2999]);
  finish(op2);
  assert.deepEqual(take(w2), [['k', 'k,0,5999,2', 5998], ['k', 'k,10000,13000,1', 12999]]);
});

test('a session merge keeps a timer another window still needs, and late session records are dropped', async () => {
  // Timers are per key and timestamp: [0, 1000) cleans up at 2999, when
  // [2000, 3000) fires. Merging the latter must not delete it.
  const [weir, op] = await open(sessionCount, '{"gap": 1000, "lateness": 2000}');
  feed(op, ['k', 'x', 0], ['k', 'x', 2000]);
  assert.deepEqual(timersOf(), [['k', 999], ['k', 2999], ['k', 4999]]);
  feed(op, ['k', 'x', 2500]); // [2000, 3500)
  assert.deepEqual(timersOf(), [['k', 999], ['k', 2999], ['k', 3499], ['k', 5499]]);
  advanceWatermark(op, 2999);
  assert.deepEqual(take(weir), [['k', 'k,0,1000,1', 999]]);
  op.snapshot(1n);
  assert.deepEqual(windowState('k'), { 2000: [3500, 2] }, '[0, 1000) cleaned up');
  finish(op);
  assert.deepEqual(take(weir), [['k', 'k,2000,3500,2', 3499]]);

  reset();
  const [w2, late] = await open(sessionCount, '{"gap": 100}');
  advanceWatermark(late, 1000);
  // [900, 1000) and [901, 1001) end at or before the watermark.
  feed(late, ['k', 'x', 900], ['k', 'x', 901], ['k', 'x', 902]);
  assert.deepEqual(host.counters, new Map([['late_records_dropped', 2n]]));
  finish(late);
  assert.deepEqual(take(w2), [['k', 'k,902,1002,1', 1001]]);
});

test('allowed lateness: a kept window fires again for each late record until its clean-up', async () => {
  const [weir, op] = await open(windowed((w) => w.tumbling(10), { allowedLateness: 5 }));
  feed(op, ['a', 'x', 1], ['a', 'x', 2]);
  assert.deepEqual(timersOf(), [['a', 9], ['a', 14]]);
  advanceWatermark(op, 9);
  assert.deepEqual(take(weir), [['a', 'a,0,10,2', 9]]);
  op.snapshot(1n);
  assert.deepEqual(windowState('a'), { 0: [10, 2] }, 'kept for the allowed lateness');
  feed(op, ['a', 'x', 3]);
  assert.deepEqual(take(weir), [['a', 'a,0,10,3', 9]], 'fired again at once');
  advanceWatermark(op, 13);
  feed(op, ['a', 'x', 4]);
  assert.deepEqual(take(weir), [['a', 'a,0,10,4', 9]]);
  advanceWatermark(op, 14);
  assert.deepEqual(take(weir), [], 'the clean-up emits nothing');
  op.snapshot(2n);
  assert.deepEqual(windowState('a'), {});
  feed(op, ['a', 'x', 5]);
  assert.deepEqual(take(weir), []);
  assert.deepEqual(host.counters, new Map([['late_records_dropped', 1n]]));
  assert.deepEqual(timersOf(), []);

  // A first record after the fire time fires at once, and only once.
  reset();
  const [w2, op2] = await open(windowed((w) => w.tumbling(10), { allowedLateness: 5n }));
  advanceWatermark(op2, 12);
  feed(op2, ['a', 'x', 7]);
  assert.deepEqual(take(w2), [['a', 'a,0,10,1', 9]]);
  assert.deepEqual(timersOf(), [['a', 14]], 'no firing timer behind the watermark');
  finish(op2);
  assert.deepEqual(take(w2), []);

  // One timer both fires a window and cleans up another.
  reset();
  const [w3, op3] = await open(windowed((w) => w.tumbling(10), { allowedLateness: 10 }));
  feed(op3, ['a', 'x', 5], ['a', 'x', 15]);
  assert.deepEqual(timersOf(), [['a', 9], ['a', 19], ['a', 29]]);
  advanceWatermark(op3, 19);
  assert.deepEqual(take(w3), [['a', 'a,0,10,1', 9], ['a', 'a,10,20,1', 19]]);
  op3.snapshot(1n);
  assert.deepEqual(windowState('a'), { 10: [20, 1] });
});

test('late records are dropped and counted, or given to the late handler', async () => {
  const [weir, op] = await open(windowed((w) => w.tumbling(10)));
  feed(op, ['a', 'x', 5]);
  advanceWatermark(op, 9);
  feed(op, ['a', 'x', 9], ['b', 'x', 0], ['a', 'x', 10]);
  assert.deepEqual(take(weir), [['a', 'a,0,10,1', 9]]);
  assert.deepEqual(host.counters, new Map([['late_records_dropped', 2n]]));
  finish(op);
  assert.deepEqual(take(weir), [['a', 'a,10,20,1', 19]]);

  reset();
  const [w2, handled] = await open((w) =>
    class extends w.WindowOperator {
      constructor() {
        super({ assigner: w.tumbling(10), aggregate: count });
      }

      onLate(record) {
        const value = record.valueString();
        return value === 'drop' ? null : `late ${value}`;
      }
    },
  );
  advanceWatermark(handled, 20);
  feed(handled, ['a', 'x', 5], ['a', 'drop', 6], ['b', 'y', 19], ['b', 'z', 21]);
  assert.deepEqual(take(w2), [['a', 'late x', 5], ['b', 'late y', 19]]);
  assert.deepEqual(host.counters, new Map([['late_records_dropped', 1n]]));
  finish(handled);
  assert.deepEqual(take(w2), [['b', 'b,20,30,1', 29]]);
});

test('direct s64s from bindings that treat them as u64 are read as signed (ComponentizeJS#343)', async () => {
  // The pinned componentize-js lifts the watermark -2^63 as 2^63: unless
  // the SDK undoes it, every record is late.
  for (const unsigned of [true, false]) {
    reset();
    host.unsignedS64 = unsigned;
    const seen = [];
    const [weir, op] = await open((w) =>
      class extends w.WindowOperator {
        constructor() {
          super({ assigner: w.tumbling(10), aggregate: count });
        }

        onWatermark(watermark) {
          seen.push([watermark, w.currentWatermark(), w.currentProcessingTime()]);
        }
      },
    );
    host.processingTime = -7n;
    feed(op, ['a', 'x', 3], ['a', 'x', 12]);
    assert.deepEqual(timersOf(), [['a', 9], ['a', 19]], `unsigned ${unsigned}`);
    advanceWatermark(op, 9);
    assert.deepEqual(take(weir), [['a', 'a,0,10,1', 9]]);
    finish(op);
    assert.deepEqual(take(weir), [['a', 'a,10,20,1', 19]]);
    assert.deepEqual(seen, [[9n, 9n, -7n], [I64_MAX, I64_MAX, -7n]]);
    assert.equal(host.counters.size, 0);
  }

  // A negative timer timestamp: the host gets it where the bindings are
  // signed; the pinned ones would trap, so the call fails with a message.
  for (const unsigned of [false, true]) {
    reset();
    host.unsignedS64 = unsigned;
    const [weir, op] = await open(windowed((w) => w.tumbling(10)));
    const r = feed(op, ['a', 'x', -5]);
    if (unsigned) {
      assert.match(r.val, /^RangeError: a timer \(event-time\) at -1 is before 1970: componentize-js 0\.23 cannot pass a negative s64/);
    } else {
      assert.equal(r, undefined);
      finish(op);
      assert.deepEqual(take(weir), [['a', 'a,-10,0,1', -1]]);
    }
  }
});

test('many keys changed by timers are flushed after the call', async () => {
  const [weir, op] = await open(windowed((w) => w.tumbling(10)));
  feed(op, ['k0', 'x', 1], ['k1', 'x', 1], ['k2', 'x', 1]);
  op.snapshot(1n);
  assert.equal(host.writeCalls.length, 1);
  weir.setDirtyLimit(2);
  advanceWatermark(op, 9); // each firing removes a window: the third flushes
  assert.equal(take(weir).length, 3);
  assert.deepEqual(host.writeCalls.slice(1).map((c) => c.map((w) => w.update.tag)), [['map-remove', 'map-remove', 'map-remove']]);
  assert.deepEqual(windowState('k2'), {});
});

// Packed state writes (docs/wit.md, "Packed state writes"): the flush
// goes through `keyed-state.write-packed`; the in-memory host unpacks the
// buffer strictly, so every test above that writes state checks it too.

/**
 * The writes of `goldenOperator`, packed by hand from the layout and
 * checked against `weir_format::writes::WritesWriter` in Rust
 * (host/format/src/writes.rs) and the Python SDK
 * (guest-sdk/python/tests/test_packed.py).
 */
const GOLDEN = [
  '0105000000636f756e74', // state "count"
  '02010000006101feffffffffffffff', // value-set "a": int -2
  '030100000062', // value-clear "b"
  '010400000074616773', // state "tags"
  // map-put "a": text "x" -> record {n: uint 2**63, ok: true}
  '0401000000610401000000780902000000010000006e020000000000000080020000006f6b0001',
  '050100000061010700000000000000', // map-remove "a": int 7
  '060100000063', // map-clear "c"
  '01040000007365656e', // state "seen"
  // list-set "a": [1.5, none, bytes 00ff, ["é"], {1: "one"}]
  '0701000000610500000003000000000000f83f06050200000000ff07010000000402000000c3a9' +
    '080100000001010000000000000004030000006f6e65',
  '080100000064', // list-clear "d"
].join('');

const hex = (b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

/** Writes the golden buffer's writes in one flush, for records keyed a, b, c and d in that order. */
function goldenOperator(weir) {
  return class extends weir.Operator {
    open() {
      this.count = new weir.ValueState('count');
      this.tags = new weir.MapState('tags');
      this.seen = new weir.ListState('seen');
    }

    process(record) {
      switch (record.keyString()) {
        case 'a':
          this.count.set(-2);
          this.tags.put('x', { n: 2n ** 63n, ok: true });
          this.tags.remove(7);
          this.seen.set([1.5, null, new Uint8Array([0, 255]), ['é'], new Map([[1, 'one']])]);
          break;
        case 'b':
          this.count.clear();
          break;
        case 'c':
          this.tags.clear();
          break;
        default:
          this.seen.clear();
      }
    }
  };
}

const abcd = () => batch(['a', 'b', 'c', 'd'].map((k) => [k, '', null]));

test('the golden buffer: the same bytes as the Rust and Python SDKs', async () => {
  const [, op] = await open(goldenOperator);
  op.process(abcd());
  assert.equal(op.snapshot(1n), undefined);
  assert.deepEqual(host.packedCalls.map(hex), [GOLDEN]);
  assert.deepEqual(host.writeCalls.map((c) => c.length), [7]);
});

test('a state op starts each run of one state, and keys go in the order they changed', async () => {
  const [, op] = await open(goldenOperator);
  op.process(abcd());
  op.snapshot(1n);
  const { writes, states } = unpackWrites(host.packedCalls[0]);
  assert.deepEqual(states, ['count', 'tags', 'seen']);
  assert.deepEqual(
    writes.map((w) => [w.state, str(w.key), w.update.tag]),
    [
      ['count', 'a', 'value-set'],
      ['count', 'b', 'value-clear'],
      ['tags', 'a', 'map-put'],
      ['tags', 'a', 'map-remove'],
      ['tags', 'c', 'map-clear'],
      ['seen', 'a', 'list-set'],
      ['seen', 'd', 'list-clear'],
    ],
  );
  assert.deepEqual(host.store.get('count\0a').value, { tag: 'int', val: -2n });
  assert.deepEqual([...host.store.get('tags\0a').entries.values()].map(([k]) => k), [{ tag: 'text', val: 'x' }]);
  assert.deepEqual(host.store.get('seen\0a').list[0], { tag: 'float', val: 1.5 });

  // Two states written in turns still make one run each.
  reset();
  const keys = Array.from({ length: 50 }, (_, i) => `k${50 - i}`);
  const [, turns] = await open(
    (w) =>
      class extends w.Operator {
        open() {
          this.a = new w.ValueState('a');
          this.b = new w.ValueState('b');
        }

        process(record) {
          (record.valueString() === 'a' ? this.a : this.b).set(1);
        }
      },
  );
  turns.process(batch(keys.map((k, i) => [k, 'ab'[i % 2], null])));
  turns.snapshot(1n);
  const packed = unpackWrites(host.packedCalls[0]);
  assert.deepEqual(packed.states, ['a', 'b']);
  assert.deepEqual(
    packed.writes.map((w) => str(w.key)),
    [...keys.filter((_, i) => i % 2 === 0), ...keys.filter((_, i) => i % 2 === 1)],
  );
});

test('every value packs to the WIT value the write path stored', async () => {
  let deep64 = null;
  for (let i = 1; i < 64; i += 1) {
    deep64 = [deep64];
  }
  const nullProto = Object.create(null);
  nullProto.field = 'x';
  const values = [
    true, false, 0, -0, 42, -7, Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER, 2 ** 53, -(2 ** 60),
    1.5, -1.5e-300, NaN, Infinity, -Infinity, 12n, -12n, 2n ** 53n, I64_MIN, I64_MAX, 2n ** 63n, 2n ** 64n - 1n,
    '', 'text', 'é and 😀', 'a'.repeat(40), 'ü'.repeat(100), '\0', new Uint8Array(0), utf8('raw'),
    new foreign.Uint8Array([1, 2]), utf8('a view').subarray(2), null, [], [1, 'a', null, undefined],
    [1, , 3], new Map(), new Map([[1, 'one'], ['two', [true]], [[1, 2], new Map()]]), {},
    { count: 3, tags: ['a'], 'ключ': 1n }, { inner: { empty: {}, none: null, raw: utf8('r') } }, nullProto, deep64,
  ];
  const [, op] = await open(
    (w) =>
      class extends w.Operator {
        open() {
          this.v = new w.ValueState('v');
          this.l = new w.ListState('l');
          this.m = new w.MapState('m');
          // Operator state still lowers values through the WIT `value`
          // variant (`toValue`): the write path, to compare with.
          this.ops = new w.OperatorListState('ops');
        }

        process(record) {
          const v = values[Number(record.valueString())];
          this.v.set(v);
          this.l.set([v, v]);
          this.m.put('k', v);
        }

        snapshot() {
          this.ops.replace(values);
        }
      },
  );
  op.process(batch(values.map((_, i) => [`k${i}`, String(i), null])));
  assert.equal(op.snapshot(1n), undefined);
  assert.equal(host.packedCalls.length, 1, 'one buffer for the whole flush');
  const wit = host.operatorState.get('ops');
  values.forEach((v, i) => {
    const what = `value ${i}`;
    const stored = host.store.get(`v\0k${i}`).value;
    assert.deepEqual(plain(stored), v === null ? undefined : plain(wit[i]), what);
    assert.deepEqual(plain(host.store.get(`l\0k${i}`).list), plain([wit[i], wit[i]]), what);
    assert.deepEqual(plain([...host.store.get(`m\0k${i}`).entries.values()]), plain([[{ tag: 'text', val: 'k' }, wit[i]]]), what);
  });
  assert.deepEqual(host.store.get('v\0k3').value, { tag: 'int', val: 0n }, '-0 is the int 0, as before');

  // float(x) is a float in a tree too.
  reset();
  const [, floats] = await open(
    (w) =>
      class extends w.Operator {
        open() {
          this.v = new w.ValueState('v');
        }

        process() {
          this.v.set([w.float(6), 6]);
        }
      },
  );
  floats.process(batch([['k', '', null]]));
  floats.snapshot(1n);
  assert.deepEqual(host.store.get('v\0k').value.val.slice(1), [{ tag: 'float', val: 6 }, { tag: 'int', val: 6n }]);
});

test('64 levels of nesting are stored, 65 refused at the call', async () => {
  const nest = (levels) => {
    let v = 'leaf';
    for (let i = 1; i < levels; i += 1) {
      v = [v];
    }
    return v;
  };
  const [, op] = await open(
    (w) =>
      class extends w.Operator {
        open() {
          this.v = new w.ValueState('v');
        }

        process(record) {
          this.v.set(nest(Number(record.valueString())));
        }
      },
  );
  assert.equal(op.process(batch([['k', '64', null]])), undefined);
  assert.equal(op.snapshot(1n), undefined);
  assert.equal(host.store.get('v\0k').value.val.length, 64);
  const r = op.process(batch([['k', '65', null]]));
  assert.match(r.val, /^RangeError: state values nest at most 64 levels deep/);
});

test('a flush of more writes than a chunk is sent in chunks', async () => {
  const keys = 70_000;
  const [weir, op] = await open(wordCount);
  weir.setDirtyLimit(Infinity);
  op.process(batch(Array.from({ length: keys }, (_, i) => [`k${i}`, 'x', null])));
  assert.equal(host.packedCalls.length, 0);
  assert.equal(op.snapshot(1n), undefined);
  assert.deepEqual(host.writeCalls.map((c) => c.length), [65_536, keys - 65_536]);
  // Each buffer stands alone: it names its state before its first write.
  assert.deepEqual(host.packedCalls.map((b) => unpackWrites(b).states), [['count'], ['count']]);
  assert.deepEqual(host.store.get(`count\0k${keys - 1}`).value, { tag: 'int', val: 1n });
  assert.equal(host.store.size, keys);
  op.close();
  assert.equal(host.packedCalls.length, 2, 'nothing left to write');
});

test('a packed buffer is sent once it reaches 4 MiB', async () => {
  const big = 'x'.repeat(100_000);
  const [weir, op] = await open(
    (w) =>
      class extends w.Operator {
        open() {
          this.v = new w.ValueState('v');
        }

        process() {
          this.v.set(big);
        }
      },
  );
  weir.setDirtyLimit(Infinity);
  op.process(batch(Array.from({ length: 60 }, (_, i) => [`k${i}`, '', null])));
  op.close();
  const write = 1 + 4 + 3 + 1 + 4 + big.length; // a key of 2 or 3 bytes
  assert.equal(host.writeCalls.flat().length, 60);
  assert.ok(host.packedCalls.length >= 2, `${host.packedCalls.length} buffers`);
  for (const b of host.packedCalls.slice(0, -1)) {
    assert.ok(b.length >= 4 << 20 && b.length < (4 << 20) + write, `${b.length} bytes`);
  }
  assert.deepEqual(host.store.get('v\0k59').value, { tag: 'text', val: big });

  // The same for int values (packed inline) under long keys.
  reset();
  const [words, counts] = await open(wordCount);
  words.setDirtyLimit(Infinity);
  const long = 'k'.repeat(10_000);
  counts.process(batch(Array.from({ length: 500 }, (_, i) => [`${long}${i}`, 'x', null])));
  counts.close();
  assert.deepEqual(host.writeCalls.map((c) => c.length), [419, 81], 'about 10,017 bytes a write');
  assert.ok(host.packedCalls[0].length >= 4 << 20 && host.packedCalls[0].length < (4 << 20) + 10_020);
  assert.deepEqual(host.store.get(`count\0${long}499`).value, { tag: 'int', val: 1n });
});

test('a write the host refuses fails the hook with its message', async () => {
  // The key holds map state `count`: a value write to it is refused.
  host.store.set('count\0a', { kind: 'map', entries: new Map(), list: [] });
  const [, other] = await open(
    (w) =>
      class extends w.Operator {
        open() {
          this.count = new w.ValueState('count');
        }

        process() {
          this.count.set(1);
        }
      },
  );
  other.process(batch([['a', '', null]]));
  assert.deepEqual(other.snapshot(1n), { tag: 'err', val: 'state `count` is a map state, not a value state' });
});

test('the in-memory host refuses malformed packed buffers at their offset', () => {
  const refused = (bytes) => {
    try {
      unpackWrites(new Uint8Array(bytes));
    } catch (e) {
      assert.ok(e instanceof Malformed);
      return e.message;
    }
    throw new Error(`accepted ${bytes}`);
  };
  const head = [1, 1, 0, 0, 0, 's'.charCodeAt(0), 2, 0, 0, 0, 0];
  assert.equal(refused([9]), 'malformed packed state writes at byte 0: unknown op 0x09');
  assert.match(refused([3, 0, 0, 0, 0]), /a write before any `state` op/);
  assert.match(refused([1, 1, 0, 0, 0, 0xff]), /at byte 1: text that is not UTF-8/);
  assert.match(refused([...head, 0, 2]), /at byte 12: a boolean of 2/);
  assert.match(refused([...head, 10]), /unknown value tag 10/);
  assert.match(refused([...head, 7, 255, 255, 255, 255]), /a count of 4294967295 items/);
  assert.match(refused([...head, ...Array(64).fill([7, 1, 0, 0, 0]).flat(), 6]), /at byte 331: a value nested too deep/);
  const full = Buffer.from(GOLDEN, 'hex');
  assert.equal(unpackWrites(full).writes.length, 7);
  for (let cut = 1; cut < full.length; cut += 1) {
    try {
      unpackWrites(full.subarray(0, cut));
    } catch (e) {
      assert.match(e.message, /truncated|a count of/, `cut at ${cut}`);
    }
  }
  // Writes before a fault stay applied, as on the host.
  assert.throws(() => writePacked(new Uint8Array([...full.subarray(0, 31), 0x7f])), /at byte 31: unknown op 0x7f/);
  assert.deepEqual(host.store.get('count\0a').value, { tag: 'int', val: -2n });
  assert.deepEqual(host.writeCalls.map((c) => c.length), [2]);
});
