// An in-memory stand-in for the Weir host, for testing weir.js under Node:
// `loader.mjs` resolves every `weir:operator/*` import to this module. It
// returns and accepts values the way the componentize-js bindings do
// (variants as `{ tag, val }`, enums as strings, s64/u64 as bigint,
// `option` as undefined, a `result` error thrown as an Error with its
// string as `payload`), and from another realm, as the bindings run in one
// apart from the guest's.
//
// Event time: `advanceWatermark(operator, w)` fires every event-time timer
// at or before `w` in timestamp order, then calls `onWatermark`, as the host
// does; `advanceProcessingTime(operator, t)` fires the processing-time
// timers the clock reached; `finish(operator)` is the end of input.

import vm from 'node:vm';

export const I64_MIN = -(2n ** 63n);
export const I64_MAX = 2n ** 63n - 1n;

/** Constructors of another realm, like the bindings'. */
export const foreign = vm.runInNewContext('({ Uint8Array, Error })');

/** What the guest did and what the host holds, reset by `reset()`. */
export const host = {
  /** `${state}\0${key}` → { kind, value | entries (Map by JSON) | list }. */
  store: new Map(),
  /**
   * Every `keyed-state.write` call's list of writes; for a
   * `keyed-state.write-packed` call, the writes it applied, unpacked.
   */
  writeCalls: [],
  /** Every `keyed-state.write-packed` buffer, copied. */
  packedCalls: [],
  /** Every emitted batch, copied. */
  emitted: [],
  /** Operator list state by name. */
  operatorState: new Map(),
  /** Every log call as [level, message]. */
  logs: [],
  /** How many keyed-state reads the guest made. */
  reads: 0,
  /** A key this host refuses, as a host refuses keys of other subtasks. */
  refusedKey: null,
  /** Every declaration, as [state, kind or redistribution, type name]. */
  declared: [],
  /** Registered timers by `${domain} ${timestamp} ${key}`: { key, timestamp, domain }. */
  timers: new Map(),
  /** The current watermark and processing time (bigints). */
  watermark: I64_MIN,
  processingTime: 0n,
  /** Metrics counters by name (bigints). */
  counters: new Map(),
  /**
   * Pass `s64`s that cross as a direct core `i64` (timer timestamps, the
   * clocks, `onWatermark`, `onTimer`) as ComponentizeJS 0.23's bindings do
   * (bytecodealliance/ComponentizeJS#343): lifted as if `u64`; lowering
   * re-signs the value, then traps on a negative one.
   */
  unsignedS64: false,
};

export function reset() {
  host.store = new Map();
  host.writeCalls = [];
  host.packedCalls = [];
  host.emitted = [];
  host.operatorState = new Map();
  host.logs = [];
  host.reads = 0;
  host.refusedKey = null;
  host.declared = [];
  host.timers = new Map();
  host.watermark = I64_MIN;
  host.processingTime = 0n;
  host.counters = new Map();
  host.unsignedS64 = false;
}

/** A direct `s64` from the host, as the bindings hand it to the guest. */
const liftS64 = (v) => (host.unsignedS64 ? BigInt.asUintN(64, v) : v);

/** A direct `s64` from the guest, as the bindings lower it. */
function lowerS64(v) {
  if (!host.unsignedS64) {
    return v;
  }
  const signed = BigInt.asIntN(64, BigInt(v));
  if (signed < 0n) {
    throw new TypeError(`trap: Internal bindgen error in coreabi_from_bigint64 validation (${String(v)})`);
  }
  return signed;
}

class ComponentError extends foreign.Error {
  constructor(payload) {
    super(payload);
    Object.defineProperty(this, 'payload', { value: payload, enumerable: false });
  }
}

const text = (key) => new TextDecoder().decode(key);

function slot(state, key, kind) {
  if (host.refusedKey !== null && text(key) === host.refusedKey) {
    throw new ComponentError(`key group of key ${JSON.stringify(text(key))} is not owned by this subtask`);
  }
  const id = `${state}\0${text(key)}`;
  let s = host.store.get(id);
  if (s === undefined) {
    s = { kind, value: undefined, entries: new Map(), list: [] };
    host.store.set(id, s);
  } else if (s.kind !== kind) {
    throw new ComponentError(`state \`${state}\` is a ${s.kind} state, not a ${kind} state`);
  }
  return s;
}

const id = (v) => JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? `${x}n` : x instanceof Uint8Array ? [...x] : x));

const SCALARS = {
  boolean: (x) => typeof x === 'boolean',
  int: (x) => typeof x === 'bigint' && BigInt.asIntN(64, x) === x,
  uint: (x) => typeof x === 'bigint' && BigInt.asUintN(64, x) === x,
  float: (x) => typeof x === 'number',
  text: (x) => typeof x === 'string',
  bytes: (x) => ArrayBuffer.isView(x) && x[Symbol.toStringTag] === 'Uint8Array',
};

/** A copy of scalar case `v` (the bindings copy values out of guest memory). */
function scalar(v) {
  const ok = SCALARS[v.tag];
  if (ok === undefined || !ok(v.val)) {
    throw new TypeError(`not a WIT scalar: ${id(v)}`);
  }
  return v.tag === 'bytes' ? { tag: 'bytes', val: new foreign.Uint8Array(v.val) } : { ...v };
}

/** Checks one whole tree at `nodes[pos]` as the host does; returns the position after it. */
function tree(nodes, pos, depth) {
  if (depth > 64 || pos >= nodes.length) {
    throw new ComponentError('malformed nested value');
  }
  const n = nodes[pos];
  switch (n.tag) {
    case 'none':
      return pos + 1;
    case 'list':
      for (let i = 0, p = pos + 1; ; i += 1) {
        if (i === n.val) return p;
        p = tree(nodes, p, depth + 1);
      }
    case 'map':
      for (let i = 0, p = pos + 1; ; i += 1) {
        if (i === 2 * n.val) return p;
        p = tree(nodes, p, depth + 1);
      }
    case 'record':
      for (let i = 0, p = pos + 1; ; i += 1) {
        if (i === n.val.length) return p;
        p = tree(nodes, p, depth + 1);
      }
    default:
      scalar(n);
      return pos + 1;
  }
}

function checkValue(v) {
  if (v.tag !== 'nested') {
    return scalar(v);
  }
  if (tree(v.val, 0, 0) !== v.val.length) {
    throw new ComponentError('nested value has nodes after its tree');
  }
  const nodes = v.val.map((n) =>
    n.tag === 'list' || n.tag === 'map' || n.tag === 'none' ? { ...n } : n.tag === 'record' ? { tag: 'record', val: [...n.val] } : scalar(n),
  );
  return { tag: 'nested', val: nodes };
}

// weir:operator/output
export function emit(batch) {
  host.emitted.push(batch.slice());
}

// weir:operator/keyed-state and weir:operator/operator-state: both
// interfaces' `declare` resolve here; the mode tells them apart (a state
// kind, or a redistribution), and the two are separate namespaces.
const KINDS = new Set(['value', 'map', 'list']);
const REDISTRIBUTIONS = new Set(['split', 'union']);

export function declare(state, mode, typeName) {
  if (!KINDS.has(mode) && !REDISTRIBUTIONS.has(mode)) {
    throw new TypeError(`not a state kind or redistribution: ${String(mode)}`);
  }
  if (typeName !== undefined && typeof typeName !== 'string') {
    throw new TypeError(`option<string> is a string or undefined, not ${String(typeName)}`);
  }
  const keyed = KINDS.has(mode);
  const earlier = host.declared.find(([name, m]) => name === state && KINDS.has(m) === keyed);
  if (earlier === undefined) {
    host.declared.push([state, mode, typeName]);
  } else if (earlier[1] !== mode || earlier[2] !== typeName) {
    throw new ComponentError(`state \`${state}\` is already declared as ${earlier[1]}, not as ${mode}`);
  }
}

// weir:operator/keyed-state
export function valueGet(state, key) {
  host.reads += 1;
  return slot(state, key, 'value').value;
}

export function mapGet(state, key, mapKey) {
  host.reads += 1;
  const e = slot(state, key, 'map').entries.get(id(mapKey));
  return e === undefined ? undefined : e[1];
}

export function mapEntries(state, key) {
  host.reads += 1;
  return [...slot(state, key, 'map').entries.values()];
}

export function listGet(state, key) {
  host.reads += 1;
  return [...slot(state, key, 'list').list];
}

export function write(writes) {
  host.writeCalls.push(writes);
  for (const w of writes) {
    apply(w);
  }
}

/** Applies one write, `{ state, key, update }` as `write` takes it. */
function apply({ state, key, update }) {
  const kind = update.tag.split('-')[0];
  const s = slot(state, key, kind);
  switch (update.tag) {
    case 'value-set':
      s.value = checkValue(update.val);
      break;
    case 'value-clear':
      s.value = undefined;
      break;
    case 'map-put':
      s.entries.set(id(update.val[0]), [checkValue(update.val[0]), checkValue(update.val[1])]);
      break;
    case 'map-remove':
      s.entries.delete(id(update.val));
      break;
    case 'map-clear':
      s.entries.clear();
      break;
    case 'list-set':
      s.list = update.val.map(checkValue);
      break;
    case 'list-clear':
      s.list = [];
      break;
    default:
      throw new TypeError(`unknown update ${update.tag}`);
  }
}

// The packed state-write layout (docs/wit.md, "Packed state writes",
// layout version 1), read as the host reads it: strictly, into the
// `{ state, key, update }` writes `write` takes, with values as the WIT
// `value` variant (a scalar at the root as its own case, anything else as
// a `nested` list of pre-order nodes).

/** A packed buffer the host refuses, at byte `offset`. */
export class Malformed extends Error {
  constructor(offset, problem) {
    super(`malformed packed state writes at byte ${offset}: ${problem}`);
    this.offset = offset;
  }
}

const OPS = [null, 'state', 'value-set', 'value-clear', 'map-put', 'map-remove', 'map-clear', 'list-set', 'list-clear'];
const SCALAR_TAGS = ['boolean', 'int', 'uint', 'float', 'text', 'bytes'];
const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true });

class Reader {
  constructor(buf) {
    this.buf = new Uint8Array(buf);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
    /** The state the writes read next go to. */
    this.state = undefined;
    /** The names of the `state` ops read, in order. */
    this.states = [];
  }

  take(n) {
    const left = this.buf.length - this.pos;
    if (n > left) {
      throw new Malformed(this.pos, `truncated: need ${n} bytes, ${left} left`);
    }
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u8() {
    return this.buf[this.take(1)];
  }

  u32() {
    return this.view.getUint32(this.take(4), true);
  }

  /** A `len: u32 LE`-prefixed byte string, copied. */
  bytes() {
    const n = this.u32();
    const at = this.take(n);
    return this.buf.slice(at, at + n);
  }

  text() {
    const at = this.pos;
    try {
      return STRICT_UTF8.decode(this.bytes());
    } catch (e) {
      if (e instanceof Malformed) {
        throw e;
      }
      throw new Malformed(at, 'text that is not UTF-8');
    }
  }

  count(minBytes) {
    const at = this.pos;
    const n = this.u32();
    const left = this.buf.length - this.pos;
    if (n * minBytes > left) {
      throw new Malformed(at, `a count of ${n} items in ${left} bytes`);
    }
    return n;
  }

  /** One value in canonical form, as a WIT `value`. */
  value() {
    const tag = this.buf[this.pos];
    if (tag >= 6 && tag <= 9) {
      const nodes = [];
      this.node(nodes, 1);
      return { tag: 'nested', val: nodes };
    }
    return this.scalar();
  }

  scalar() {
    const at = this.pos;
    const tag = this.u8();
    switch (tag) {
      case 0: {
        const b = this.u8();
        if (b > 1) {
          throw new Malformed(at + 1, `a boolean of ${b}`);
        }
        return { tag: 'boolean', val: b === 1 };
      }
      case 1:
        return { tag: 'int', val: this.view.getBigInt64(this.take(8), true) };
      case 2:
        return { tag: 'uint', val: this.view.getBigUint64(this.take(8), true) };
      case 3:
        return { tag: 'float', val: this.view.getFloat64(this.take(8), true) };
      case 4:
        return { tag: 'text', val: this.text() };
      case 5:
        return { tag: 'bytes', val: this.bytes() };
      default:
        throw new Malformed(at, `unknown value tag ${tag}`);
    }
  }

  /** Appends the pre-order nodes of one value nested `depth` levels deep. */
  node(nodes, depth) {
    if (depth > 64) {
      throw new Malformed(this.pos, 'a value nested too deep');
    }
    const tag = this.buf[this.pos];
    if (tag === 6) {
      this.pos += 1;
      nodes.push({ tag: 'none' });
    } else if (tag === 7) {
      this.pos += 1;
      const n = this.count(1);
      nodes.push({ tag: 'list', val: n });
      for (let i = 0; i < n; i += 1) {
        this.node(nodes, depth + 1);
      }
    } else if (tag === 8) {
      this.pos += 1;
      const n = this.count(2);
      nodes.push({ tag: 'map', val: n });
      for (let i = 0; i < 2 * n; i += 1) {
        this.node(nodes, depth + 1);
      }
    } else if (tag === 9) {
      this.pos += 1;
      const n = this.count(5);
      const names = [];
      nodes.push({ tag: 'record', val: names });
      for (let i = 0; i < n; i += 1) {
        names.push(this.text());
        this.node(nodes, depth + 1);
      }
    } else {
      nodes.push(this.scalar());
    }
  }

  /** The next write, or null at the end; `state` ops are followed. */
  next() {
    for (;;) {
      if (this.pos === this.buf.length) {
        return null;
      }
      const at = this.pos;
      const op = this.u8();
      if (op === 1) {
        this.state = this.text();
        this.states.push(this.state);
        continue;
      }
      if (!(op >= 2 && op <= 8)) {
        throw new Malformed(at, `unknown op 0x${op.toString(16).padStart(2, '0')}`);
      }
      if (this.state === undefined) {
        throw new Malformed(at, 'a write before any `state` op');
      }
      const key = this.bytes();
      const tag = OPS[op];
      let update;
      switch (op) {
        case 2:
        case 5:
          update = { tag, val: this.value() };
          break;
        case 4:
          update = { tag, val: [this.value(), this.value()] };
          break;
        case 7: {
          const n = this.count(1);
          const val = [];
          for (let i = 0; i < n; i += 1) {
            val.push(this.value());
          }
          update = { tag, val };
          break;
        }
        default:
          update = { tag };
      }
      return { state: this.state, key, update };
    }
  }
}

/**
 * The writes of a packed buffer (`{ state, key, update }`, as `write`
 * takes them) and the state names of its `state` ops in order; throws
 * {@link Malformed} where the host would refuse it.
 */
export function unpackWrites(buf) {
  const r = new Reader(buf);
  const writes = [];
  for (let w = r.next(); w !== null; w = r.next()) {
    writes.push(w);
  }
  return { writes, states: r.states };
}

/**
 * `keyed-state.write-packed`: applies the writes in order; those before a
 * fault stay applied, as on the host. The bindings copy the buffer out of
 * guest memory; so does this (the SDK reuses its buffer).
 */
export function writePacked(buf) {
  if (!(ArrayBuffer.isView(buf) && buf[Symbol.toStringTag] === 'Uint8Array')) {
    throw new TypeError(`list<u8> lowers from a Uint8Array, not ${String(buf)}`);
  }
  const copy = new Uint8Array(buf);
  host.packedCalls.push(copy);
  const r = new Reader(copy);
  const applied = [];
  host.writeCalls.push(applied);
  try {
    for (let w = r.next(); w !== null; w = r.next()) {
      apply(w);
      applied.push(w);
    }
  } catch (e) {
    throw e instanceof Malformed ? new ComponentError(e.message) : e;
  }
}

// weir:operator/operator-state
export function get(state) {
  return [...(host.operatorState.get(state) ?? [])];
}

export function replace(state, values) {
  host.operatorState.set(state, values.map(checkValue));
}

// weir:operator/logging
export function log(level, message) {
  host.logs.push([level, message]);
}

// weir:operator/timers
const DOMAINS = new Set(['event-time', 'processing-time']);

function timer(key, timestamp, domain) {
  if (!SCALARS.bytes(key) || !SCALARS.int(timestamp) || !DOMAINS.has(domain)) {
    throw new TypeError(`timer (${id(key)}, ${String(timestamp)}, ${String(domain)}) does not lower to (list<u8>, s64, time-domain)`);
  }
  const t = { key: new foreign.Uint8Array(key), timestamp, domain };
  return [`${domain} ${timestamp} ${text(key)}`, t];
}

export function register(key, timestamp, domain) {
  const [k, t] = timer(key, lowerS64(timestamp), domain);
  host.timers.set(k, t);
}

function deleteTimer(key, timestamp, domain) {
  host.timers.delete(timer(key, lowerS64(timestamp), domain)[0]);
}
export { deleteTimer as delete };

export function currentWatermark() {
  return liftS64(host.watermark);
}

export function currentProcessingTime() {
  return liftS64(host.processingTime);
}

// weir:operator/metrics
export function counterAdd(name, delta) {
  if (typeof name !== 'string' || !SCALARS.uint(delta)) {
    throw new TypeError(`counter-add(${String(name)}, ${String(delta)}) does not lower`);
  }
  host.counters.set(name, (host.counters.get(name) ?? 0n) + delta);
}

// The host's side of event time, for tests.

/** Throws a hook's `{ tag: 'err' }` result. */
function check(result, hook) {
  if (result !== undefined) {
    throw new Error(`${hook} failed: ${result.val}`);
  }
}

/** Fires the timers of `domain` due at `upto` that were registered when it started; whether any were. */
function fire(operator, domain, upto) {
  const due = [...host.timers.entries()]
    .filter(([, t]) => t.domain === domain && t.timestamp <= upto)
    .sort(([ka, a], [kb, b]) => (a.timestamp < b.timestamp ? -1 : a.timestamp > b.timestamp ? 1 : ka < kb ? -1 : ka > kb ? 1 : 0));
  for (const [k, t] of due) {
    if (host.timers.delete(k)) {
      check(operator.onTimer(t.key, liftS64(t.timestamp), t.domain), 'onTimer');
    }
  }
  return due.length > 0;
}

/** Fires the processing-time timers the clock reached, also those registered while they fire. */
export function fireProcessingTime(operator) {
  while (fire(operator, 'processing-time', host.processingTime)) {
    // again: a timer in the past fires as soon as the call returns
  }
}

/**
 * Advances the watermark to `watermark` (bigint or number): fires every
 * event-time timer at or before it in timestamp (then key) order, then
 * calls `onWatermark`. Timers registered at or before it meanwhile wait for
 * the next watermark, as the host does.
 */
export function advanceWatermark(operator, watermark) {
  const w = BigInt(watermark);
  if (w < host.watermark) {
    throw new RangeError(`watermark ${w} is behind ${host.watermark}`);
  }
  host.watermark = w;
  fire(operator, 'event-time', w);
  check(operator.onWatermark(liftS64(w)), 'onWatermark');
  fireProcessingTime(operator);
}

/** Sets the host's clock to `now` and fires the processing-time timers it reached. */
export function advanceProcessingTime(operator, now) {
  const t = BigInt(now);
  if (t < host.processingTime) {
    throw new RangeError(`processing time ${t} is behind ${host.processingTime}`);
  }
  host.processingTime = t;
  fireProcessingTime(operator);
}

/** End of input: the watermark becomes the largest s64, then `close`. */
export function finish(operator) {
  advanceWatermark(operator, I64_MAX);
  check(operator.close(), 'close');
}

/** The registered timers of `domain` as sorted `[key, timestamp]` (timestamps as numbers). */
export function timersOf(domain = 'event-time') {
  return [...host.timers.values()]
    .filter((t) => t.domain === domain)
    .map((t) => [text(t.key), Number(t.timestamp)])
    .sort(([ka, a], [kb, b]) => (ka < kb ? -1 : ka > kb ? 1 : a - b));
}
