"""A fake Weir host for unit tests of the Python SDK (``weir``) and of
Python operators, outside WebAssembly.

componentize-py generates ``wit_world`` and ``componentize_py_types`` only
when it builds a component, so importing this module installs small
in-memory stand-ins for them (the WIT types as plain classes, the imports as
a dict-backed host, :data:`HOST`) before importing ``weir``.

:class:`Harness` drives an exported operator through its hooks the way the
host does, including event time: ``watermark(w)`` fires every event-time
timer at or before ``w`` in timestamp order, then calls ``on_watermark``;
``advance_processing_time(t)`` fires the processing-time timers the clock
passed; a processing-time timer registered in the past fires as soon as
the call that registered it returns::

    h = Harness(MyWindowOperator, config='{"size": 10}')
    h.process(("k", "a", 3), ("k", "b", 12))
    h.watermark(9)
    assert h.take() == [("k", "k,0,10,1", 9)]
"""

import dataclasses
import enum
import struct
import sys
import types as pytypes
from pathlib import Path

I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1


class Err(Exception):
    """componentize-py's error result: ``.value`` is the error."""

    def __init__(self, value):
        super().__init__(value)
        self.value = value


def _case(name):
    def init(self, value=None):
        self.value = value

    def eq(self, other):
        return type(self) is type(other) and self.value == other.value

    def rep(self):
        return f"{name}({self.value!r})"

    return type(name, (), {"__init__": init, "__eq__": eq, "__repr__": rep, "__hash__": None})


wit_types = pytypes.ModuleType("wit_world.imports.types")
for case in ["Boolean", "Int", "Uint", "Float", "Text", "Bytes", "Nested"]:
    setattr(wit_types, f"Value_{case}", _case(f"Value_{case}"))
for case in ["None_", "Boolean", "Int", "Uint", "Float", "Text", "Bytes", "List", "Map", "Record"]:
    setattr(wit_types, f"Node_{case}", _case(f"Node_{case}"))
wit_types.Level = enum.Enum("Level", "TRACE DEBUG INFO WARN ERROR")
wit_types.StateKind = enum.Enum("StateKind", "VALUE MAP LIST")
wit_types.Redistribution = enum.Enum("Redistribution", "SPLIT UNION")
wit_types.TimeDomain = enum.Enum("TimeDomain", "EVENT_TIME PROCESSING_TIME")
EVENT = wit_types.TimeDomain.EVENT_TIME
PROCESSING = wit_types.TimeDomain.PROCESSING_TIME


class Host:
    """The in-memory host: keyed state by (state, key), declarations,
    timers as ``(key, timestamp, domain)``, the clocks and the counters."""

    def __init__(self):
        self.values = {}
        self.lists = {}
        #: (state, key) -> {repr of the WIT map key: (map key, value)}
        self.maps = {}
        self.operator = {}
        self.declared = []
        self.emitted = []
        #: Writes per keyed-state write call (``write`` or ``write-packed``).
        self.write_calls = []
        #: Every ``write-packed`` buffer.
        self.packed_calls = []
        self.timers = set()
        self.watermark = I64_MIN
        self.processing_time = 0
        self.counters = {}

    def map_state(self, state, key):
        """The WIT entries of map state ``state`` under ``key``, as a list."""
        return list(self.maps.get((state, bytes(key)), {}).values())


HOST = Host()

keyed_state = pytypes.ModuleType("wit_world.imports.keyed_state")
for case in ["ValueSet", "ValueClear", "MapPut", "MapRemove", "MapClear", "ListSet", "ListClear"]:
    setattr(keyed_state, f"Update_{case}", _case(f"Update_{case}"))


@dataclasses.dataclass
class StateWrite:
    state: str
    key: bytes
    update: object


keyed_state.StateWrite = StateWrite


def _declare(entry):
    for d in HOST.declared:
        if d[0] == entry[0] and (d[1] in wit_types.StateKind) == (entry[1] in wit_types.StateKind):
            if d != entry:
                raise Err(f"state `{entry[0]}` is already declared as {d[1:]}, not as {entry[1:]}")
            return
    HOST.declared.append(entry)


keyed_state.declare = lambda state, kind, type_name: _declare((state, kind, type_name))
keyed_state.value_get = lambda state, key: HOST.values.get((state, bytes(key)))
keyed_state.list_get = lambda state, key: HOST.lists.get((state, bytes(key)), [])
keyed_state.map_entries = lambda state, key: HOST.map_state(state, key)


def _write(writes):
    for w in writes:
        at = (w.state, bytes(w.key))
        u = w.update
        if isinstance(u, keyed_state.Update_ValueSet):
            HOST.values[at] = u.value
        elif isinstance(u, keyed_state.Update_ValueClear):
            HOST.values.pop(at, None)
        elif isinstance(u, keyed_state.Update_ListSet):
            HOST.lists[at] = u.value
        elif isinstance(u, keyed_state.Update_ListClear):
            HOST.lists.pop(at, None)
        elif isinstance(u, keyed_state.Update_MapPut):
            HOST.maps.setdefault(at, {})[repr(u.value[0])] = u.value
        elif isinstance(u, keyed_state.Update_MapRemove):
            HOST.maps.get(at, {}).pop(repr(u.value), None)
        elif isinstance(u, keyed_state.Update_MapClear):
            HOST.maps.pop(at, None)
        else:
            raise AssertionError(f"unexpected update {u!r}")


def _counted_write(writes):
    HOST.write_calls.append(len(writes))
    _write(writes)


class Malformed(Exception):
    """A packed write buffer this host refuses (docs/wit.md, "Packed state
    writes"), at byte ``offset``."""

    def __init__(self, offset, problem):
        super().__init__(f"malformed packed state writes at byte {offset}: {problem}")
        self.offset = offset


class _Reader:
    """Reads the packed state-write layout (version 1) as the host does:
    strictly, refusing whatever the layout does not allow, and into the WIT
    values the ``write`` path receives (a scalar at the root as its own
    ``Value`` case, anything else as ``Value_Nested`` pre-order nodes)."""

    MAX_DEPTH = 64

    def __init__(self, buf):
        self.buf = bytes(buf)
        self.pos = 0

    def take(self, n):
        left = len(self.buf) - self.pos
        if n > left:
            raise Malformed(self.pos, f"truncated: need {n} bytes, {left} left")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def bytes(self):
        return self.take(self.u32())

    def text(self):
        at = self.pos
        try:
            return self.bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed(at, "text that is not UTF-8") from None

    def count(self, min_bytes):
        at = self.pos
        n = self.u32()
        left = len(self.buf) - self.pos
        if n * min_bytes > left:
            raise Malformed(at, f"a count of {n} items in {left} bytes")
        return n

    def value(self):
        """One value in canonical form, as a WIT ``value``."""
        at = self.pos
        tag = self.buf[at] if at < len(self.buf) else None
        if tag is not None and 6 <= tag <= 9:
            nodes = []
            self.node(nodes, 1)
            return wit_types.Value_Nested(nodes)
        kind, v = self.scalar()
        return getattr(wit_types, f"Value_{kind}")(v)

    def scalar(self):
        at = self.pos
        tag = self.u8()
        if tag == 0:
            b = self.u8()
            if b > 1:
                raise Malformed(at + 1, f"a boolean of {b}")
            return "Boolean", bool(b)
        if tag == 1:
            return "Int", struct.unpack("<q", self.take(8))[0]
        if tag == 2:
            return "Uint", struct.unpack("<Q", self.take(8))[0]
        if tag == 3:
            return "Float", struct.unpack("<d", self.take(8))[0]
        if tag == 4:
            return "Text", self.text()
        if tag == 5:
            return "Bytes", self.bytes()
        raise Malformed(at, f"unknown value tag {tag}")

    def node(self, nodes, depth):
        """Appends the pre-order nodes of one value at nesting ``depth``."""
        if depth > self.MAX_DEPTH:
            raise Malformed(self.pos, "a value nested too deep")
        at = self.pos
        tag = self.buf[at] if at < len(self.buf) else None
        if tag == 6:
            self.pos += 1
            nodes.append(wit_types.Node_None_())
        elif tag == 7:
            self.pos += 1
            n = self.count(1)
            nodes.append(wit_types.Node_List(n))
            for _ in range(n):
                self.node(nodes, depth + 1)
        elif tag == 8:
            self.pos += 1
            n = self.count(2)
            nodes.append(wit_types.Node_Map(n))
            for _ in range(2 * n):
                self.node(nodes, depth + 1)
        elif tag == 9:
            self.pos += 1
            n = self.count(5)
            names = []
            nodes.append(wit_types.Node_Record(names))
            for _ in range(n):
                names.append(self.text())
                self.node(nodes, depth + 1)
        else:
            kind, v = self.scalar()
            nodes.append(getattr(wit_types, f"Node_{kind}")(v))

    def writes(self):
        """Yields the writes of the buffer one by one, as the ``StateWrite``s
        ``write`` takes."""
        state = None
        while self.pos < len(self.buf):
            at = self.pos
            op = self.u8()
            if op == 1:
                state = self.text()
                continue
            if not 2 <= op <= 8:
                raise Malformed(at, f"unknown op {op:#04x}")
            if state is None:
                raise Malformed(at, "a write before any `state` op")
            key = self.bytes()
            if op == 2:
                update = keyed_state.Update_ValueSet(self.value())
            elif op == 3:
                update = keyed_state.Update_ValueClear()
            elif op == 4:
                update = keyed_state.Update_MapPut((self.value(), self.value()))
            elif op == 5:
                update = keyed_state.Update_MapRemove(self.value())
            elif op == 6:
                update = keyed_state.Update_MapClear()
            elif op == 7:
                update = keyed_state.Update_ListSet([self.value() for _ in range(self.count(1))])
            else:
                update = keyed_state.Update_ListClear()
            yield StateWrite(state, key, update)


def unpack_writes(buf):
    """The writes of a packed buffer as a list of ``StateWrite``s
    (:class:`Malformed` if the host would refuse it)."""
    return list(_Reader(buf).writes())


def _write_packed(buf):
    """``keyed-state.write-packed``: applies the writes in order; those
    before a fault stay applied, as on the host."""
    if not isinstance(buf, bytes):
        raise TypeError(f"list<u8> lowers from bytes, not {type(buf).__name__}")
    HOST.packed_calls.append(buf)
    applied = 0
    try:
        for w in _Reader(buf).writes():
            _write([w])
            applied += 1
    except Malformed as e:
        raise Err(str(e)) from None
    finally:
        HOST.write_calls.append(applied)


keyed_state.write = _counted_write
keyed_state.write_packed = _write_packed

operator_state = pytypes.ModuleType("wit_world.imports.operator_state")
operator_state.declare = lambda state, mode, type_name: _declare((state, mode, type_name))
operator_state.get = lambda state: HOST.operator.get(state, [])
operator_state.replace = lambda state, values: HOST.operator.__setitem__(state, values)

output = pytypes.ModuleType("wit_world.imports.output")
output.emit = lambda batch: HOST.emitted.append(bytes(batch))
logging = pytypes.ModuleType("wit_world.imports.logging")
logging.log = lambda level, message: None


def _timer(key, timestamp, domain):
    if not isinstance(key, bytes) or type(timestamp) is not int or not I64_MIN <= timestamp <= I64_MAX:
        raise TypeError(f"timer ({key!r}, {timestamp!r}) does not lower to (list<u8>, s64)")
    if domain not in wit_types.TimeDomain:
        raise TypeError(f"not a time domain: {domain!r}")
    return (key, timestamp, domain)


timers = pytypes.ModuleType("wit_world.imports.timers")
timers.register = lambda key, timestamp, domain: HOST.timers.add(_timer(key, timestamp, domain))
timers.delete = lambda key, timestamp, domain: HOST.timers.discard(_timer(key, timestamp, domain))
timers.current_watermark = lambda: HOST.watermark
timers.current_processing_time = lambda: HOST.processing_time


def _counter_add(name, delta):
    HOST.counters[name] = HOST.counters.get(name, 0) + delta


metrics = pytypes.ModuleType("wit_world.imports.metrics")
metrics.counter_add = _counter_add

imports = pytypes.ModuleType("wit_world.imports")
for name, module in [("types", wit_types), ("keyed_state", keyed_state), ("operator_state", operator_state),
                     ("output", output), ("logging", logging), ("timers", timers), ("metrics", metrics)]:
    setattr(imports, name, module)
    sys.modules[f"wit_world.imports.{name}"] = module
wit_world = pytypes.ModuleType("wit_world")
wit_world.imports = imports
wit_world.exports = pytypes.SimpleNamespace(Operator=object)
sys.modules.update({"wit_world": wit_world, "wit_world.imports": imports})
sys.modules["componentize_py_types"] = pytypes.SimpleNamespace(Err=Err)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import weir  # noqa: E402


def _bytes(v):
    return v.encode() if isinstance(v, str) else v


def batch(*records):
    """Packs records (docs/wit.md, packed batch): ``(key, value)`` or
    ``(key, value, timestamp)`` tuples, key and value ``str`` or ``bytes``,
    key or timestamp ``None`` for none."""
    out = bytearray()
    for record in records:
        key, value, timestamp = (*record, None)[:3]
        key, value = _bytes(key), _bytes(value)
        out.append((1 if key is not None else 0) | (2 if timestamp is not None else 0))
        if timestamp is not None:
            out += struct.pack("<q", timestamp)
        if key is not None:
            out += struct.pack("<I", len(key)) + key
        out += struct.pack("<I", len(value)) + value
    return bytes(out)


def context(config=""):
    return pytypes.SimpleNamespace(uid="test", config=config, subtask_index=0, parallelism=1,
                                   max_parallelism=128, attempt_number=0)


def reset():
    """Empties the host and the SDK's registries, for a new operator."""
    HOST.__init__()
    weir._Registry.states.clear()
    weir._Registry.key = None
    weir._Registry.watermark = None
    weir._counters.clear()


def emitted(clear=False):
    """Every record emitted so far as ``(key, value, timestamp)``, key and
    value decoded as UTF-8."""
    records = [(None if r.key is None else r.key.decode(), r.value.decode(), r.timestamp)
               for b in HOST.emitted for r in weir._decode(b)]
    if clear:
        HOST.emitted.clear()
    return records


class Harness:
    """Opens ``operator_class`` (exported with ``weir.export``) against the
    fake host, resetting it first, and calls its hooks as the host does.
    A hook's error is raised as :class:`Err`."""

    def __init__(self, operator_class, config=""):
        reset()
        self.op = weir.export(operator_class)()
        self.op.open(context(config))

    def process(self, *records):
        """One ``process`` call with ``records`` (as :func:`batch` takes)."""
        self.op.process(batch(*records))
        self._fire_processing_time()

    def watermark(self, watermark):
        """Advances the watermark: fires every event-time timer at or before
        it, in timestamp order (then key order), then ``on_watermark``. A
        timer registered at or before it while they fire waits for the next
        watermark, as the host does."""
        if watermark < HOST.watermark:
            raise ValueError(f"watermark {watermark} is behind {HOST.watermark}")
        HOST.watermark = watermark
        self._fire(EVENT, watermark)
        self.op.on_watermark(watermark)
        self._fire_processing_time()

    def advance_processing_time(self, now):
        """Sets the host's clock to ``now`` and fires the processing-time
        timers it reached."""
        if now < HOST.processing_time:
            raise ValueError(f"processing time {now} is behind {HOST.processing_time}")
        HOST.processing_time = now
        self._fire_processing_time()

    def snapshot(self, checkpoint_id=1):
        self.op.snapshot(checkpoint_id)

    def close(self):
        self.op.close()

    def finish(self):
        """End of input: the watermark becomes ``2**63 - 1``, then ``close``."""
        self.watermark(I64_MAX)
        self.close()

    def take(self):
        """The records emitted since the last ``take``, as :func:`emitted`."""
        return emitted(clear=True)

    def timers(self, domain=EVENT):
        """The registered timers of ``domain`` as sorted ``(key, timestamp)``."""
        return sorted((k.decode(), t) for k, t, d in HOST.timers if d is domain)

    def _fire(self, domain, upto):
        due = sorted((t for t in HOST.timers if t[2] is domain and t[1] <= upto), key=lambda t: (t[1], t[0]))
        for timer in due:
            if timer in HOST.timers:  # not deleted by an earlier one
                HOST.timers.discard(timer)
                self.op.on_timer(*timer)
        return bool(due)

    def _fire_processing_time(self):
        while self._fire(PROCESSING, HOST.processing_time):
            pass
