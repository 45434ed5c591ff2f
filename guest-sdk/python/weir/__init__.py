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

Event time (``weir:operator@0.2.0``, docs/sdk.md "Event time"): records
carry ``timestamp``; timers per key (:func:`register_event_time_timer`,
:func:`register_processing_time_timer`, ...) call back
:meth:`Operator.on_timer`, and :meth:`Operator.on_watermark` follows every
watermark. :class:`WindowOperator` implements tumbling, sliding and session
windows (:func:`tumbling`, :func:`sliding`, :func:`session`) with the state
layout every SDK shares.
"""

import dataclasses
import re
import struct
import traceback
import typing

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import keyed_state, logging, metrics, operator_state, output, timers, types

__all__ = [
    "Context", "Record", "Emitter", "Operator", "ValueState", "MapState",
    "ListState", "OperatorListState", "log", "export", "describe",
    "Timer", "EVENT_TIME", "PROCESSING_TIME", "register_event_time_timer",
    "delete_event_time_timer", "register_processing_time_timer",
    "delete_processing_time_timer", "current_watermark", "current_processing_time",
    "counter_add", "Window", "tumbling", "sliding", "session", "WindowOperator",
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


#: How many levels a state value may nest, its root included, as the host
#: enforces.
_MAX_DEPTH = 64


def _too_deep():
    return ValueError(f"state values nest at most {_MAX_DEPTH} levels deep")


def _flatten(v, out, depth=0):
    """Appends the pre-order nodes of ``v`` (docs/wit.md, nested values)."""
    if depth >= _MAX_DEPTH:
        raise _too_deep()
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


# Packed state writes (docs/wit.md, "Packed state writes", layout version
# 1): a flush hands the host one buffer per chunk through
# `keyed-state.write-packed`, not a list of WIT records, because lowering
# those costs a Python object walk per write, key, value and nested node.
# Every value is written in its canonical form, converted by the same rules
# as `_to_value` (a dict with only str keys or a dataclass is a record,
# another dict a map, a list or tuple a list, None none).

_OP_STATE, _OP_VALUE_SET, _OP_VALUE_CLEAR, _OP_MAP_PUT = 1, 2, 3, 4
_OP_MAP_REMOVE, _OP_MAP_CLEAR, _OP_LIST_SET, _OP_LIST_CLEAR = 5, 6, 7, 8
_TAG_INT, _TAG_UINT, _TAG_FLOAT, _TAG_TEXT, _TAG_BYTES = 1, 2, 3, 4, 5
_TAG_LIST, _TAG_MAP, _TAG_RECORD = 7, 8, 9
# A tag or op byte, then an i64, u64, f64 or u32 (a length or a count).
_PACK_INT = struct.Struct("<Bq").pack
_PACK_UINT = struct.Struct("<BQ").pack
_PACK_FLOAT = struct.Struct("<Bd").pack
_PACK_LEN = struct.Struct("<BI").pack
_PACK_U32 = _U32.pack
_TRUE, _FALSE, _NONE = b"\x00\x01", b"\x00\x00", 6


def _put(buf, v, depth=0):
    """Appends the canonical form of state value ``v`` to ``buf`` (a
    bytearray); ``depth`` is how deep ``v`` is nested. The common scalars
    first, by exact type; anything else as ``_flatten`` decides."""
    t = type(v)
    if t is int:
        if _I64_MIN <= v <= _I64_MAX:
            buf += _PACK_INT(_TAG_INT, v)
        else:
            _put_int(buf, v)
    elif t is str:
        b = v.encode()
        buf += _PACK_LEN(_TAG_TEXT, len(b))
        buf += b
    elif t is float:
        buf += _PACK_FLOAT(_TAG_FLOAT, v)
    elif t is bool:
        buf += _TRUE if v else _FALSE
    elif v is None:
        buf.append(_NONE)
    elif t is dict:
        _put_dict(buf, v, depth)
    elif t is list or t is tuple:
        _put_list(buf, v, depth)
    elif t is bytes:
        buf += _PACK_LEN(_TAG_BYTES, len(v))
        buf += v
    else:
        _put_other(buf, v, depth)


def _put_list(buf, v, depth):
    if v and depth >= _MAX_DEPTH - 1:
        raise _too_deep()
    buf += _PACK_LEN(_TAG_LIST, len(v))
    depth += 1
    for item in v:
        _put(buf, item, depth)


#: Record field names as packed (length and UTF-8), by name: a flush packs
#: the same few names once per value. Bounded, for dicts of many keys.
_NAMES = {}


def _put_dict(buf, d, depth):
    """A dict with only str keys as a record, any other as a map."""
    if d and depth >= _MAX_DEPTH - 1:
        raise _too_deep()
    depth += 1
    for k in d:
        if not isinstance(k, str):
            buf += _PACK_LEN(_TAG_MAP, len(d))
            for k, item in d.items():
                _put(buf, k, depth)
                _put(buf, item, depth)
            return
    buf += _PACK_LEN(_TAG_RECORD, len(d))
    names = _NAMES
    for name, item in d.items():
        packed = names.get(name)
        if packed is None:
            b = str.encode(name)
            packed = _PACK_U32(len(b)) + b
            if len(names) < 4096:
                names[name] = packed
        buf += packed
        _put(buf, item, depth)


def _put_int(buf, v):
    if _I64_MIN <= v <= _I64_MAX:
        buf += _PACK_INT(_TAG_INT, v)
    elif 0 <= v <= _U64_MAX:
        buf += _PACK_UINT(_TAG_UINT, v)
    else:
        raise OverflowError(f"state integers fit in 64 bits; {v} does not")


def _put_other(buf, v, depth):
    # In `_flatten`'s order: bool before int (its subclass).
    if isinstance(v, bool):
        buf += _TRUE if v else _FALSE
    elif isinstance(v, int):
        _put_int(buf, v)
    elif isinstance(v, float):
        buf += _PACK_FLOAT(_TAG_FLOAT, v)
    elif isinstance(v, str):
        b = str.encode(v)
        buf += _PACK_LEN(_TAG_TEXT, len(b))
        buf += b
    elif isinstance(v, (bytes, bytearray)):
        buf += _PACK_LEN(_TAG_BYTES, len(v))
        buf += v
    elif isinstance(v, (list, tuple)):
        _put_list(buf, v, depth)
    elif isinstance(v, dict):
        _put_dict(buf, v, depth)
    elif (d := _fields(v)) is not None:
        _put_dict(buf, d, depth)
    else:
        _flatten(v, [])  # raises the TypeError `_to_value` would


class _Packer:
    """The packed buffer a flush fills: it is handed to the host (one
    ``keyed-state.write-packed`` call) once it holds ``WRITE_CHUNK`` writes
    or ``WRITE_BYTES`` bytes, and at the end of the flush. A ``state`` op is
    written once per run of writes to the same state."""

    __slots__ = ("buf", "writes", "state", "chunk", "max_bytes")

    def __init__(self):
        self.buf = bytearray()
        self.writes = 0
        self.state = None
        self.chunk = WRITE_CHUNK
        self.max_bytes = WRITE_BYTES

    def begin(self, state, op, key):
        """Starts write ``op`` under ``key`` to the state whose ``state`` op
        is ``state`` (``_state_op``); returns the buffer to append the
        write's values to."""
        if self.writes >= self.chunk or len(self.buf) >= self.max_bytes:
            self.send()
        buf = self.buf
        if self.state is not state:
            buf += state
            self.state = state
        buf += _PACK_LEN(op, len(key))
        buf += key
        self.writes += 1
        return buf

    def send(self):
        """Hands the buffer to the host, if it holds a write."""
        if self.writes:
            keyed_state.write_packed(bytes(self.buf))
        self.buf = bytearray()
        self.writes = 0
        self.state = None


def _state_op(name):
    """The ``state`` op naming state ``name``."""
    b = name.encode()
    return _PACK_LEN(_OP_STATE, len(b)) + b


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
    ``option<T>``, a dataclass -> ``record{field: T, ...}``, a string -> the
    string itself (a descriptor written out); anything else ``any``."""
    if isinstance(t, str):
        return t
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
    """What every handle shares: the current key (of the record being
    processed or the timer firing), the state handles by name, and the
    watermark read in this hook call (None: not read yet)."""

    key = None
    states = {}
    watermark = None


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
        # Keys changed since the last flush, in the order they changed (a
        # dict as an ordered set), so a flush writes them in that order.
        self._dirty = {}
        self._state_op = _state_op(name)
        _Registry.states[name] = self

    @staticmethod
    def _descriptor(item):
        return item

    def _pack(self, p):
        """Packs the writes of every dirty entry into ``p`` (a :class:`_Packer`);
        marks them clean."""
        raise NotImplementedError


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
        self._dirty[key] = None

    def clear(self):
        """Clears the current key's value."""
        key = _current_key(self.name)
        if key in self._cache and self._cache[key] is None:
            return
        self._cache[key] = None
        self._dirty[key] = None

    def _pack(self, p):
        cache, state, begin = self._cache, self._state_op, p.begin
        for key in self._dirty:
            v = cache[key]
            if v is None:
                begin(state, _OP_VALUE_CLEAR, key)
            elif type(v) is int and _I64_MIN <= v <= _I64_MAX:
                # The commonest value inline: this runs once per dirty key.
                begin(state, _OP_VALUE_SET, key).extend(_PACK_INT(_TAG_INT, v))
            else:
                _put(begin(state, _OP_VALUE_SET, key), v)
        self._dirty.clear()


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
        self._dirty[key] = None

    def set(self, values):
        """Replaces the current key's list."""
        values = list(values)
        for v in values:
            _check(v)
        key = _current_key(self.name)
        self._cache[key] = values
        self._dirty[key] = None

    def clear(self):
        """Empties the current key's list."""
        self.set([])

    def _pack(self, p):
        cache, state, begin = self._cache, self._state_op, p.begin
        for key in self._dirty:
            values = cache[key]
            if not values:
                begin(state, _OP_LIST_CLEAR, key)
                continue
            buf = begin(state, _OP_LIST_SET, key)
            buf += _PACK_U32(len(values))
            for v in values:
                _put(buf, v)
        self._dirty.clear()


class MapState(_KeyedState):
    """A map per key. Changes are written back entry by entry. ``type``
    describes the values and ``key_type`` the map keys, both declared to the
    host (``map<K, V>``; ``any`` for the one not given)."""

    kind = "map"

    def __init__(self, name, type=None, key_type=None):  # noqa: A002
        self._key_type = key_type
        if key_type is not None and type is None:
            type = typing.Any  # noqa: A001 - declares `map<K, any>`
        super().__init__(name, type)

    @staticmethod
    def wit_kind():
        return types.StateKind.MAP

    def _descriptor(self, item):
        key = "any" if self._key_type is None else describe(self._key_type)
        return f"map<{key}, {item}>"

    def _load(self):
        key = _current_key(self.name)
        if key not in self._cache:
            entries = keyed_state.map_entries(self.name, key)
            self._cache[key] = (
                {_hashable(_from_value(k)): _from_value(v, self._type) for k, v in entries}, {}, False)
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
        changed[map_key] = None
        self._dirty[key] = None

    def remove(self, map_key):
        """Removes an entry under the current key."""
        key = self._load()
        entries, changed, cleared = self._cache[key]
        entries.pop(map_key, None)
        changed[map_key] = None
        self._dirty[key] = None

    def entries(self):
        """The current key's entries as a list of ``(key, value)``."""
        return list(self._cache[self._load()][0].items())

    def clear(self):
        """Removes every entry under the current key."""
        key = self._load()
        self._cache[key] = ({}, {}, True)
        self._dirty[key] = None

    def _pack(self, p):
        cache, state, begin = self._cache, self._state_op, p.begin
        for key in self._dirty:
            entries, changed, cleared = cache[key]
            if cleared:
                begin(state, _OP_MAP_CLEAR, key)
            for k in changed:
                if k in entries:
                    buf = begin(state, _OP_MAP_PUT, key)
                    _put(buf, k)
                    _put(buf, entries[k])
                else:
                    _put(begin(state, _OP_MAP_REMOVE, key), k)
            cache[key] = (entries, {}, False)
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


# Event time: timers, watermarks and metrics (docs/sdk.md, "Event time").

#: The domain of a timer that fires when the watermark reaches its timestamp.
EVENT_TIME = "event-time"
#: The domain of a timer that fires when the host's clock reaches its timestamp.
PROCESSING_TIME = "processing-time"

_DOMAINS = {EVENT_TIME: types.TimeDomain.EVENT_TIME, PROCESSING_TIME: types.TimeDomain.PROCESSING_TIME}
_DOMAIN_NAMES = {v: k for k, v in _DOMAINS.items()}


class Timer:
    """A timer that fired: ``key`` (bytes), ``timestamp`` (int, ms) and
    ``domain`` (:data:`EVENT_TIME` or :data:`PROCESSING_TIME`)."""

    __slots__ = ("key", "timestamp", "domain")

    def __init__(self, key, timestamp, domain):
        self.key = key
        self.timestamp = timestamp
        self.domain = domain

    def __eq__(self, other):
        return isinstance(other, Timer) and (self.key, self.timestamp, self.domain) == (
            other.key, other.timestamp, other.domain)

    __hash__ = None

    def __repr__(self):
        return f"Timer(key={self.key!r}, timestamp={self.timestamp}, domain={self.domain!r})"


def _timer_key():
    if _Registry.key is None:
        raise RuntimeError(
            "timers are keyed: use them while processing a record that has a key, or in on_timer")
    return _Registry.key


def _timestamp(timestamp):
    if type(timestamp) is not int or not _I64_MIN <= timestamp <= _I64_MAX:
        raise ValueError(f"a timer timestamp is a signed 64-bit int of milliseconds, not {timestamp!r}")
    return timestamp


def _timer_call(call, timestamp, domain):
    key = _timer_key()
    try:
        call(key, _timestamp(timestamp), _DOMAINS[domain])
    except Err as e:
        raise RuntimeError(f"timer at {timestamp} ({domain}): {e.value}") from None


def register_event_time_timer(timestamp):
    """Registers a timer for the current key that fires (``on_timer``) once
    the watermark reaches ``timestamp``. Registering it again does nothing."""
    _timer_call(timers.register, timestamp, EVENT_TIME)


def delete_event_time_timer(timestamp):
    """Deletes the current key's event-time timer at ``timestamp``, if any."""
    _timer_call(timers.delete, timestamp, EVENT_TIME)


def register_processing_time_timer(timestamp):
    """Registers a timer for the current key that fires (``on_timer``) once
    the host's clock (:func:`current_processing_time`) reaches ``timestamp``."""
    _timer_call(timers.register, timestamp, PROCESSING_TIME)


def delete_processing_time_timer(timestamp):
    """Deletes the current key's processing-time timer at ``timestamp``, if any."""
    _timer_call(timers.delete, timestamp, PROCESSING_TIME)


def current_watermark():
    """The operator's event-time watermark in milliseconds: ``-2**63`` before
    the first one. It only moves between hook calls, so it is read from the
    host once per call."""
    if _Registry.watermark is None:
        _Registry.watermark = timers.current_watermark()
    return _Registry.watermark


def current_processing_time():
    """The host's clock, milliseconds since the Unix epoch (the clock
    processing-time timers run on; guests have no other)."""
    return timers.current_processing_time()


_COUNTER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Distinct counters an operator may have (the host's limit).
MAX_COUNTERS = 32
_counters = set()


def counter_add(name, delta=1):
    """Adds ``delta`` (a non-negative int) to the operator's metrics counter
    ``name`` (1 to 64 of ``A-Z a-z 0-9 _ . -``; at most 32 counters), shown
    in the job's metrics. Counters restart from zero with the job."""
    if type(name) is not str or name not in _counters:
        if type(name) is not str or not _COUNTER_NAME.fullmatch(name):
            raise ValueError(f"a counter name is 1 to 64 of A-Z a-z 0-9 _ . -, not {name!r}")
        if len(_counters) >= MAX_COUNTERS:
            raise ValueError(f"counter {name!r}: an operator has at most {MAX_COUNTERS} counters")
        _counters.add(name)
    if type(delta) is not int or not 0 <= delta <= _U64_MAX:
        raise ValueError(f"counter {name!r}: delta is an unsigned 64-bit int, not {delta!r}")
    metrics.counter_add(name, delta)


class Operator:
    """Base class of a Python operator: override ``process``, and optionally
    ``open``, ``on_watermark``, ``on_timer``, ``snapshot``,
    ``on_checkpoint_complete`` and ``close``."""

    def open(self, ctx):
        """Called once per subtask with its :class:`Context`."""

    def process(self, record, out):
        """Called for every record; emit with ``out.emit(key, value)``."""
        raise NotImplementedError

    def on_watermark(self, watermark, out):
        """Called when the event-time watermark advances to ``watermark``
        (ms), after every event-time timer it made due has fired; what it
        emits precedes the watermark downstream. At end of input the
        watermark is ``2**63 - 1``. Emits carry no timestamp by default."""

    def on_timer(self, timer, out):
        """Called when a :class:`Timer` fires; keyed state and timers are
        scoped to ``timer.key``. Emits carry the timer's timestamp by
        default for an event-time timer, none for a processing-time one."""

    def snapshot(self, checkpoint_id, out):
        """Called before a checkpoint; state is flushed after it returns."""

    def on_checkpoint_complete(self, checkpoint_id):
        """Called once a checkpoint is durable."""

    def close(self, out):
        """Called at end of input; state is flushed after it returns."""

    def _setup(self):
        """Runs after ``open``: what a base class sets up from its attributes."""


#: Keys a state handle keeps cached after a flush, as in the Rust SDK.
CACHE_CAPACITY = 1_000_000

#: Dirty keys (over all handles) above which the SDK flushes after a
#: ``process`` call, so no ``snapshot`` or ``close`` has more than about
#: this many keys to hand over, however many keys changed between two
#: checkpoints. A flush costs about 12 k fuel per changed key of a word
#: count (docs/sdk.md, "What a flush costs"): 16,384 keys take about a
#: tenth of the default budget per call (``limits.fuel_per_call``, 2e9).
#: Writing back early is harmless: the host discards uncheckpointed state
#: on failure. Set to ``None`` to flush only at ``snapshot`` and ``close``.
DIRTY_LIMIT = 16_384

#: Writes per ``keyed-state.write-packed`` call at most: big batches, but a
#: bounded buffer per call.
WRITE_CHUNK = 65_536

#: Bytes after which a flush hands its packed buffer to the host before
#: starting the next write (a write is never split, so one buffer exceeds
#: this by at most one write).
WRITE_BYTES = 4 << 20


def _dirty_keys():
    return sum(len(state._dirty) for state in _Registry.states.values())


def _flush():
    """Hands every dirty entry to the host in as few calls as possible (one
    ``keyed-state.write-packed`` buffer per ``WRITE_CHUNK`` writes or
    ``WRITE_BYTES`` bytes), then bounds memory: after a flush every entry is
    clean, so an oversized cache can be dropped and reloaded from the host
    on the next miss. Entries that were only read are clean and are never
    written back."""
    p = _Packer()
    for state in _Registry.states.values():
        if state._dirty:
            state._pack(p)
    p.send()
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


def _after_call():
    """After a hook that may change many keys: flush them if there are more
    than ``DIRTY_LIMIT`` (as after ``process``)."""
    if DIRTY_LIMIT is not None and _dirty_keys() > DIRTY_LIMIT:
        _flush()


def _hook(run, out=None):
    """Runs one hook call: state and timers are scoped to no key but the one
    ``run`` sets, the watermark is read afresh, and what ``run`` emits is
    sent once it succeeded."""
    _Registry.key = None
    _Registry.watermark = None
    try:
        _guard(run)
    finally:
        _Registry.key = None
        if out is not None:
            out._timestamp = None
    if out is not None:
        out._send()


def export(operator_class):
    """Returns the class componentize-py exports; in ``app.py`` write
    ``Operator = weir.export(MyOperator)``. ``operator_class`` is called with
    no arguments to make the operator (a class, or any factory)."""
    instance = []

    class _Export(exports.Operator):
        def open(self, context):
            def run():
                instance.append(operator_class())
                instance[0].open(Context(context))
                instance[0]._setup()
            _hook(run)

        def process(self, batch):
            op, out = instance[0], Emitter()

            def run():
                for record in _decode(batch):
                    _Registry.key = record.key
                    out._timestamp = record.timestamp
                    op.process(record, out)
                _Registry.key = None
                _after_call()
            _hook(run, out)

        def on_watermark(self, watermark):
            out = Emitter()

            def run():
                _Registry.watermark = watermark
                instance[0].on_watermark(watermark, out)
                _after_call()
            _hook(run, out)

        def on_timer(self, key, timestamp, domain):
            out = Emitter()

            def run():
                timer = Timer(bytes(key), timestamp, _DOMAIN_NAMES[domain])
                _Registry.key = timer.key
                out._timestamp = timestamp if timer.domain == EVENT_TIME else None
                instance[0].on_timer(timer, out)
                _Registry.key = None
                _after_call()
            _hook(run, out)

        def snapshot(self, checkpoint_id):
            out = Emitter()

            def run():
                instance[0].snapshot(checkpoint_id, out)
                _flush()
            _hook(run, out)

        def on_checkpoint_complete(self, checkpoint_id):
            _hook(lambda: instance[0].on_checkpoint_complete(checkpoint_id))

        def close(self):
            out = Emitter()

            def run():
                instance[0].close(out)
                _flush()
            _hook(run, out)

    return _Export


# Windows (docs/sdk.md, "Windows"): the assigners, and an operator built
# from an assigner, an aggregate and a lateness policy. The state layout is
# the same in every SDK, so a window operator restores from a savepoint
# another language wrote: keyed map state `windows`, window start -> record
# {end, acc}, and event-time timers at `end - 1` (fire) and
# `end - 1 + allowed_lateness` (clean up).

#: The metrics counter of late records a window operator dropped.
LATE_RECORDS_DROPPED = "late_records_dropped"


class Window(typing.NamedTuple):
    """A half-open event-time window ``[start, end)`` in milliseconds."""

    start: int
    end: int

    @property
    def max_timestamp(self):
        """The window's last timestamp, ``end - 1``: it fires when the
        watermark reaches it, and its result carries it."""
        return self.end - 1


def _window(start, end):
    if end > _I64_MAX:
        raise ValueError(f"the window starting at {start} ends past the largest timestamp")
    return Window(start, end)


def _positive(name, v):
    if type(v) is not int or not 0 < v <= _I64_MAX:
        raise ValueError(f"{name} is a positive int of milliseconds, not {v!r}")
    return v


def _whole(name, v):
    if type(v) is not int or not _I64_MIN <= v <= _I64_MAX:
        raise ValueError(f"{name} is an int of milliseconds, not {v!r}")
    return v


class _Tumbling:
    merging = False

    def __init__(self, size, offset):
        self.size = _positive("a tumbling window's size", size)
        self.offset = _whole("a window offset", offset)

    def assign(self, ts):
        # Python's % is a floor modulo, so negative timestamps work.
        start = ts - (ts - self.offset) % self.size
        return [_window(start, start + self.size)]

    def __repr__(self):
        return f"tumbling({self.size}, offset={self.offset})"


class _Sliding:
    merging = False

    def __init__(self, size, slide, offset):
        self.size = _positive("a sliding window's size", size)
        self.slide = _positive("a sliding window's slide", slide)
        self.offset = _whole("a window offset", offset)

    def assign(self, ts):
        start = ts - (ts - self.offset) % self.slide
        windows = []
        while start > ts - self.size:
            windows.append(_window(start, start + self.size))
            start -= self.slide
        return windows

    def __repr__(self):
        return f"sliding({self.size}, {self.slide}, offset={self.offset})"


class _Session:
    merging = True

    def __init__(self, gap):
        self.gap = _positive("a session gap", gap)

    def assign(self, ts):
        return [_window(ts, ts + self.gap)]

    def __repr__(self):
        return f"session({self.gap})"


def tumbling(size, offset=0):
    """Windows of ``size`` ms, one per record: ``start = ts - (ts - offset)
    mod size``."""
    return _Tumbling(size, offset)


def sliding(size, slide, offset=0):
    """Windows of ``size`` ms starting every ``slide`` ms: a record is in
    every one that contains its timestamp."""
    return _Sliding(size, slide, offset)


def session(gap):
    """Sessions: a record's window is ``[ts, ts + gap)``, merged with every
    window of its key it intersects or touches."""
    return _Session(gap)


class WindowOperator(Operator):
    """A keyed event-time window operator. Give it

    - ``assigner``: :func:`tumbling`, :func:`sliding` or :func:`session`;
    - ``aggregate``: an object with ``create()`` -> a new accumulator,
      ``add(acc, record)`` -> the accumulator with ``record`` added,
      ``merge(a, b)`` -> one accumulator of two (sessions only) and
      ``result(key, window, acc)`` -> the value to emit (``str`` or
      ``bytes``; ``None`` emits nothing), and optionally
      ``result_key(key, window)`` -> the key to emit the result under
      (``str`` or ``bytes``; ``None``, or no such method: the window's key),
      to re-partition results downstream. By default the operator itself:
      define those methods on the subclass;
    - ``allowed_lateness`` (ms, default 0): how long after it fired a window
      is kept, firing again for every late record it still accepts;
    - ``on_late(record)``, optional: the value to emit (with the record's
      key and timestamp) for a record too late for every window; without
      it, or when it returns None, the record is dropped and counted in the
      ``late_records_dropped`` counter.

    as constructor arguments, as class attributes, or by setting them in
    ``open`` (where the config is known). A window fires once the watermark
    reaches its last timestamp: it emits ``result`` keyed by the key (or by
    ``result_key``), with timestamp ``end - 1``. Accumulators are state
    values. The operator owns the key's event-time timers and the map state
    ``windows``.
    """

    assigner = None
    aggregate = None
    allowed_lateness = 0
    on_late = None

    def __init__(self, assigner=None, aggregate=None, allowed_lateness=None, on_late=None):
        if assigner is not None:
            self.assigner = assigner
        if aggregate is not None:
            self.aggregate = aggregate
        if allowed_lateness is not None:
            self.allowed_lateness = allowed_lateness
        if on_late is not None:
            self.on_late = on_late

    def _setup(self):
        if not isinstance(self.assigner, (_Tumbling, _Sliding, _Session)):
            raise ValueError(
                "a WindowOperator needs an assigner: weir.tumbling(size), weir.sliding(size, slide) "
                f"or weir.session(gap), not {self.assigner!r}")
        lateness = self.allowed_lateness
        if type(lateness) is not int or not 0 <= lateness <= _I64_MAX:
            raise ValueError(f"allowed_lateness is a non-negative int of milliseconds, not {lateness!r}")
        agg = self if self.aggregate is None else self.aggregate
        needed = ("create", "add", "merge", "result") if self.assigner.merging else ("create", "add", "result")
        missing = [m for m in needed if not callable(getattr(agg, m, None))]
        if missing:
            raise ValueError(f"the window aggregate {type(agg).__name__} lacks {', '.join(missing)}")
        result_key = getattr(agg, "result_key", None)
        if result_key is not None and not callable(result_key):
            raise ValueError(f"result_key is a method (key, window) -> key or None, not {result_key!r}")
        self._agg = agg
        self._result_key = result_key
        self._windows = MapState("windows", type="record{end: int, acc: any}", key_type=int)

    def _cleanup_time(self, end):
        """When a window ending at ``end`` is dropped: ``end - 1 +
        allowed_lateness``, saturating at the largest timestamp."""
        return min(end - 1 + self.allowed_lateness, _I64_MAX)

    def _timer_times(self, end):
        return {end - 1, self._cleanup_time(end)}

    def _register(self, window, watermark):
        """Registers a new window's timers: the firing one unless the
        watermark passed it (the window then fires at once), and the
        clean-up one when there is lateness."""
        if window.end - 1 > watermark:
            register_event_time_timer(window.end - 1)
        if self.allowed_lateness > 0:
            register_event_time_timer(self._cleanup_time(window.end))

    def _fire(self, key, window, acc, out):
        value = self._agg.result(key, window, acc)
        if value is not None:
            if self._result_key is not None:
                result_key = self._result_key(key, window)
                if result_key is not None:
                    key = result_key
            out.emit(key, value, timestamp=window.end - 1)

    def _late(self, record, out):
        value = None if self.on_late is None else self.on_late(record)
        if value is None:
            counter_add(LATE_RECORDS_DROPPED)
        else:
            out.emit(record.key, value, timestamp=record.timestamp)

    def process(self, record, out):
        ts = record.timestamp
        if ts is None:
            raise ValueError("a window operator needs event time: a record without a timestamp")
        watermark = current_watermark()
        if self.assigner.merging:
            self._add_to_session(record, ts, watermark, out)
            return
        added = False
        for window in self.assigner.assign(ts):
            if self._cleanup_time(window.end) > watermark:
                self._add(window, record, watermark, out)
                added = True
        if not added:
            self._late(record, out)

    def _add(self, window, record, watermark, out):
        windows = self._windows
        entry = windows.get(window.start)
        if entry is None:
            acc = self._agg.create()
            self._register(window, watermark)
        else:
            acc = entry["acc"]
        acc = self._agg.add(acc, record)
        windows.put(window.start, {"end": window.end, "acc": acc})
        if window.end - 1 <= watermark:  # fired already, still kept: again
            self._fire(record.key, window, acc, out)

    def _add_to_session(self, record, ts, watermark, out):
        (window,) = self.assigner.assign(ts)
        if self._cleanup_time(window.end) <= watermark:
            self._late(record, out)
            return
        windows = self._windows
        entries = windows.entries()
        merged = sorted(((s, e) for s, e in entries if s <= window.end and e["end"] >= window.start),
                        key=lambda item: item[0])
        if not merged:
            self._add(window, record, watermark, out)
            return
        # Into the merged windows' accumulators, in start order (the older
        # window is `a`), then the record.
        acc = merged[0][1]["acc"]
        for _, e in merged[1:]:
            acc = self._agg.merge(acc, e["acc"])
        acc = self._agg.add(acc, record)
        start = min(window.start, merged[0][0])
        end = max(window.end, max(e["end"] for _, e in merged))
        new = Window(start, end)
        for s, _ in merged:
            if s != start:
                windows.remove(s)
        windows.put(start, {"end": end, "acc": acc})
        if len(merged) > 1 or merged[0][0] != start or merged[0][1]["end"] != end:
            # The merged windows' timers go, but a timer is per key and
            # timestamp: keep those another window of the key still needs.
            kept = set()
            for _, e in windows.entries():
                kept |= self._timer_times(e["end"])
            for _, e in merged:
                for t in self._timer_times(e["end"]) - kept:
                    delete_event_time_timer(t)
            self._register(new, watermark)
        if end - 1 <= watermark:
            self._fire(record.key, new, acc, out)

    def on_timer(self, timer, out):
        if timer.domain != EVENT_TIME:
            return
        t, windows = timer.timestamp, self._windows
        entries = sorted(windows.entries(), key=lambda item: item[0])
        for start, e in entries:
            if e["end"] - 1 == t:
                self._fire(timer.key, Window(start, e["end"]), e["acc"], out)
                if self.allowed_lateness == 0:
                    windows.remove(start)
        if self.allowed_lateness > 0:
            for start, e in entries:
                if self._cleanup_time(e["end"]) == t:
                    windows.remove(start)
