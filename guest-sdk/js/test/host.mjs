// An in-memory stand-in for the Weir host, for testing weir.js under Node:
// `loader.mjs` resolves every `weir:operator/*` import to this module. It
// returns and accepts values the way the componentize-js bindings do
// (variants as `{ tag, val }`, s64/u64 as bigint, `option` as undefined,
// a `result` error thrown as an Error with its string as `payload`), and
// from another realm, as the bindings run in one apart from the guest's.

import vm from 'node:vm';

/** Constructors of another realm, like the bindings'. */
export const foreign = vm.runInNewContext('({ Uint8Array, Error })');

/** What the guest did and what the host holds, reset by `reset()`. */
export const host = {
  /** `${state}\0${key}` → { kind, value | entries (Map by JSON) | list }. */
  store: new Map(),
  /** Every `keyed-state.write` call's list of writes. */
  writeCalls: [],
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
};

export function reset() {
  host.store = new Map();
  host.writeCalls = [];
  host.emitted = [];
  host.operatorState = new Map();
  host.logs = [];
  host.reads = 0;
  host.refusedKey = null;
  host.declared = [];
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
  for (const { state, key, update } of writes) {
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
