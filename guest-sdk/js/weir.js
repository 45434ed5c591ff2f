/**
 * Write Weir stream operators in JavaScript.
 *
 * Extend {@link Operator}, then export it from your component's `app.js`
 * with `export const operator = exportOperator(MyOperator);` and build with
 * `componentize-js app.js --wit wit --world-name stream-operator
 * --disable http fetch-event --out op.wasm` (see `docs/javascript.md`). Put
 * this file next to `app.js` and import it as `./weir.js`: componentize-js
 * resolves relative imports inside the source file's folder.
 *
 * The semantics match the Rust SDK (`weir-sdk`) and the Python helper
 * (`guest-sdk/python/weir`): records arrive one at a time from the host's
 * packed batches; everything a hook emits leaves as one packed batch;
 * keyed state ({@link ValueState}, {@link MapState}, {@link ListState}) is
 * scoped to the key of the record being processed and kept in a write-back
 * cache that is handed to the host in one `keyed-state.write-packed` call
 * (one buffer in the packed state-write layout) when `snapshot` and `close`
 * return (and after a `process` call that leaves more than
 * {@link DIRTY_LIMIT} keys dirty). State values use the WIT
 * `value` variant, so a number, bigint, string, Uint8Array or boolean, and
 * arrays, Maps and plain objects of them, read back as the same values in
 * Rust and Python.
 *
 * Event time (`weir:operator@0.2.0`, docs/sdk.md "Event time"): records
 * carry `timestamp`; timers per key ({@link registerEventTimeTimer},
 * {@link registerProcessingTimeTimer}, ...) call back
 * {@link Operator#onTimer}, and {@link Operator#onWatermark} follows every
 * watermark. {@link WindowOperator} implements tumbling, sliding and session
 * windows ({@link tumbling}, {@link sliding}, {@link session}) with the
 * state layout every SDK shares. Timestamps are bigints, as s64 is at the
 * WIT boundary; where the SDK takes one, a safe-integer number also works.
 */

import { emit as emitBatch } from 'weir:operator/output@0.2.0';
import * as keyedState from 'weir:operator/keyed-state@0.2.0';
import * as operatorState from 'weir:operator/operator-state@0.2.0';
import * as timers from 'weir:operator/timers@0.2.0';
import { counterAdd as hostCounterAdd } from 'weir:operator/metrics@0.2.0';
import { log as hostLog } from 'weir:operator/logging@0.2.0';

const HAS_KEY = 1;
const HAS_TIMESTAMP = 2;
const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;
const U64_MAX = 2n ** 64n - 1n;
const SAFE_MIN = BigInt(Number.MIN_SAFE_INTEGER);
const SAFE_MAX = BigInt(Number.MAX_SAFE_INTEGER);

const UTF8_DECODER = new TextDecoder();
const UTF8_ENCODER = new TextEncoder();

// The componentize-js bindings run in another realm than this module, so
// the arrays and errors they hand over fail `instanceof` here: test by
// internal type instead, and re-view their bytes with this realm's class.

/** Whether `v` is a Uint8Array of any realm. */
function isBytes(v) {
  return v instanceof Uint8Array || (ArrayBuffer.isView(v) && v[Symbol.toStringTag] === 'Uint8Array');
}

/** `bytes` (a Uint8Array of any realm) as this realm's Uint8Array, not copied. */
function ownBytes(bytes) {
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Whether `e` is an Error of any realm. */
function isError(e) {
  return Object.prototype.toString.call(e) === '[object Error]';
}

/** Keys a state handle keeps cached after a flush, by default, as in the Rust SDK. */
export const CACHE_CAPACITY = 1_000_000;

let cacheCapacity = CACHE_CAPACITY;

/**
 * Sets how many keys each state handle keeps cached after a flush (0: none,
 * so state is re-read from the host after every checkpoint).
 */
export function setCacheCapacity(keys) {
  if (!Number.isSafeInteger(keys) || keys < 0) {
    throw new RangeError(`cache capacity is a whole number of keys, not ${String(keys)}`);
  }
  cacheCapacity = keys;
}

/** Static facts about the subtask an instance runs as. */
export class Context {
  constructor(context) {
    /** The operator's uid from the job file. */
    this.uid = context.uid;
    /** The operator's `config` string from the job file, verbatim. */
    this.config = context.config;
    /** This subtask's index, `0 .. parallelism`. */
    this.subtaskIndex = context.subtaskIndex;
    /** How many subtasks the operator runs as. */
    this.parallelism = context.parallelism;
    /** The number of key groups keys hash into. */
    this.maxParallelism = context.maxParallelism;
    /** How many times the job restarted before this instance (0 first). */
    this.attemptNumber = context.attemptNumber;
    Object.freeze(this);
  }
}

/**
 * An input record: `key` (Uint8Array or null), `value` (Uint8Array),
 * `timestamp` (bigint milliseconds since the epoch, or null). Key and value
 * are views into the input batch: copy them (`slice()`) to keep them.
 */
export class Record {
  constructor(key, value, timestamp) {
    this.key = key;
    this.value = value;
    this.timestamp = timestamp;
  }

  /** The value decoded as UTF-8 (invalid bytes replaced). */
  valueString() {
    return UTF8_DECODER.decode(this.value);
  }

  /** The key decoded as UTF-8 (invalid bytes replaced), or null. */
  keyString() {
    return this.key === null ? null : UTF8_DECODER.decode(this.key);
  }
}

/**
 * The records of a packed batch (layout version 1, docs/wit.md), rejecting
 * unknown flag bits and truncated records.
 *
 * Written for SpiderMonkey's interpreter, which runs every operation of
 * this loop once per record: bytes are read by index, no generator, no
 * closures.
 */
export function decodeBatch(packed) {
  const b = ownBytes(packed);
  const end = b.length;
  const records = [];
  let view = null;
  let pos = 0;
  while (pos < end) {
    const flags = b[pos];
    pos += 1;
    if (flags > (HAS_KEY | HAS_TIMESTAMP)) {
      throw new RangeError(
        `packed batch has unknown record flags 0x${flags.toString(16).padStart(2, '0')}`,
      );
    }
    let timestamp = null;
    let key = null;
    if (flags & HAS_TIMESTAMP) {
      if (pos + 8 > end) {
        throw truncated();
      }
      view ??= new DataView(b.buffer, b.byteOffset, b.byteLength);
      timestamp = view.getBigInt64(pos, true);
      pos += 8;
    }
    if (flags & HAS_KEY) {
      if (pos + 4 > end) {
        throw truncated();
      }
      const n = (b[pos] | (b[pos + 1] << 8) | (b[pos + 2] << 16) | (b[pos + 3] << 24)) >>> 0;
      pos += 4;
      if (n > end - pos) {
        throw truncated();
      }
      key = b.subarray(pos, pos + n);
      pos += n;
    }
    if (pos + 4 > end) {
      throw truncated();
    }
    const n = (b[pos] | (b[pos + 1] << 8) | (b[pos + 2] << 16) | (b[pos + 3] << 24)) >>> 0;
    pos += 4;
    if (n > end - pos) {
      throw truncated();
    }
    records.push(new Record(key, b.subarray(pos, pos + n), timestamp));
    pos += n;
  }
  return records;
}

function truncated() {
  return new RangeError('packed batch truncated');
}

/** Collects emitted records; the SDK sends them as one batch per hook call. */
export class Emitter {
  constructor() {
    this._buf = new Uint8Array(1024);
    this._len = 0;
    this._timestamp = null;
  }

  /**
   * Emits `key` (Uint8Array, string or null) → `value` (Uint8Array or
   * string). The timestamp (bigint, number or null) defaults to the current
   * input record's, as in Flink; there is none in `snapshot` and `close`.
   */
  emit(key, value, timestamp = this._timestamp) {
    const hasKey = key !== null && key !== undefined;
    const ts = timestamp === null || timestamp === undefined ? null : BigInt(timestamp);
    if (ts !== null && (ts < I64_MIN || ts > I64_MAX)) {
      throw new RangeError(`timestamp ${ts} is outside the signed 64-bit range`);
    }
    // Strings are encoded straight into the buffer: reserve their worst case.
    this._reserve(13 + (hasKey ? sizeBound(key, 'key') : 0) + sizeBound(value, 'value'));
    this._buf[this._len] = (hasKey ? HAS_KEY : 0) | (ts !== null ? HAS_TIMESTAMP : 0);
    this._len += 1;
    if (ts !== null) {
      new DataView(this._buf.buffer).setBigInt64(this._len, ts, true);
      this._len += 8;
    }
    if (hasKey) {
      this._put(key);
    }
    this._put(value);
  }

  _put(bytes) {
    const buf = this._buf;
    const at = this._len + 4;
    let n;
    if (typeof bytes === 'string') {
      n = putAscii(bytes, buf, at);
      if (n < 0) {
        n = UTF8_ENCODER.encodeInto(bytes, buf.subarray(at)).written;
      }
    } else {
      buf.set(bytes, at);
      n = bytes.length;
    }
    const p = this._len;
    buf[p] = n;
    buf[p + 1] = n >>> 8;
    buf[p + 2] = n >>> 16;
    buf[p + 3] = n >>> 24;
    this._len = at + n;
  }

  _reserve(n) {
    if (this._len + n <= this._buf.length) {
      return;
    }
    let size = this._buf.length * 2;
    while (size < this._len + n) {
      size *= 2;
    }
    const buf = new Uint8Array(size);
    buf.set(this._buf.subarray(0, this._len));
    this._buf = buf;
  }

  _send() {
    if (this._len > 0) {
      emitBatch(this._buf.subarray(0, this._len));
      this._len = 0;
    }
  }
}

/**
 * Writes a short ASCII string at `buf[at..]` and returns its length, or -1
 * if it is long or not ASCII: cheaper than `encodeInto`, which allocates,
 * for the short keys and values most operators emit.
 */
function putAscii(str, buf, at) {
  const n = str.length;
  if (n > 32) {
    return -1;
  }
  for (let i = 0; i < n; i += 1) {
    const c = str.charCodeAt(i);
    if (c > 0x7f) {
      return -1;
    }
    buf[at + i] = c;
  }
  return n;
}

/** The most bytes `v` (a key or value to emit) can take, checking its type. */
function sizeBound(v, what) {
  if (typeof v === 'string') {
    return v.length * 3;
  }
  if (isBytes(v)) {
    return v.length;
  }
  throw new TypeError(
    `an emitted ${what} is a string or Uint8Array${what === 'key' ? ' or null' : ''}, not ${describe(v)}`,
  );
}

function describe(v) {
  if (v === null) {
    return 'null';
  }
  if (typeof v === 'object') {
    return v.constructor ? v.constructor.name : 'object';
  }
  return typeof v;
}

/**
 * A number to store as a WIT `float` even when it is whole: see
 * {@link float}. A Number object, so arithmetic and `toFixed` work on it.
 */
class Float extends Number {
  get value() {
    return this.valueOf();
  }
}

/**
 * Marks number `x` to be stored as a WIT `float` even when it is whole,
 * where a plain number would become an `int`: for state a Rust or Python
 * twin writes as a float (`{ total: float(total) }`), so every language
 * writes the same typed value. Read from the host, it is a plain number.
 */
export function float(x) {
  if (typeof x !== 'number') {
    throw new TypeError(`float() takes a number, not ${describe(x)}`);
  }
  return new Float(x);
}

/** How many levels a state value may nest, its root included, as the host enforces. */
const MAX_DEPTH = 64;

/**
 * Converts a JavaScript value to the WIT `value` variant: scalars to their
 * own cases, null, undefined, arrays, Maps and plain objects to a `nested`
 * tree of nodes in pre-order (docs/wit.md).
 */
function toValue(v) {
  switch (typeof v) {
    case 'boolean':
      return { tag: 'boolean', val: v };
    case 'number':
      return Number.isSafeInteger(v) ? { tag: 'int', val: BigInt(v) } : { tag: 'float', val: v };
    case 'bigint':
      return { tag: intTag(v), val: v };
    case 'string':
      return { tag: 'text', val: v };
    default: {
      if (isBytes(v)) {
        return { tag: 'bytes', val: v };
      }
      if (v instanceof Float) {
        return { tag: 'float', val: v.value };
      }
      const nodes = [];
      flatten(v, nodes, 0);
      return { tag: 'nested', val: nodes };
    }
  }
}

/** `int` or `uint` for a bigint, or a RangeError outside both. */
function intTag(v) {
  if (v >= I64_MIN && v <= I64_MAX) {
    return 'int';
  }
  if (v >= 0n && v <= U64_MAX) {
    return 'uint';
  }
  throw new RangeError(`state integer ${v} is outside the signed and unsigned 64-bit ranges`);
}

/** Appends the pre-order nodes of `v` to `out`. */
function flatten(v, out, depth) {
  if (depth >= MAX_DEPTH) {
    throw new RangeError(`state values nest at most ${MAX_DEPTH} levels deep`);
  }
  switch (typeof v) {
    case 'undefined':
      out.push({ tag: 'none' });
      return;
    case 'boolean':
    case 'number':
    case 'bigint':
    case 'string':
      out.push(toValue(v));
      return;
    case 'object':
      if (v === null) {
        out.push({ tag: 'none' });
        return;
      }
      if (isBytes(v)) {
        out.push({ tag: 'bytes', val: v });
        return;
      }
      if (v instanceof Float) {
        out.push({ tag: 'float', val: v.value });
        return;
      }
      if (Array.isArray(v)) {
        out.push({ tag: 'list', val: v.length });
        for (const item of v) {
          flatten(item, out, depth + 1);
        }
        return;
      }
      if (v instanceof Map) {
        out.push({ tag: 'map', val: v.size });
        for (const [k, item] of v) {
          flatten(k, out, depth + 1);
          flatten(item, out, depth + 1);
        }
        return;
      }
      if (isPlainObject(v)) {
        const names = Object.keys(v);
        out.push({ tag: 'record', val: names });
        for (const name of names) {
          flatten(v[name], out, depth + 1);
        }
        return;
      }
      break;
    default:
      break;
  }
  throw notAStateValue(v);
}

function notAStateValue(v) {
  return new TypeError(
    'state values are boolean, number, bigint, string, Uint8Array, null, undefined, ' +
      `an Array, a Map or a plain object, not ${describe(v)}`,
  );
}

// Packed state writes (docs/wit.md, "Packed state writes", layout version
// 1): a flush hands the host one buffer per chunk through
// `keyed-state.write-packed`, not a list of WIT records, because the
// bindings lower those write by write, key by key and node by node in the
// interpreter. Every value is written in its canonical form, converted by
// the same rules as `toValue`: a safe-integer number is an int, any other
// number a float, a bigint an int or uint, `float(x)` a float, null and
// undefined none, an array a list, a Map a map, a plain object a record.

const OP_STATE = 0x01;
const OP_VALUE_SET = 0x02;
const OP_VALUE_CLEAR = 0x03;
const OP_MAP_PUT = 0x04;
const OP_MAP_REMOVE = 0x05;
const OP_MAP_CLEAR = 0x06;
const OP_LIST_SET = 0x07;
const OP_LIST_CLEAR = 0x08;
const TAG_BOOLEAN = 0;
const TAG_INT = 1;
const TAG_UINT = 2;
const TAG_FLOAT = 3;
const TAG_TEXT = 4;
const TAG_BYTES = 5;
const TAG_NONE = 6;
const TAG_LIST = 7;
const TAG_MAP = 8;
const TAG_RECORD = 9;
const TWO_32 = 4294967296;

/** Writes per `keyed-state.write-packed` call at most: a bounded buffer per call. */
const WRITE_CHUNK = 65_536;

/**
 * Bytes after which a flush hands its buffer to the host before starting
 * the next write (a write is never split, so a buffer exceeds this by at
 * most one write).
 */
const WRITE_BYTES = 4 << 20;

/** A packed buffer kept between flushes up to this size, and dropped above it. */
const KEEP_BYTES = 1 << 20;

// The buffer a flush fills, module-wide: the interpreter reads these
// faster than an object's fields. Written for SpiderMonkey's interpreter
// (in the component, every operation is interpreted): a typed-array element
// store costs about as much as a native call that writes four or eight
// bytes (`DataView#setUint32`, `Uint8Array#set`), and a call to a JavaScript
// function more than either, so multi-byte fields go through the natives and
// the commonest write is inlined (`ValueState#_pack`).
let pk = new Uint8Array(0);
let pkView = new DataView(pk.buffer);
/** Bytes used. */
let pkPos = 0;
/** Writes in the buffer. */
let pkWrites = 0;
/** The `state` op (of a state handle) the writes at the end of the buffer go to. */
let pkState = null;

/** Makes room for `n` more bytes. */
function pkReserve(n) {
  const need = pkPos + n;
  if (need <= pk.length) {
    return;
  }
  let size = Math.max(pk.length * 2, 1 << 16);
  while (size < need) {
    size *= 2;
  }
  const grown = new Uint8Array(size);
  grown.set(new Uint8Array(pk.buffer, 0, pkPos));
  pk = grown;
  pkView = new DataView(grown.buffer);
}

/**
 * Starts write `op` under `key` (a Uint8Array) to the state whose `state`
 * op is `stateOp` (a handle's `_stateOp`): hands the buffer to the host
 * first if it is full, and names the state if the write before went to
 * another one. The write's values follow (`packValue`).
 */
function pkBegin(stateOp, op, key) {
  if (pkWrites >= WRITE_CHUNK || pkPos >= WRITE_BYTES) {
    pkSend();
  }
  const n = key.length;
  if (pkState !== stateOp) {
    pkReserve(stateOp.length + 5 + n);
    pk.set(stateOp, pkPos);
    pkPos += stateOp.length;
    pkState = stateOp;
  } else if (pkPos + 5 + n > pk.length) {
    pkReserve(5 + n);
  }
  const p = pkPos;
  pk[p] = op;
  pkView.setUint32(p + 1, n, true);
  pk.set(key, p + 5);
  pkPos = p + 5 + n;
  pkWrites += 1;
}

/** Hands the buffer to the host, if it holds a write, and empties it. */
function pkSend() {
  try {
    if (pkWrites > 0) {
      keyedState.writePacked(new Uint8Array(pk.buffer, 0, pkPos));
    }
  } finally {
    pkPos = 0;
    pkWrites = 0;
    pkState = null;
  }
}

/** Appends a `u32 LE` (a count). */
function pkU32(n) {
  if (pkPos + 4 > pk.length) {
    pkReserve(4);
  }
  pkView.setUint32(pkPos, n, true);
  pkPos += 4;
}

/** Appends a tag byte and a `u32 LE` (a length or a count). */
function pkTagU32(tag, n) {
  if (pkPos + 5 > pk.length) {
    pkReserve(5);
  }
  const p = pkPos;
  pk[p] = tag;
  pkView.setUint32(p + 1, n, true);
  pkPos = p + 5;
}

/** Appends `tag` (unless it is -1), then string `s` as `len: u32 LE` and UTF-8. */
function pkString(tag, s) {
  // The worst case: three bytes per UTF-16 unit.
  pkReserve(5 + s.length * 3);
  let at = pkPos;
  if (tag >= 0) {
    pk[at] = tag;
    at += 1;
  }
  const n = UTF8_ENCODER.encodeInto(s, new Uint8Array(pk.buffer, at + 4, pk.length - at - 4)).written;
  pkView.setUint32(at, n, true);
  pkPos = at + 4 + n;
}

/** Appends a tag byte and eight bytes: an int's, a uint's or a float's. */
function pk9(tag) {
  if (pkPos + 9 > pk.length) {
    pkReserve(9);
  }
  const p = pkPos;
  pk[p] = tag;
  pkPos = p + 9;
  return p + 1;
}

/** Appends the canonical form of state value `v`, nested `depth` levels deep. */
function packValue(v, depth) {
  switch (typeof v) {
    case 'number': {
      if ((v | 0) === v) {
        // An int32 (-0 too: the int 0, as `toValue` has it).
        const p = pk9(TAG_INT);
        pkView.setInt32(p, v, true);
        pkView.setInt32(p + 4, v < 0 ? -1 : 0, true);
      } else if (Number.isSafeInteger(v)) {
        // As two halves, no bigint to allocate: `>>> 0` is the low 32 bits
        // of any safe integer, the division's floor the (signed) rest.
        const p = pk9(TAG_INT);
        pkView.setUint32(p, v >>> 0, true);
        pkView.setInt32(p + 4, Math.floor(v / TWO_32), true);
      } else {
        pkView.setFloat64(pk9(TAG_FLOAT), v, true);
      }
      return;
    }
    case 'string':
      pkString(TAG_TEXT, v);
      return;
    case 'boolean':
      if (pkPos + 2 > pk.length) {
        pkReserve(2);
      }
      pkView.setUint16(pkPos, v ? 0x100 | TAG_BOOLEAN : TAG_BOOLEAN, true);
      pkPos += 2;
      return;
    case 'bigint':
      if (intTag(v) === 'int') {
        pkView.setBigInt64(pk9(TAG_INT), v, true);
      } else {
        pkView.setBigUint64(pk9(TAG_UINT), v, true);
      }
      return;
    case 'undefined':
      pkNone();
      return;
    case 'object':
      packObject(v, depth);
      return;
    default:
      throw notAStateValue(v);
  }
}

function pkNone() {
  if (pkPos + 1 > pk.length) {
    pkReserve(1);
  }
  pk[pkPos] = TAG_NONE;
  pkPos += 1;
}

function packObject(v, depth) {
  if (v === null) {
    pkNone();
    return;
  }
  if (isBytes(v)) {
    const n = v.length;
    pkTagU32(TAG_BYTES, n);
    pkReserve(n);
    pk.set(v, pkPos);
    pkPos += n;
    return;
  }
  if (v instanceof Float) {
    pkView.setFloat64(pk9(TAG_FLOAT), v.value, true);
    return;
  }
  const inner = depth + 1;
  if (Array.isArray(v)) {
    const n = v.length;
    if (n > 0 && inner >= MAX_DEPTH) {
      throw tooDeep();
    }
    pkTagU32(TAG_LIST, n);
    // By index: a hole is undefined, none, as `for...of` gives it.
    for (let i = 0; i < n; i += 1) {
      packValue(v[i], inner);
    }
    return;
  }
  if (v instanceof Map) {
    if (v.size > 0 && inner >= MAX_DEPTH) {
      throw tooDeep();
    }
    pkTagU32(TAG_MAP, v.size);
    for (const [k, item] of v) {
      packValue(k, inner);
      packValue(item, inner);
    }
    return;
  }
  if (isPlainObject(v)) {
    const names = Object.keys(v);
    const n = names.length;
    if (n > 0 && inner >= MAX_DEPTH) {
      throw tooDeep();
    }
    pkTagU32(TAG_RECORD, n);
    for (let i = 0; i < n; i += 1) {
      const name = names[i];
      pkString(-1, name);
      packValue(v[name], inner);
    }
    return;
  }
  throw notAStateValue(v);
}

function tooDeep() {
  return new RangeError(`state values nest at most ${MAX_DEPTH} levels deep`);
}

/** The `state` op naming state `name`. */
function stateOp(name) {
  const bytes = UTF8_ENCODER.encode(name);
  const op = new Uint8Array(5 + bytes.length);
  op[0] = OP_STATE;
  new DataView(op.buffer).setUint32(1, bytes.length, true);
  op.set(bytes, 5);
  return op;
}

/** Whether `v` is an object literal (or has a null prototype), not a class instance. */
function isPlainObject(v) {
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/** Throws if `v` cannot be a state value, without converting it. */
function checkValue(v) {
  const t = typeof v;
  if (t !== 'number' && t !== 'string' && t !== 'boolean') {
    toValue(v);
  }
}

/** Converts the WIT `value` variant to a JavaScript value. */
function fromValue(v) {
  if (v.tag === 'nested') {
    const cursor = { nodes: v.val, pos: 0 };
    return unflatten(cursor);
  }
  return fromScalar(v);
}

/** A scalar case (of `value` or `node`) as a JavaScript value. */
function fromScalar(v) {
  switch (v.tag) {
    case 'int':
    case 'uint':
      return v.val >= SAFE_MIN && v.val <= SAFE_MAX ? Number(v.val) : v.val;
    case 'bytes':
      return ownBytes(v.val);
    default:
      return v.val;
  }
}

/** The value whose tree starts at `cursor.nodes[cursor.pos]`; advances past it. */
function unflatten(cursor) {
  const node = cursor.nodes[cursor.pos];
  if (node === undefined) {
    throw new RangeError('nested state value is truncated');
  }
  cursor.pos += 1;
  switch (node.tag) {
    case 'none':
      return null;
    case 'list': {
      const items = [];
      for (let i = 0; i < node.val; i += 1) {
        items.push(unflatten(cursor));
      }
      return items;
    }
    case 'map': {
      const map = new Map();
      for (let i = 0; i < node.val; i += 1) {
        const k = unflatten(cursor);
        map.set(k, unflatten(cursor));
      }
      return map;
    }
    case 'record': {
      const record = {};
      for (const name of node.val) {
        // defineProperty: a field named `__proto__` stays a field.
        Object.defineProperty(record, name, {
          value: unflatten(cursor),
          writable: true,
          enumerable: true,
          configurable: true,
        });
      }
      return record;
    }
    default:
      return fromScalar(node);
  }
}

/**
 * A string naming a value converted by `toValue`, equal for equal values:
 * map state keys (Uint8Array, number, bigint, or arrays, Maps and objects
 * of them) are compared by value, not identity.
 */
function valueId(w) {
  switch (w.tag) {
    case 'bytes':
      return `bytes:${latin1(w.val)}`;
    case 'nested':
      return `nested:${JSON.stringify(w.val.map(nodeId))}`;
    default:
      return `${numberTag(w)}:${w.val}`;
  }
}

function nodeId(n) {
  switch (n.tag) {
    case 'bytes':
      return ['bytes', latin1(n.val)];
    case 'text':
    case 'record':
      return [n.tag, n.val];
    case 'none':
      return ['none'];
    default:
      return [numberTag(n), String(n.val)];
  }
}

/** The tag of a scalar, with a whole `float(x)` the same key as the integer it reads back as. */
function numberTag(w) {
  return w.tag === 'float' && Number.isSafeInteger(w.val) ? 'int' : w.tag;
}

/** A string with one char per byte: a cache key for binary keys. */
function latin1(bytes) {
  if (bytes.length <= 0x2000) {
    return String.fromCharCode.apply(null, bytes);
  }
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x2000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x2000));
  }
  return s;
}

/**
 * What every handle shares in one hook call: the key of the record being
 * processed or of the timer firing (and its cache id), and the watermark
 * once read (null: not read in this call).
 */
const current = {
  key: null,
  id: null,
  watermark: null,
};

/** Every keyed state handle by name, flushed together. */
const states = new Map();

function currentKey(name) {
  if (current.key === null) {
    throw new Error(
      `state \`${name}\` is keyed: use it while processing a record that has a key`,
    );
  }
  if (current.id === null) {
    current.id = latin1(current.key);
  }
  return current.id;
}

/**
 * Calls a WIT `declare` import; a refusal (thrown with the host's message
 * as `payload`) becomes an Error naming the state.
 */
function declareState(name, declare, mode, type) {
  if (type !== undefined && typeof type !== 'string') {
    throw new TypeError(`state \`${name}\`: \`type\` is a type descriptor string such as 'record{count: int}'`);
  }
  try {
    declare(name, mode, type);
  } catch (e) {
    throw new Error(`declaring state \`${name}\`: ${errorMessage(e)}`);
  }
}

/**
 * Checks the `defaults` option: a plain object whose fields fill the fields
 * a stored object lacks (schema evolution: a field added in a later version
 * of the operator reads as its default from state an earlier one wrote).
 */
function checkDefaults(name, defaults) {
  if (defaults !== undefined && !isPlainObject(defaults)) {
    throw new TypeError(`state \`${name}\`: \`defaults\` is a plain object of field defaults`);
  }
  return defaults;
}

/**
 * `v` as read from state, with `defaults`' fields filled in where a stored
 * plain object lacks them (fields the defaults do not name are kept).
 */
function withDefaults(v, defaults) {
  if (defaults === undefined || !isPlainObject(v)) {
    return v;
  }
  const out = copyDefault(defaults);
  for (const [k, x] of Object.entries(v)) {
    out[k] = x;
  }
  return out;
}

/** A deep copy of arrays and plain objects in a default, so no read shares them. */
function copyDefault(v) {
  if (Array.isArray(v)) {
    return v.map(copyDefault);
  }
  if (isPlainObject(v)) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, copyDefault(x)]));
  }
  return v;
}

/**
 * A keyed state handle: a cache of one slot per key (`{ key, value, dirty }`)
 * and the list of dirty slots, so a flush walks only what changed.
 *
 * Options: `type`, a type descriptor (docs/wit.md, "Type descriptors") of a
 * value (for a value state), list item or map value, declared to the host;
 * `keyType`, for a map state, the descriptor of its map keys; `defaults`, a
 * plain object whose fields fill those a stored object value lacks.
 */
class KeyedState {
  constructor(name, kind, options = {}) {
    const existing = states.get(name);
    if (existing !== undefined && existing.kind !== kind) {
      throw new Error(
        `state \`${name}\` is already a ${existing.kind} state, not a ${kind} state`,
      );
    }
    const { type, keyType, defaults } = options;
    this._defaults = checkDefaults(name, defaults);
    if (keyType !== undefined && (kind !== 'map' || typeof keyType !== 'string')) {
      throw new TypeError(`state \`${name}\`: \`keyType\` is a type descriptor string, for a map state`);
    }
    let typeName = type;
    if (kind === 'list' && type !== undefined) {
      typeName = `list<${type}>`;
    } else if (kind === 'map' && (type !== undefined || keyType !== undefined)) {
      typeName = `map<${keyType ?? 'any'}, ${type ?? 'any'}>`;
    }
    declareState(name, keyedState.declare, kind, typeName);
    this.name = name;
    this.kind = kind;
    /** The packed `state` op naming this state. */
    this._stateOp = stateOp(name);
    /** Slots by key id. */
    this._cache = new Map();
    /** Slots changed since the last flush. */
    this._dirty = [];
    states.set(name, this);
  }

  /** The current key's slot, read from the host (`_read`) on a miss. */
  _slot() {
    const id = currentKey(this.name);
    let slot = this._cache.get(id);
    if (slot === undefined) {
      slot = { key: null, value: this._read(current.key), dirty: false, loaded: true };
      this._cache.set(id, slot);
    }
    return slot;
  }

  /** The current key's slot for a write that replaces its whole state: no read. */
  _slotToReplace() {
    const id = currentKey(this.name);
    let slot = this._cache.get(id);
    if (slot === undefined) {
      // Not read: `value` is not the host's, so `loaded` stays false until
      // the slot is written back.
      slot = { key: null, value: null, dirty: false, loaded: false };
      this._cache.set(id, slot);
    }
    return slot;
  }

  /** Marks `slot` (the current key's) dirty. */
  _touch(slot) {
    if (!slot.dirty) {
      slot.dirty = true;
      // A copy: the record's key is a view into the input batch.
      slot.key ??= current.key.slice();
      this._dirty.push(slot);
    }
  }

  /**
   * Packs the writes of every dirty slot (`_write`, with `pkBegin` and
   * `packValue`) and marks them clean.
   */
  _pack() {
    const dirty = this._dirty;
    for (let i = 0; i < dirty.length; i += 1) {
      this._write(dirty[i]);
      dirty[i].dirty = false;
      dirty[i].loaded = true;
    }
    this._dirty = [];
  }
}

/**
 * One value per key. `new ValueState('stats', { defaults: { count: 0, avg: 0 } })`
 * reads a stored object with the defaults filled in for fields it lacks.
 */
export class ValueState extends KeyedState {
  constructor(name, options) {
    super(name, 'value', options);
  }

  /** The current key's value, or `defaultValue`. */
  get(defaultValue = null) {
    const v = this._slot().value;
    return v === null ? defaultValue : v;
  }

  /**
   * Sets the current key's value; null or undefined clears it. Setting a
   * primitive (number, bigint, string, boolean) the key already holds
   * changes nothing, so the key is not written back.
   */
  set(value) {
    if (value === null || value === undefined) {
      this.clear();
      return;
    }
    checkValue(value); // now, not at the flush
    const slot = this._slotToReplace();
    // Objects may have been changed in place since `get`: always dirty.
    if (slot.value === value && typeof value !== 'object') {
      return;
    }
    slot.value = value;
    this._touch(slot);
  }

  /** Clears the current key's value. */
  clear() {
    const slot = this._slotToReplace();
    if (slot.value === null && slot.loaded) {
      return;
    }
    slot.value = null;
    this._touch(slot);
  }

  _read(key) {
    const w = keyedState.valueGet(this.name, key);
    return w === undefined ? null : withDefaults(fromValue(w), this._defaults);
  }

  /**
   * As {@link KeyedState#_pack}, with the commonest write (an int32, to a
   * state whose `state` op the buffer ends with) inlined: it runs once per
   * dirty key, and a call costs more in the interpreter than the write.
   */
  _pack() {
    const dirty = this._dirty;
    const stateOp = this._stateOp;
    for (let i = 0; i < dirty.length; i += 1) {
      const slot = dirty[i];
      const v = slot.value;
      const key = slot.key;
      const n = key.length;
      if (
        typeof v === 'number' &&
        (v | 0) === v &&
        pkState === stateOp &&
        pkWrites < WRITE_CHUNK &&
        pkPos < WRITE_BYTES &&
        pkPos + 14 + n <= pk.length
      ) {
        // pkBegin(stateOp, OP_VALUE_SET, key), then packValue(v, 0).
        const buf = pk;
        const view = pkView;
        const p = pkPos;
        buf[p] = OP_VALUE_SET;
        view.setUint32(p + 1, n, true);
        buf.set(key, p + 5);
        const q = p + 5 + n;
        buf[q] = TAG_INT;
        view.setInt32(q + 1, v, true);
        view.setInt32(q + 5, v < 0 ? -1 : 0, true);
        pkPos = q + 9;
        pkWrites += 1;
      } else if (v === null) {
        pkBegin(stateOp, OP_VALUE_CLEAR, key);
      } else {
        pkBegin(stateOp, OP_VALUE_SET, key);
        packValue(v, 0);
      }
      slot.dirty = false;
      slot.loaded = true;
    }
    this._dirty = [];
  }
}

/** A list per key; options as for {@link ValueState}, applied to each item. */
export class ListState extends KeyedState {
  constructor(name, options) {
    super(name, 'list', options);
  }

  /** A copy of the current key's list. */
  get() {
    return [...this._slot().value];
  }

  /** Appends to the current key's list. */
  add(value) {
    checkValue(value);
    const slot = this._slot();
    slot.value.push(value);
    this._touch(slot);
  }

  /** Replaces the current key's list. */
  set(values) {
    const list = [...values];
    list.forEach(checkValue);
    const slot = this._slotToReplace();
    slot.value = list;
    this._touch(slot);
  }

  /** Empties the current key's list. */
  clear() {
    this.set([]);
  }

  _read(key) {
    return keyedState.listGet(this.name, key).map((w) => withDefaults(fromValue(w), this._defaults));
  }

  _write(slot) {
    const list = slot.value;
    const n = list.length;
    if (n === 0) {
      pkBegin(this._stateOp, OP_LIST_CLEAR, slot.key);
      return;
    }
    pkBegin(this._stateOp, OP_LIST_SET, slot.key);
    pkU32(n);
    for (let i = 0; i < n; i += 1) {
      packValue(list[i], 0);
    }
  }
}

/**
 * A map per key. Map keys are compared by value (two equal Uint8Arrays are
 * one key; `5` and `5n` are one key). Changes are written back entry by
 * entry. Options as for {@link ValueState} (`type` for each value), and
 * `keyType`, the descriptor of the map keys: `{ keyType: 'int' }` declares
 * `map<int, any>`.
 */
export class MapState extends KeyedState {
  constructor(name, options) {
    super(name, 'map', options);
  }

  /** The entry for `mapKey` under the current key, or `defaultValue`. */
  get(mapKey, defaultValue = null) {
    const entry = this._slot().value.entries.get(valueId(toValue(mapKey)));
    return entry === undefined ? defaultValue : entry[1];
  }

  /** Whether the current key's map has an entry for `mapKey`. */
  has(mapKey) {
    return this._slot().value.entries.has(valueId(toValue(mapKey)));
  }

  /** Sets an entry under the current key. */
  put(mapKey, value) {
    const w = toValue(mapKey);
    checkValue(value);
    const slot = this._slot();
    const k = valueId(w);
    // Kept as it reads back from the host: `5n` as `5`.
    const key = fromValue(w);
    slot.value.entries.set(k, [key, value]);
    slot.value.changed.set(k, key);
    this._touch(slot);
  }

  /** Removes an entry under the current key. */
  remove(mapKey) {
    const w = toValue(mapKey);
    const slot = this._slot();
    const k = valueId(w);
    slot.value.entries.delete(k);
    slot.value.changed.set(k, fromValue(w));
    this._touch(slot);
  }

  /** The current key's entries as an array of `[key, value]`. */
  entries() {
    return [...this._slot().value.entries.values()].map(([k, v]) => [k, v]);
  }

  /** Removes every entry under the current key. */
  clear() {
    const slot = this._slotToReplace();
    slot.value = { entries: new Map(), changed: new Map(), cleared: true };
    this._touch(slot);
  }

  /** The map: `entries` (`[key, value]` by key id), `changed` (keys by id), `cleared`. */
  _read(key) {
    const entries = new Map();
    for (const [k, v] of keyedState.mapEntries(this.name, key)) {
      // Keyed by the JavaScript value's id, so `get(5)` finds a float 5.0.
      const mapKey = fromValue(k);
      entries.set(valueId(toValue(mapKey)), [mapKey, withDefaults(fromValue(v), this._defaults)]);
    }
    return { entries, changed: new Map(), cleared: false };
  }

  _write(slot) {
    const { entries, changed, cleared } = slot.value;
    const op = this._stateOp;
    if (cleared) {
      pkBegin(op, OP_MAP_CLEAR, slot.key);
    }
    for (const [k, mapKey] of changed) {
      const entry = entries.get(k);
      if (entry === undefined) {
        pkBegin(op, OP_MAP_REMOVE, slot.key);
        packValue(mapKey, 0);
      } else {
        pkBegin(op, OP_MAP_PUT, slot.key);
        packValue(entry[0], 0);
        packValue(entry[1], 0);
      }
    }
    slot.value.changed = new Map();
    slot.value.cleared = false;
  }
}

/**
 * Non-keyed list state of this subtask. Options: `redistribution`, how the
 * list is shared out when the job is restored at another parallelism:
 * `'split'` (the default: items dealt round-robin) or `'union'` (every
 * subtask gets the whole list); `type` and `defaults` as for
 * {@link ValueState}, applied to each item.
 */
export class OperatorListState {
  constructor(name, options = {}) {
    const { redistribution = 'split', type, defaults } = options;
    if (redistribution !== 'split' && redistribution !== 'union') {
      throw new TypeError(`state \`${name}\`: redistribution is 'split' or 'union', not ${String(redistribution)}`);
    }
    this._defaults = checkDefaults(name, defaults);
    declareState(name, operatorState.declare, redistribution, type === undefined ? undefined : `list<${type}>`);
    this.name = name;
  }

  /** The list. */
  get() {
    return operatorState.get(this.name).map((w) => withDefaults(fromValue(w), this._defaults));
  }

  /** Replaces the list. */
  replace(values) {
    operatorState.replace(this.name, [...values].map(toValue));
  }
}

const LEVELS = new Set(['trace', 'debug', 'info', 'warn', 'error']);

/** Logs `message` at `level` ('trace', 'debug', 'info', 'warn', 'error'). */
export function log(level, message) {
  if (!LEVELS.has(level)) {
    throw new TypeError(`log level is one of ${[...LEVELS].join(', ')}, not ${String(level)}`);
  }
  hostLog(level, String(message));
}

// Event time: timers, watermarks and metrics (docs/sdk.md, "Event time").

/** The domain of a timer that fires when the watermark reaches its timestamp. */
export const EVENT_TIME = 'event-time';
/** The domain of a timer that fires when the host's clock reaches its timestamp. */
export const PROCESSING_TIME = 'processing-time';

/**
 * A timer that fired: `key` (Uint8Array), `timestamp` (bigint milliseconds)
 * and `domain` ({@link EVENT_TIME} or {@link PROCESSING_TIME}).
 */
export class Timer {
  constructor(key, timestamp, domain) {
    this.key = key;
    this.timestamp = timestamp;
    this.domain = domain;
    Object.freeze(this);
  }
}

/**
 * Whether the bindings convert an `s64` passed directly (a core `i64`
 * parameter or result, not through memory) as signed: null until a value
 * shows it. ComponentizeJS 0.23 converts them as if they were `u64`
 * (bytecodealliance/ComponentizeJS#343): `-5` arrives as `2n ** 64n - 5n`,
 * which {@link liftS64} undoes, and passing a negative one to the host traps
 * the guest, whatever form it is given in. Keyed state is not affected: its
 * `int`s cross through memory.
 */
let signedS64 = null;

/** An `s64` the bindings passed directly, as the signed value its bits are. */
function liftS64(v) {
  if (v > I64_MAX) {
    signedS64 = false;
    return BigInt.asIntN(64, v);
  }
  if (v < 0n) {
    signedS64 = true;
  }
  return v;
}

/**
 * Checks that the bindings can pass the bigint `v` (in the s64 range) as a
 * direct `s64`: a negative one only if they are known to be signed, so the
 * call fails with a message instead of trapping the guest.
 */
function checkLowerS64(v, what) {
  if (v >= 0n) {
    return v;
  }
  if (signedS64 === null) {
    // The watermark is -2^63 before the first one: it tells which bindings
    // these are. If it does not, they are the pinned toolchain's.
    liftS64(timers.currentWatermark());
  }
  if (signedS64 !== true) {
    throw new RangeError(
      `${what} ${v} is before 1970: componentize-js 0.23 cannot pass a negative s64 to the host ` +
        '(bytecodealliance/ComponentizeJS#343), so JavaScript operators have no timers at negative timestamps',
    );
  }
  return v;
}

/** `ts` (a bigint or a safe-integer number) as a bigint in the s64 range. */
function toTimestamp(ts, what) {
  if (typeof ts === 'number' && Number.isSafeInteger(ts)) {
    return BigInt(ts);
  }
  if (typeof ts === 'bigint' && ts >= I64_MIN && ts <= I64_MAX) {
    return ts;
  }
  throw new RangeError(`${what} is a signed 64-bit integer of milliseconds (a bigint or a safe integer), not ${describeNumber(ts)}`);
}

function describeNumber(v) {
  return typeof v === 'bigint' ? `${v}n` : typeof v === 'number' ? String(v) : describe(v);
}

function timerCall(call, timestamp, domain) {
  if (current.key === null) {
    throw new Error('timers are keyed: use them while processing a record that has a key, or in onTimer');
  }
  const ts = checkLowerS64(toTimestamp(timestamp, 'a timer timestamp'), `a timer (${domain}) at`);
  try {
    call(current.key, ts, domain);
  } catch (e) {
    throw new Error(`timer at ${ts} (${domain}): ${errorMessage(e)}`);
  }
}

/**
 * Registers a timer for the current key (of the record being processed or
 * the timer firing) that fires ({@link Operator#onTimer}) once the
 * watermark reaches `timestamp`. Registering it again does nothing.
 */
export function registerEventTimeTimer(timestamp) {
  timerCall(timers.register, timestamp, EVENT_TIME);
}

/** Deletes the current key's event-time timer at `timestamp`, if any. */
export function deleteEventTimeTimer(timestamp) {
  timerCall(timers.delete, timestamp, EVENT_TIME);
}

/**
 * Registers a timer for the current key that fires once the host's clock
 * ({@link currentProcessingTime}) reaches `timestamp`.
 */
export function registerProcessingTimeTimer(timestamp) {
  timerCall(timers.register, timestamp, PROCESSING_TIME);
}

/** Deletes the current key's processing-time timer at `timestamp`, if any. */
export function deleteProcessingTimeTimer(timestamp) {
  timerCall(timers.delete, timestamp, PROCESSING_TIME);
}

/**
 * The operator's event-time watermark in milliseconds (a bigint): `-(2n **
 * 63n)` before the first one. It only moves between hook calls, so it is
 * read from the host once per call.
 */
export function currentWatermark() {
  current.watermark ??= liftS64(timers.currentWatermark());
  return current.watermark;
}

/**
 * The host's clock, milliseconds since the Unix epoch (a bigint): the clock
 * processing-time timers run on; guests have no other.
 */
export function currentProcessingTime() {
  return liftS64(timers.currentProcessingTime());
}

const COUNTER_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
/** Distinct counters an operator may have (the host's limit). */
export const MAX_COUNTERS = 32;
const counters = new Set();

/**
 * Adds `delta` (a non-negative safe integer or bigint, default 1) to the
 * operator's metrics counter `name` (1 to 64 of `A-Z a-z 0-9 _ . -`; at most
 * 32 counters), shown in the job's metrics. Counters restart from zero with
 * the job.
 */
export function counterAdd(name, delta = 1) {
  if (!counters.has(name)) {
    if (typeof name !== 'string' || !COUNTER_NAME.test(name)) {
      throw new TypeError(`a counter name is 1 to 64 of A-Z a-z 0-9 _ . -, not ${JSON.stringify(name) ?? String(name)}`);
    }
    if (counters.size >= MAX_COUNTERS) {
      throw new RangeError(`counter ${name}: an operator has at most ${MAX_COUNTERS} counters`);
    }
    counters.add(name);
  }
  const ok =
    (typeof delta === 'number' && Number.isSafeInteger(delta) && delta >= 0) ||
    (typeof delta === 'bigint' && delta >= 0n && delta <= U64_MAX);
  if (!ok) {
    throw new RangeError(`counter ${name}: delta is an unsigned 64-bit integer, not ${describeNumber(delta)}`);
  }
  hostCounterAdd(name, BigInt(delta));
}

/**
 * Base class of a JavaScript operator: override `process`, and optionally
 * `open`, `onWatermark`, `onTimer`, `snapshot`, `onCheckpointComplete` and
 * `close`.
 */
export class Operator {
  /** Called once per subtask with its {@link Context}. */
  open(ctx) {}

  /** Called for every record; emit with `out.emit(key, value)`. */
  process(record, out) {
    throw new Error(`${this.constructor.name} does not implement process(record, out)`);
  }

  /**
   * Called when the event-time watermark advances to `watermark` (a bigint,
   * ms), after every event-time timer it made due has fired; what it emits
   * precedes the watermark downstream. At end of input the watermark is
   * `2n ** 63n - 1n`. Emits carry no timestamp by default.
   */
  onWatermark(watermark, out) {}

  /**
   * Called when a {@link Timer} fires; keyed state and timers are scoped to
   * `timer.key`. Emits carry the timer's timestamp by default for an
   * event-time timer, none for a processing-time one.
   */
  onTimer(timer, out) {}

  /** Called before a checkpoint (`checkpointId` is a bigint); state is flushed after it returns. */
  snapshot(checkpointId, out) {}

  /** Called once a checkpoint is durable. */
  onCheckpointComplete(checkpointId) {}

  /** Called at end of input; state is flushed after it returns. */
  close(out) {}

  /** Runs after `open`: what a base class sets up from its fields. */
  _setup() {}
}

/**
 * Dirty slots above which the SDK flushes after a `process` call, as the
 * Rust SDK does when its cache overflows. A flush costs ~18 k fuel per
 * changed key of a word count in SpiderMonkey's interpreter (packing it;
 * the buffer crosses in one copy), so this bounds what `snapshot` and
 * `close` need to under a tenth of the default budget per call
 * (`limits.fuel_per_call`, 2e9).
 * Writing back early is harmless: the host discards uncheckpointed state
 * on failure anyway.
 */
export const DIRTY_LIMIT = 8192;

let dirtyLimit = DIRTY_LIMIT;

/**
 * Sets how many keys may be dirty after a `process` call before the SDK
 * flushes them (`Infinity`: only at `snapshot` and `close`, as the Python
 * helper does; raise `limits.fuel_per_call` to match).
 */
export function setDirtyLimit(keys) {
  if (!(Number.isSafeInteger(keys) || keys === Infinity) || keys < 0) {
    throw new RangeError(`dirty limit is a whole number of keys or Infinity, not ${String(keys)}`);
  }
  dirtyLimit = keys;
}

function dirtySlots() {
  let n = 0;
  for (const state of states.values()) {
    n += state._dirty.length;
  }
  return n;
}

/**
 * Hands every dirty entry to the host in as few calls as possible (one
 * `keyed-state.write-packed` buffer per {@link WRITE_CHUNK} writes or
 * {@link WRITE_BYTES} bytes), then bounds memory: entries that were only
 * read are clean and never written back;
 * after a flush every entry is clean, so an oversized cache can be dropped
 * and reloaded from the host on the next miss.
 */
function flush() {
  // Empty, also after a flush that failed half-way.
  pkPos = 0;
  pkWrites = 0;
  pkState = null;
  for (const state of states.values()) {
    if (state._dirty.length > 0) {
      state._pack();
    }
  }
  pkSend();
  if (pk.length > KEEP_BYTES) {
    pk = new Uint8Array(0);
    pkView = new DataView(pk.buffer);
  }
  for (const state of states.values()) {
    if (state._cache.size > cacheCapacity) {
      state._cache.clear();
    }
  }
}

/**
 * The hook error string for a thrown value: the error's name and message
 * and where it was thrown, e.g. `Error: cannot count 'x' (at app.js:12)`.
 * An error a host call returned (the bindings throw it with its message as
 * `payload`) passes through verbatim, as the Rust and Python SDKs do.
 */
export function errorMessage(e) {
  if (e !== null && typeof e === 'object' && Object.hasOwn(e, 'payload') && typeof e.payload === 'string') {
    return e.payload;
  }
  if (isError(e)) {
    const where = throwSite(e.stack);
    return `${e.name}: ${e.message}${where === null ? '' : ` (at ${where})`}`;
  }
  return typeof e === 'string' ? e : `uncaught ${describe(e)}: ${String(e)}`;
}

/**
 * `file:line` of the innermost frame of a stack trace: SpiderMonkey's
 * (`fn@file:line:col`, as in the component) or V8's (`    at fn (file:line:col)`,
 * as under Node in the SDK's tests).
 */
function throwSite(stack) {
  if (typeof stack !== 'string') {
    return null;
  }
  for (const line of stack.split('\n')) {
    const m = /^\S*@(.+):(\d+):\d+$/.exec(line) ?? /^\s+at (?:.*\()?(.+?):(\d+):\d+\)?$/.exec(line);
    if (m !== null) {
      return `${m[1]}:${m[2]}`;
    }
  }
  return null;
}

/**
 * Runs a hook. A thrown error becomes the hook's `result` error (the
 * bindings would otherwise turn an uncaught `Error` into a trap), so the
 * job fails with the error's name, message and location.
 */
function guard(fn) {
  try {
    fn();
    return undefined;
  } catch (e) {
    let message;
    try {
      message = errorMessage(e);
    } catch {
      message = 'an operator hook threw a value that cannot be shown';
    }
    return { tag: 'err', val: message };
  }
}

/** Rejects an `async` hook: its errors and writes would happen after the call. */
function sync(result, hook) {
  if (result !== null && typeof result === 'object' && typeof result.then === 'function') {
    throw new TypeError(`${hook} returned a promise: operator hooks are synchronous`);
  }
}

/**
 * Runs one hook call that emits and may change many keys: state and timers
 * are scoped to no key but the one `body` sets, the watermark is read
 * afresh; once `body` succeeded, what it emitted is sent and, if more than
 * the dirty limit of keys are dirty, they are flushed.
 */
function runHook(out, body) {
  current.watermark = null;
  const err = guard(() => {
    try {
      body();
    } finally {
      current.key = null;
      current.id = null;
      out._timestamp = null;
    }
  });
  if (err !== undefined) {
    return err;
  }
  return guard(() => {
    out._send();
    if (dirtySlots() > dirtyLimit) {
      flush();
    }
  });
}

/**
 * Returns the object componentize-js exports as the `operator` interface;
 * in `app.js` write `export const operator = exportOperator(MyOperator);`.
 */
export function exportOperator(OperatorClass) {
  let op = null;
  return {
    open(context) {
      current.watermark = null;
      return guard(() => {
        op = new OperatorClass();
        sync(op.open(new Context(context)), 'open');
        op._setup();
      });
    },

    process(batch) {
      const out = new Emitter();
      return runHook(out, () => {
        const records = decodeBatch(batch);
        for (let i = 0; i < records.length; i += 1) {
          const record = records[i];
          current.key = record.key;
          current.id = null;
          out._timestamp = record.timestamp;
          const r = op.process(record, out);
          if (r !== undefined) {
            sync(r, 'process');
          }
        }
      });
    },

    onWatermark(rawWatermark) {
      const out = new Emitter();
      return runHook(out, () => {
        const watermark = liftS64(rawWatermark);
        current.watermark = watermark;
        sync(op.onWatermark(watermark, out), 'onWatermark');
      });
    },

    onTimer(key, rawTimestamp, domain) {
      const out = new Emitter();
      return runHook(out, () => {
        const timestamp = liftS64(rawTimestamp);
        const timer = new Timer(ownBytes(key), timestamp, domain);
        current.key = timer.key;
        current.id = null;
        out._timestamp = domain === EVENT_TIME ? timestamp : null;
        sync(op.onTimer(timer, out), 'onTimer');
      });
    },

    snapshot(checkpointId) {
      current.watermark = null;
      const out = new Emitter();
      return guard(() => {
        sync(op.snapshot(checkpointId, out), 'snapshot');
        flush();
        out._send();
      });
    },

    onCheckpointComplete(checkpointId) {
      return guard(() => sync(op.onCheckpointComplete(checkpointId), 'onCheckpointComplete'));
    },

    close() {
      current.watermark = null;
      const out = new Emitter();
      return guard(() => {
        sync(op.close(out), 'close');
        flush();
        out._send();
      });
    },
  };
}

// Windows (docs/sdk.md, "Windows"): the assigners, and an operator built
// from an assigner, an aggregate and a lateness policy. The state layout is
// the same in every SDK, so a window operator restores from a savepoint
// another language wrote: keyed map state `windows`, window start → record
// { end, acc } (starts and ends WIT `int`s), and event-time timers at
// `end - 1` (fire) and `end - 1 + allowedLateness` (clean up).

/** The metrics counter of late records a window operator dropped. */
export const LATE_RECORDS_DROPPED = 'late_records_dropped';

/** A half-open event-time window `[start, end)`: bigint milliseconds. */
export class Window {
  constructor(start, end) {
    this.start = start;
    this.end = end;
    Object.freeze(this);
  }

  /** The window's last timestamp, `end - 1n`: it fires when the watermark reaches it, and its result carries it. */
  get maxTimestamp() {
    return this.end - 1n;
  }
}

function makeWindow(start, end) {
  if (end > I64_MAX) {
    throw new RangeError(`the window starting at ${start} ends past the largest timestamp`);
  }
  return new Window(start, end);
}

/** `a mod m` for bigints, `m > 0`: a floor modulo, so negative timestamps work. */
function floorMod(a, m) {
  const r = a % m;
  return r < 0n ? r + m : r;
}

function positive(what, v) {
  const ms = toTimestamp(v, what);
  if (ms <= 0n) {
    throw new RangeError(`${what} is positive, not ${ms}`);
  }
  return ms;
}

class Assigner {}

class Tumbling extends Assigner {
  constructor(size, offset) {
    super();
    this.size = positive("a tumbling window's size", size);
    this.offset = toTimestamp(offset, 'a window offset');
    this.merging = false;
    Object.freeze(this);
  }

  /** The windows of a record at `ts` (bigint). */
  assign(ts) {
    const start = ts - floorMod(ts - this.offset, this.size);
    return [makeWindow(start, start + this.size)];
  }
}

class Sliding extends Assigner {
  constructor(size, slide, offset) {
    super();
    this.size = positive("a sliding window's size", size);
    this.slide = positive("a sliding window's slide", slide);
    this.offset = toTimestamp(offset, 'a window offset');
    this.merging = false;
    Object.freeze(this);
  }

  assign(ts) {
    const windows = [];
    for (let start = ts - floorMod(ts - this.offset, this.slide); start > ts - this.size; start -= this.slide) {
      windows.push(makeWindow(start, start + this.size));
    }
    return windows;
  }
}

class Session extends Assigner {
  constructor(gap) {
    super();
    this.gap = positive('a session gap', gap);
    this.merging = true;
    Object.freeze(this);
  }

  assign(ts) {
    return [makeWindow(ts, ts + this.gap)];
  }
}

/** Windows of `size` ms, one per record: `start = ts - (ts - offset) mod size`. */
export function tumbling(size, offset = 0) {
  return new Tumbling(size, offset);
}

/** Windows of `size` ms starting every `slide` ms: a record is in every one that contains its timestamp. */
export function sliding(size, slide, offset = 0) {
  return new Sliding(size, slide, offset);
}

/** Sessions: a record's window is `[ts, ts + gap)`, merged with every window of its key it intersects or touches. */
export function session(gap) {
  return new Session(gap);
}

const byStart = (a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0);

/**
 * A keyed event-time window operator. Give it
 *
 * - `assigner`: {@link tumbling}, {@link sliding} or {@link session};
 * - `aggregate`: an object with `create()` → a new accumulator,
 *   `add(acc, record)` → the accumulator with `record` added, `merge(a, b)`
 *   → one accumulator of two (sessions only) and `result(key, window, acc)`
 *   → the value to emit (a string or Uint8Array; null emits nothing), and
 *   optionally `resultKey(key, window)` → the key to emit the result under
 *   (a string or Uint8Array; null/undefined, or no such method: the
 *   window's key), to re-partition results downstream. By default the
 *   operator itself: define those methods on the subclass;
 * - `allowedLateness` (ms, default 0): how long after it fired a window is
 *   kept, firing again for every late record it still accepts;
 * - `onLate(record)`, optional: the value to emit (with the record's key and
 *   timestamp) for a record too late for every window; without it, or when
 *   it returns null, the record is dropped and counted in the
 *   `late_records_dropped` counter,
 *
 * as constructor options (`super({ assigner, aggregate, allowedLateness,
 * onLate })`), as fields, or by setting them in `open` (where the config is
 * known). A window fires once the watermark reaches its last timestamp: it
 * emits `result` keyed by the key (or by `resultKey`), with timestamp
 * `end - 1`. Windows are bigints (`window.start`, `window.end`);
 * accumulators are state values. The operator owns the key's event-time
 * timers and the map state `windows`.
 */
export class WindowOperator extends Operator {
  constructor(options = {}) {
    super();
    const { assigner = null, aggregate = null, allowedLateness = 0, onLate } = options;
    this.assigner = assigner;
    this.aggregate = aggregate;
    this.allowedLateness = allowedLateness;
    if (onLate !== undefined) {
      this.onLate = onLate;
    }
  }

  _setup() {
    if (!(this.assigner instanceof Assigner)) {
      throw new TypeError(
        'a WindowOperator needs an assigner: tumbling(size), sliding(size, slide) or session(gap), ' +
          `not ${describe(this.assigner)}`,
      );
    }
    const lateness = toTimestamp(this.allowedLateness, 'allowedLateness');
    if (lateness < 0n) {
      throw new RangeError(`allowedLateness is not negative, not ${lateness}`);
    }
    this._lateness = lateness;
    const agg = this.aggregate ?? this;
    const needed = this.assigner.merging ? ['create', 'add', 'merge', 'result'] : ['create', 'add', 'result'];
    const missing = needed.filter((m) => typeof agg[m] !== 'function');
    if (missing.length > 0) {
      throw new TypeError(`the window aggregate ${describe(agg)} lacks ${missing.join(', ')}`);
    }
    if (this.onLate !== undefined && this.onLate !== null && typeof this.onLate !== 'function') {
      throw new TypeError(`onLate is a function of the late record, not ${describe(this.onLate)}`);
    }
    if (agg.resultKey !== undefined && agg.resultKey !== null && typeof agg.resultKey !== 'function') {
      throw new TypeError(`resultKey is a method (key, window) → key or null, not ${describe(agg.resultKey)}`);
    }
    this._agg = agg;
    this._windows = new MapState('windows', { type: 'record{end: int, acc: any}', keyType: 'int' });
  }

  /** When a window ending at `end` is dropped: `end - 1 + allowedLateness`, saturating at the largest timestamp. */
  _cleanupTime(end) {
    const t = end - 1n + this._lateness;
    return t > I64_MAX ? I64_MAX : t;
  }

  /** The current key's windows as `{ start, end, acc }`, starts and ends bigints, in start order. */
  _entries() {
    return this._windows
      .entries()
      .map(([start, e]) => ({ start: BigInt(start), end: BigInt(e.end), acc: e.acc }))
      .sort(byStart);
  }

  /**
   * Registers a new window's timers: the firing one unless the watermark
   * passed it (the window then fires at once), and the clean-up one when
   * there is lateness.
   */
  _register(window, watermark) {
    if (window.end - 1n > watermark) {
      registerEventTimeTimer(window.end - 1n);
    }
    if (this._lateness > 0n) {
      registerEventTimeTimer(this._cleanupTime(window.end));
    }
  }

  _fire(key, window, acc, out) {
    const value = this._agg.result(key, window, acc);
    if (value !== null && value !== undefined) {
      const resultKey = typeof this._agg.resultKey === 'function' ? this._agg.resultKey(key, window) : null;
      out.emit(resultKey ?? key, value, window.end - 1n);
    }
  }

  _late(record, out) {
    const value = typeof this.onLate === 'function' ? this.onLate(record) : null;
    if (value === null || value === undefined) {
      counterAdd(LATE_RECORDS_DROPPED);
    } else {
      out.emit(record.key, value, record.timestamp);
    }
  }

  process(record, out) {
    const ts = record.timestamp;
    if (ts === null) {
      throw new Error('a window operator needs event time: a record without a timestamp');
    }
    const watermark = currentWatermark();
    if (this.assigner.merging) {
      this._addToSession(record, ts, watermark, out);
      return;
    }
    let added = false;
    for (const window of this.assigner.assign(ts)) {
      if (this._cleanupTime(window.end) > watermark) {
        this._add(window, record, watermark, out);
        added = true;
      }
    }
    if (!added) {
      this._late(record, out);
    }
  }

  _add(window, record, watermark, out) {
    const entry = this._windows.get(window.start);
    let acc;
    if (entry === null) {
      acc = this._agg.create();
      this._register(window, watermark);
    } else {
      acc = entry.acc;
    }
    acc = this._agg.add(acc, record);
    this._windows.put(window.start, { end: window.end, acc });
    if (window.end - 1n <= watermark) {
      // Fired already, still kept: fires again with the record.
      this._fire(record.key, window, acc, out);
    }
  }

  _addToSession(record, ts, watermark, out) {
    const [window] = this.assigner.assign(ts);
    if (this._cleanupTime(window.end) <= watermark) {
      this._late(record, out);
      return;
    }
    const merged = this._entries().filter((e) => e.start <= window.end && e.end >= window.start);
    if (merged.length === 0) {
      this._add(window, record, watermark, out);
      return;
    }
    // Into the merged windows' accumulators, in start order (the older
    // window is `a`), then the record.
    let acc = merged[0].acc;
    for (let i = 1; i < merged.length; i += 1) {
      acc = this._agg.merge(acc, merged[i].acc);
    }
    acc = this._agg.add(acc, record);
    const start = window.start < merged[0].start ? window.start : merged[0].start;
    let end = window.end;
    for (const e of merged) {
      end = e.end > end ? e.end : end;
    }
    for (const e of merged) {
      if (e.start !== start) {
        this._windows.remove(e.start);
      }
    }
    this._windows.put(start, { end, acc });
    const next = new Window(start, end);
    if (merged.length > 1 || merged[0].start !== start || merged[0].end !== end) {
      // The merged windows' timers go, but a timer is per key and
      // timestamp: keep those another window of the key still needs.
      const kept = new Set();
      for (const e of this._entries()) {
        kept.add(e.end - 1n).add(this._cleanupTime(e.end));
      }
      const gone = new Set();
      for (const e of merged) {
        for (const t of [e.end - 1n, this._cleanupTime(e.end)]) {
          if (!kept.has(t) && !gone.has(t)) {
            gone.add(t);
            deleteEventTimeTimer(t);
          }
        }
      }
      this._register(next, watermark);
    }
    if (end - 1n <= watermark) {
      this._fire(record.key, next, acc, out);
    }
  }

  onTimer(timer, out) {
    if (timer.domain !== EVENT_TIME) {
      return;
    }
    const t = timer.timestamp;
    const entries = this._entries();
    for (const e of entries) {
      if (e.end - 1n === t) {
        this._fire(timer.key, new Window(e.start, e.end), e.acc, out);
        if (this._lateness === 0n) {
          this._windows.remove(e.start);
        }
      }
    }
    if (this._lateness > 0n) {
      for (const e of entries) {
        if (this._cleanupTime(e.end) === t) {
          this._windows.remove(e.start);
        }
      }
    }
  }
}
