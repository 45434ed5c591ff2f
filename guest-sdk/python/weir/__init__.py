"""Write Weir stream operators in Python.

Subclass :class:`Operator`, then export it from your component's ``app.py``
with ``Operator = weir.export(MyOperator)`` and build with
``componentize-py -d wit -w stream-operator componentize app``.

The semantics match the Rust SDK (``weir-sdk``): records arrive one at a
time from the host's packed batches; everything a hook emits leaves as one
packed batch; keyed state (:class:`ValueState`, :class:`MapState`,
:class:`ListState`) is scoped to the key of the record being processed and
kept in a write-back cache that is handed to the host when ``snapshot`` and
``close`` return. State values use the WIT ``value`` variant, so Python
``int``, ``float``, ``str``, ``bytes`` and ``bool`` read back as the same
values in Rust (``i64``, ``f64``, ``String``, ``Vec<u8>``, ``bool``).
"""

import dataclasses
import struct
import traceback
import typing

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import keyed_state, logging, operator_state, output, types

__all__ = [
    "Context", "Record", "Emitter", "Operator", "ValueState", "MapState",
    "ListState", "OperatorListState", "log", "export", "describe",
]

_HAS_KEY = 1
_HAS_TIMESTAMP = 2
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")


class Context:
    """Static facts about the subtask: uid, config, subtask index, parallelism,
    key groups, and the attempt number (restarts before this instance)."""

    def __init__(self, ctx):
        self.uid = ctx.uid
        self.config = ctx.config
        self.subtask_index = ctx.subtask_index
        self.parallelism = ctx.parallelism
        self.max_parallelism = ctx.max_parallelism
        self.attempt_number = ctx.attempt_number


class Record:
    """An input record: ``key`` (bytes or None), ``value`` (bytes), ``timestamp`` (int or None)."""

    __slots__ = ("key", "value", "timestamp")

    def __init__(self, key, value, timestamp):
        self.key = key
        self.value = value
        self.timestamp = timestamp

    def value_str(self):
        """The value decoded as UTF-8 (invalid bytes replaced)."""
        return self.value.decode("utf-8", "replace")


def _decode(batch):
    """Yields the records of a packed batch (layout version 1, docs/wit.md)."""
    pos, end = 0, len(batch)
    while pos < end:
        flags = batch[pos]
        pos += 1
        if flags & ~(_HAS_KEY | _HAS_TIMESTAMP):
            raise ValueError(f"packed batch has unknown record flags {flags:#04x}")
        timestamp = key = None
        if flags & _HAS_TIMESTAMP:
            (timestamp,) = _I64.unpack_from(batch, pos)
            pos += 8
        if flags & _HAS_KEY:
            (n,) = _U32.unpack_from(batch, pos)
            key = batch[pos + 4:pos + 4 + n]
            pos += 4 + n
        (n,) = _U32.unpack_from(batch, pos)
        value = batch[pos + 4:pos + 4 + n]
        pos += 4 + n
        if pos > end:
            raise ValueError("packed batch truncated")
        yield Record(key, value, timestamp)


class Emitter:
    """Collects emitted records; the SDK sends them as one batch per hook call."""

    def __init__(self):
        self._buf = bytearray()
        self._timestamp = None

    def emit(self, key, value, timestamp=...):
        """Emits ``key`` (bytes/str/None) → ``value`` (bytes/str).

        The timestamp defaults to the current input record's, as in Flink.
        """
        if timestamp is ...:
            timestamp = self._timestamp
        if isinstance(key, str):
            key = key.encode()
        if isinstance(value, str):
            value = value.encode()
        buf = self._buf
        buf.append((_HAS_KEY if key is not None else 0) | (_HAS_TIMESTAMP if timestamp is not None else 0))
        if timestamp is not None:
            buf += _I64.pack(timestamp)
        if key is not None:
            buf += _U32.pack(len(key))
            buf += key
        buf += _U32.pack(len(value))
        buf += value

    def _send(self):
        if self._buf:
            output.emit(bytes(self._buf))
            self._buf = bytearray()


_I64_MIN, _I64_MAX, _U64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1


def _int(v, make_int, make_uint):
    if _I64_MIN <= v <= _I64_MAX:
        return make_int(v)
    if 0 <= v <= _U64_MAX:
        return make_uint(v)
    raise OverflowError(f"state integers fit in 64 bits; {v} does not")


def _scalar(v):
    """The WIT value of a scalar, or None if ``v`` is not one."""
    # bool first: it is a subclass of int.
    if isinstance(v, bool):
        return types.Value_Boolean(v)
    if isinstance(v, int):
        return _int(v, types.Value_Int, types.Value_Uint)
    if isinstance(v, float):
        return types.Value_Float(v)
    if isinstance(v, str):
        return types.Value_Text(v)
    if isinstance(v, (bytes, bytearray)):
        return types.Value_Bytes(bytes(v))
    return None


def _fields(v):
    """The fields of a dataclass instance, or None."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
    return None


def _flatten(v, out, depth=0):
    """Appends the pre-order nodes of ``v`` (docs/wit.md, nested values)."""
    if depth > 64:
        raise ValueError("state values nest at most 64 levels deep")
    if v is None:
        out.append(types.Node_None_())
    elif isinstance(v, bool):
        out.append(types.Node_Boolean(v))
    elif isinstance(v, int):
        out.append(_int(v, types.Node_Int, types.Node_Uint))
    elif isinstance(v, float):
        out.append(types.Node_Float(v))
    elif isinstance(v, str):
        out.append(types.Node_Text(v))
    elif isinstance(v, (bytes, bytearray)):
        out.append(types.Node_Bytes(bytes(v)))
    elif isinstance(v, (list, tuple)):
        out.append(types.Node_List(len(v)))
        for item in v:
            _flatten(item, out, depth + 1)
    elif isinstance(v, dict) or (d := _fields(v)) is not None:
        if isinstance(v, dict):
            d = v
        if all(isinstance(k, str) for k in d):
            out.append(types.Node_Record(list(d)))
            for item in d.values():
                _flatten(item, out, depth + 1)
        else:
            out.append(types.Node_Map(len(d)))
            for k, item in d.items():
                _flatten(k, out, depth + 1)
                _flatten(item, out, depth + 1)
    else:
        raise TypeError(
            "state values are bool, int, float, str, bytes, None, list, tuple, "
            f"dict or a dataclass, not {type(v).__name__}")


def _check(v):
    """Raises now, at the call, for a value a flush could not store. Runs
    per record: common scalars are checked without building the WIT value."""
    t = type(v)
    if t is int:
        if not _I64_MIN <= v <= _U64_MAX:
            raise OverflowError(f"state integers fit in 64 bits; {v} does not")
    elif t is not float and t is not str and t is not bool:
        _to_value(v)


def _to_value(v):
    scalar = _scalar(v)
    if scalar is not None:
        return scalar
    nodes = []
    _flatten(v, nodes)
    return types.Value_Nested(nodes)


def _unflatten(nodes, pos):
    """The value whose tree starts at ``nodes[pos]``, and the position after it."""
    node = nodes[pos]
    pos += 1
    if isinstance(node, types.Node_None_):
        return None, pos
    if isinstance(node, types.Node_List):
        items = []
        for _ in range(node.value):
            item, pos = _unflatten(nodes, pos)
            items.append(item)
        return items, pos
    if isinstance(node, types.Node_Map):
        d = {}
        for _ in range(node.value):
            k, pos = _unflatten(nodes, pos)
            d[_hashable(k)], pos = _unflatten(nodes, pos)
        return d, pos
    if isinstance(node, types.Node_Record):
        d = {}
        for name in node.value:
            d[name], pos = _unflatten(nodes, pos)
        return d, pos
    return node.value, pos


def _hashable(k):
    """A map key as a dict key: lists become tuples, dicts frozensets of items."""
    if isinstance(k, list):
        return tuple(_hashable(i) for i in k)
    if isinstance(k, dict):
        return frozenset((_hashable(a), _hashable(b)) for a, b in k.items())
    return k


def _from_value(v, cls=None):
    if isinstance(v, types.Value_Nested):
        value, _ = _unflatten(v.value, 0)
    else:
        value = v.value
    if cls is not None and isinstance(value, dict) and dataclasses.is_dataclass(cls):
        # Fields the stored value lacks take the dataclass's defaults; fields
        # the class no longer has are dropped, so a v2 reads v1's values.
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: value[k] for k in value if k in names})
    return value


_SCALAR_DESCRIPTORS = {bool: "bool", int: "int", float: "float", str: "text", bytes: "bytes"}


def describe(t):
    """The type descriptor (docs/wit.md, "Type descriptors") of a Python type:
    ``int`` -> ``int``, ``str`` -> ``text``, ``list[int]`` -> ``list<int>``,
    ``dict[str, float]`` -> ``map<text, float>``, ``Optional[T]`` ->
    ``option<T>``, a dataclass -> ``record{field: T, ...}``; anything else
    ``any``."""
    if t in _SCALAR_DESCRIPTORS:
        return _SCALAR_DESCRIPTORS[t]
    if dataclasses.is_dataclass(t) and isinstance(t, type):
        try:
            hints = typing.get_type_hints(t)
        except Exception:  # noqa: BLE001 - unresolvable annotations: untyped fields
            hints = {}
        fields = ", ".join(f"{f.name}: {describe(hints.get(f.name))}" for f in dataclasses.fields(t))
        return f"record{{{fields}}}"
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (list, tuple, set, frozenset) and len(args) == 1:
        return f"list<{describe(args[0])}>"
    if origin is dict and len(args) == 2:
        return f"map<{describe(args[0])}, {describe(args[1])}>"
    if origin is typing.Union and len(args) == 2 and type(None) in args:
        inner = args[0] if args[1] is type(None) else args[1]
        return f"option<{describe(inner)}>"
    return "any"


def _declare(name, declare, *args):
    """Calls a WIT ``declare`` import, turning its error into a ValueError."""
    try:
        declare(name, *args)
    except Err as e:
        raise ValueError(f"declaring state `{name}`: {e.value}") from None


class _Registry:
    key = None
    states = {}


# Bound once: a flush builds one update per dirty key.
_VALUE_SET = keyed_state.Update_ValueSet
_VALUE_CLEAR = keyed_state.Update_ValueClear()
_VALUE_INT = types.Value_Int
_VALUE_TEXT = types.Value_Text
_VALUE_FLOAT = types.Value_Float
# Values a handle cannot change in place after `set`.
_IMMUTABLE = frozenset([int, float, str, bytes, bool])


def _current_key(name):
    if _Registry.key is None:
        raise RuntimeError(f"state `{name}` is keyed: use it while processing a record that has a key")
    return _Registry.key


class _KeyedState:
    kind = None
    wit_kind = None

    def __init__(self, name, type=None):  # noqa: A002 - mirrors the Rust type parameter
        existing = _Registry.states.get(name)
        if existing is not None and existing.kind != self.kind:
            raise ValueError(f"state `{name}` is already a {existing.kind} state, not a {self.kind} state")
        type_name = None if type is None else self._descriptor(describe(type))
        _declare(name, keyed_state.declare, self.wit_kind(), type_name)
        self.name = name
        self._type = type
        self._cache = {}
        self._dirty = set()
        _Registry.states[name] = self

    @staticmethod
    def _descriptor(item):
        return item

    def _writes(self, out):
        """Appends the writes of every dirty entry to ``out``; marks them clean."""
        write, name, cache, update = keyed_state.StateWrite, self.name, self._cache, self._update
        out.extend([write(name, key, update(cache[key])) for key in self._dirty])
        self._dirty.clear()


class ValueState(_KeyedState):
    """One value per key."""

    kind = "value"

    @staticmethod
    def wit_kind():
        return types.StateKind.VALUE

    def get(self, default=None):
        """The current key's value, or ``default``."""
        key = _current_key(self.name)
        # One dict lookup on a hit: the hit path is most of word count's time.
        try:
            v = self._cache[key]
        except KeyError:
            v = keyed_state.value_get(self.name, key)
            v = None if v is None else _from_value(v, self._type)
            self._cache[key] = v
        return default if v is None else v

    def set(self, value):
        """Sets the current key's value."""
        key = _current_key(self.name)
        _check(value)  # now, not at the flush
        cache = self._cache
        # Setting the value a key already holds changes nothing: the entry
        # stays clean, so it is not written back. Only for immutable scalars
        # (a dict from `get` may have been changed in place since).
        if type(value) in _IMMUTABLE and key in cache:
            old = cache[key]
            if type(old) is type(value) and old == value:
                return
        cache[key] = value
        self._dirty.add(key)

    def clear(self):
        """Clears the current key's value."""
        key = _current_key(self.name)
        if key in self._cache and self._cache[key] is None:
            return
        self._cache[key] = None
        self._dirty.add(key)

    @staticmethod
    def _update(v):
        # The common scalars inline: a flush runs this once per dirty key.
        t = type(v)
        if t is int and _I64_MIN <= v <= _I64_MAX:
            return _VALUE_SET(_VALUE_INT(v))
        if t is str:
            return _VALUE_SET(_VALUE_TEXT(v))
        if t is float:
            return _VALUE_SET(_VALUE_FLOAT(v))
        if v is None:
            return _VALUE_CLEAR
        return _VALUE_SET(_to_value(v))


class ListState(_KeyedState):
    """A list per key."""

    kind = "list"

    @staticmethod
    def wit_kind():
        return types.StateKind.LIST

    @staticmethod
    def _descriptor(item):
        return f"list<{item}>"

    def _load(self):
        key = _current_key(self.name)
        if key not in self._cache:
            self._cache[key] = [_from_value(v, self._type) for v in keyed_state.list_get(self.name, key)]
        return key

    def get(self):
        """A copy of the current key's list."""
        return list(self._cache[self._load()])

    def add(self, value):
        """Appends to the current key's list."""
        _check(value)
        key = self._load()
        self._cache[key].append(value)
        self._dirty.add(key)

    def set(self, values):
        """Replaces the current key's list."""
        values = list(values)
        for v in values:
            _check(v)
        key = _current_key(self.name)
        self._cache[key] = values
        self._dirty.add(key)

    def clear(self):
        """Empties the current key's list."""
        self.set([])

    def _update(self, values):
        if not values:
            return keyed_state.Update_ListClear()
        return keyed_state.Update_ListSet([_to_value(v) for v in values])


class MapState(_KeyedState):
    """A map per key. Changes are written back entry by entry."""

    kind = "map"

    @staticmethod
    def wit_kind():
        return types.StateKind.MAP

    @staticmethod
    def _descriptor(item):
        return f"map<any, {item}>"

    def _load(self):
        key = _current_key(self.name)
        if key not in self._cache:
            entries = keyed_state.map_entries(self.name, key)
            self._cache[key] = (
                {_hashable(_from_value(k)): _from_value(v, self._type) for k, v in entries}, set(), False)
        return key

    def get(self, map_key, default=None):
        """The entry for ``map_key`` under the current key, or ``default``."""
        return self._cache[self._load()][0].get(map_key, default)

    def put(self, map_key, value):
        """Sets an entry under the current key."""
        _check(map_key)
        _check(value)
        key = self._load()
        entries, changed, cleared = self._cache[key]
        entries[map_key] = value
        changed.add(map_key)
        self._dirty.add(key)

    def remove(self, map_key):
        """Removes an entry under the current key."""
        key = self._load()
        entries, changed, cleared = self._cache[key]
        entries.pop(map_key, None)
        changed.add(map_key)
        self._dirty.add(key)

    def entries(self):
        """The current key's entries as a list of ``(key, value)``."""
        return list(self._cache[self._load()][0].items())

    def clear(self):
        """Removes every entry under the current key."""
        key = self._load()
        self._cache[key] = ({}, set(), True)
        self._dirty.add(key)

    def _writes(self, out):
        for key in self._dirty:
            entries, changed, cleared = self._cache[key]
            if cleared:
                out.append(keyed_state.StateWrite(self.name, key, keyed_state.Update_MapClear()))
            for k in changed:
                if k in entries:
                    update = keyed_state.Update_MapPut((_to_value(k), _to_value(entries[k])))
                else:
                    update = keyed_state.Update_MapRemove(_to_value(k))
                out.append(keyed_state.StateWrite(self.name, key, update))
            self._cache[key] = (entries, set(), False)
        self._dirty.clear()


class OperatorListState:
    """Non-keyed list state of this subtask. ``redistribution`` says how the
    list is shared out when the job is restored at another parallelism:
    ``"split"`` (the default: items dealt round-robin) or ``"union"`` (every
    subtask gets the whole list)."""

    _REDISTRIBUTIONS = {"split": "SPLIT", "union": "UNION"}

    def __init__(self, name, type=None, redistribution="split"):  # noqa: A002
        if redistribution not in self._REDISTRIBUTIONS:
            raise ValueError(f"state `{name}`: redistribution is 'split' or 'union', not {redistribution!r}")
        mode = getattr(types.Redistribution, self._REDISTRIBUTIONS[redistribution])
        type_name = None if type is None else f"list<{describe(type)}>"
        _declare(name, operator_state.declare, mode, type_name)
        self.name = name
        self._type = type

    def get(self):
        """The list."""
        return [_from_value(v, self._type) for v in operator_state.get(self.name)]

    def replace(self, values):
        """Replaces the list."""
        operator_state.replace(self.name, [_to_value(v) for v in values])


_LEVELS = {
    "trace": types.Level.TRACE, "debug": types.Level.DEBUG, "info": types.Level.INFO,
    "warn": types.Level.WARN, "error": types.Level.ERROR,
}


def log(level, message):
    """Logs ``message`` at ``level`` ('trace', 'debug', 'info', 'warn', 'error')."""
    logging.log(_LEVELS[level], str(message))


class Operator:
    """Base class of a Python operator: override ``process``, and optionally
    ``open``, ``snapshot``, ``on_checkpoint_complete`` and ``close``."""

    def open(self, ctx):
        """Called once per subtask with its :class:`Context`."""

    def process(self, record, out):
        """Called for every record; emit with ``out.emit(key, value)``."""
        raise NotImplementedError

    def snapshot(self, checkpoint_id, out):
        """Called before a checkpoint; state is flushed after it returns."""

    def on_checkpoint_complete(self, checkpoint_id):
        """Called once a checkpoint is durable."""

    def close(self, out):
        """Called at end of input; state is flushed after it returns."""


#: Keys a state handle keeps cached after a flush, as in the Rust SDK.
CACHE_CAPACITY = 1_000_000

#: Dirty keys (over all handles) above which the SDK flushes after a
#: ``process`` call, so no ``snapshot`` or ``close`` has more than about
#: this many keys to hand over, however many keys changed between two
#: checkpoints. A flush costs about 28 k fuel per changed key of a word
#: count (docs/sdk.md, "What a flush costs"): 16,384 keys take about a
#: quarter of the default budget per call (``limits.fuel_per_call``, 2e9).
#: Writing back early is harmless: the host discards uncheckpointed state
#: on failure. Set to ``None`` to flush only at ``snapshot`` and ``close``.
DIRTY_LIMIT = 16_384

#: Writes per ``keyed-state.write`` call: big batches, but a bounded list
#: for the bindings to lower at once.
WRITE_CHUNK = 65_536


def _dirty_keys():
    return sum(len(state._dirty) for state in _Registry.states.values())


def _flush():
    """Hands every dirty entry to the host in as few calls as possible (one
    per ``WRITE_CHUNK`` writes), then bounds memory: after a flush every
    entry is clean, so an oversized cache can be dropped and reloaded from
    the host on the next miss. Entries that were only read are clean and
    are never written back."""
    writes = []
    for state in _Registry.states.values():
        if state._dirty:
            state._writes(writes)
    for start in range(0, len(writes), WRITE_CHUNK):
        keyed_state.write(writes[start:start + WRITE_CHUNK])
    for state in _Registry.states.values():
        if len(state._cache) > CACHE_CAPACITY:
            state._cache.clear()


def _guard(fn):
    """Runs a hook; a Python exception becomes the hook's error string, so
    the job fails with the exception's type and message."""
    try:
        return fn()
    except Err:
        raise
    except Exception as e:  # noqa: BLE001 - every user error fails the job
        tb = traceback.extract_tb(e.__traceback__)
        where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
        raise Err(f"{type(e).__name__}: {e}{where}")


def export(operator_class):
    """Returns the class componentize-py exports; in ``app.py`` write
    ``Operator = weir.export(MyOperator)``."""
    instance = []

    class _Export(exports.Operator):
        def open(self, context):
            def run():
                instance.append(operator_class())
                instance[0].open(Context(context))
            _guard(run)

        def process(self, batch):
            op, out = instance[0], Emitter()

            def run():
                for record in _decode(batch):
                    _Registry.key = record.key
                    out._timestamp = record.timestamp
                    op.process(record, out)
                _Registry.key = None
                if DIRTY_LIMIT is not None and _dirty_keys() > DIRTY_LIMIT:
                    _flush()
            _guard(run)
            out._send()

        def snapshot(self, checkpoint_id):
            out = Emitter()

            def run():
                instance[0].snapshot(checkpoint_id, out)
                _flush()
            _guard(run)
            out._send()

        def on_checkpoint_complete(self, checkpoint_id):
            _guard(lambda: instance[0].on_checkpoint_complete(checkpoint_id))

        def close(self):
            out = Emitter()

            def run():
                instance[0].close(out)
                _flush()
            _guard(run)
            out._send()

    return _Export
