"""Unit tests of the Python SDK (``weir``) outside WebAssembly.

componentize-py generates ``wit_world`` and ``componentize_py_types`` only
when it builds a component, so this file installs small in-memory stand-ins
for them (the WIT types as plain classes, the imports as a dict-backed host)
before importing ``weir``. Run with ``python3 -m unittest discover -s
guest-sdk/python/tests``; ``cargo test -p weir --test e2e python_sdk`` runs it
too.
"""

import dataclasses
import enum
import struct
import sys
import types as pytypes
import typing
import unittest
from pathlib import Path


class Err(Exception):
    """componentize-py's error result: ``.value`` is the error."""

    def __init__(self, value):
        super().__init__(value)
        self.value = value


def _case(name, has_value=True):
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


class Host:
    """The in-memory host: keyed state by (state, key), declarations."""

    def __init__(self):
        self.values = {}
        self.lists = {}
        self.maps = {}
        self.operator = {}
        self.declared = []
        self.emitted = []
        self.write_calls = []


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
keyed_state.map_entries = lambda state, key: list(HOST.maps.get((state, bytes(key)), {}).items())


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
        else:
            raise AssertionError(f"unexpected update {u!r}")


def _counted_write(writes):
    HOST.write_calls.append(len(writes))
    _write(writes)


keyed_state.write = _counted_write

operator_state = pytypes.ModuleType("wit_world.imports.operator_state")
operator_state.declare = lambda state, mode, type_name: _declare((state, mode, type_name))
operator_state.get = lambda state: HOST.operator.get(state, [])
operator_state.replace = lambda state, values: HOST.operator.__setitem__(state, values)

output = pytypes.ModuleType("wit_world.imports.output")
output.emit = lambda batch: HOST.emitted.append(bytes(batch))
logging = pytypes.ModuleType("wit_world.imports.logging")
logging.log = lambda level, message: None

imports = pytypes.ModuleType("wit_world.imports")
for name, module in [("types", wit_types), ("keyed_state", keyed_state),
                     ("operator_state", operator_state), ("output", output), ("logging", logging)]:
    setattr(imports, name, module)
    sys.modules[f"wit_world.imports.{name}"] = module
wit_world = pytypes.ModuleType("wit_world")
wit_world.imports = imports
wit_world.exports = pytypes.SimpleNamespace(Operator=object)
sys.modules.update({"wit_world": wit_world, "wit_world.imports": imports})
sys.modules["componentize_py_types"] = pytypes.SimpleNamespace(Err=Err)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import weir  # noqa: E402


def batch(*records):
    """Packs ``(key, value)`` pairs (docs/wit.md, packed batch)."""
    out = bytearray()
    for key, value in records:
        out.append(1)
        out += struct.pack("<I", len(key)) + key
        out += struct.pack("<I", len(value)) + value
    return bytes(out)


def context():
    return pytypes.SimpleNamespace(uid="test", config="", subtask_index=0, parallelism=1,
                                   max_parallelism=128, attempt_number=0)


@dataclasses.dataclass
class StatsV1:
    count: int = 0


@dataclasses.dataclass
class StatsV2:
    count: int = 0
    avg: float = 1.5
    tags: typing.List[str] = dataclasses.field(default_factory=list)
    best: typing.Optional[str] = None


def counting(stats_type):
    """An operator counting records per key in a typed value state."""

    class Count(weir.Operator):
        def open(self, ctx):
            self.stats = weir.ValueState("stats", type=stats_type)
            self.seen = weir.ListState("seen", type=str)
            self.totals = weir.MapState("totals")
            self.ids = weir.OperatorListState("ids", type=int, redistribution="union")

        def process(self, record, out):
            s = self.stats.get(stats_type())
            s.count += 1
            self.stats.set(s)
            out.emit(record.key, str(s.count).encode())

    return weir.export(Count)()


def reset():
    global HOST
    HOST.__init__()
    weir._Registry.states.clear()


class Declarations(unittest.TestCase):
    def setUp(self):
        reset()

    def test_opening_declares_every_state_with_its_kind_and_type(self):
        counting(StatsV2).open(context())
        self.assertEqual(HOST.declared, [
            ("stats", wit_types.StateKind.VALUE,
             "record{count: int, avg: float, tags: list<text>, best: option<text>}"),
            ("seen", wit_types.StateKind.LIST, "list<text>"),
            ("totals", wit_types.StateKind.MAP, None),
            ("ids", wit_types.Redistribution.UNION, "list<int>"),
        ])

    def test_describe_maps_python_types_to_descriptors(self):
        self.assertEqual(weir.describe(bool), "bool")
        self.assertEqual(weir.describe(bytes), "bytes")
        self.assertEqual(weir.describe(typing.Dict[str, typing.List[float]]), "map<text, list<float>>")
        self.assertEqual(weir.describe(dict[int, str]), "map<int, text>")
        self.assertEqual(weir.describe(object), "any")

    def test_a_refused_declaration_fails_with_the_state_name(self):
        weir.OperatorListState("ids")
        weir._Registry.states.clear()
        with self.assertRaisesRegex(ValueError, "declaring state `ids`: .*already declared"):
            weir.OperatorListState("ids", redistribution="union")
        with self.assertRaisesRegex(ValueError, "'split' or 'union'"):
            weir.OperatorListState("other", redistribution="broadcast")


class SchemaEvolution(unittest.TestCase):
    def setUp(self):
        reset()

    def test_a_dataclass_that_gained_fields_reads_what_v1_wrote(self):
        v1 = counting(StatsV1)
        v1.open(context())
        v1.process(batch((b"a", b"x"), (b"a", b"y")))
        v1.close()
        written = HOST.values[("stats", b"a")]
        self.assertEqual(written, wit_types.Value_Nested(
            [wit_types.Node_Record(["count"]), wit_types.Node_Int(2)]))

        # The same stored value, read by v2 (a new instance: declarations
        # start afresh; the host kept the state).
        weir._Registry.states.clear()
        HOST.declared.clear()
        v2 = counting(StatsV2)
        v2.open(context())
        v2.process(batch((b"a", b"z")))
        v2.close()
        # v2 read count 2 and the defaults for the fields v1 lacked.
        nodes = HOST.values[("stats", b"a")].value
        self.assertEqual(nodes[0], wit_types.Node_Record(["count", "avg", "tags", "best"]))
        self.assertEqual(nodes[1:], [wit_types.Node_Int(3), wit_types.Node_Float(1.5),
                                     wit_types.Node_List(0), wit_types.Node_None_()])

    def test_fields_the_dataclass_no_longer_has_are_ignored(self):
        HOST.values[("stats", b"a")] = wit_types.Value_Nested([
            wit_types.Node_Record(["count", "removed"]), wit_types.Node_Int(7),
            wit_types.Node_Text("gone")])
        v1 = counting(StatsV1)
        v1.open(context())
        v1.process(batch((b"a", b"x")))
        v1.close()
        self.assertEqual(HOST.values[("stats", b"a")], wit_types.Value_Nested(
            [wit_types.Node_Record(["count"]), wit_types.Node_Int(8)]))


def reading_every_key_writing_some(written):
    """An operator that reads the count of every record's key and adds one
    only for keys in ``written``; it sets the count it read back unchanged
    for other odd keys, and only reads the even ones."""

    class Count(weir.Operator):
        def open(self, ctx):
            self.count = weir.ValueState("count")

        def process(self, record, out):
            n = self.count.get(0)
            if record.key in written:
                self.count.set(n + 1)
            elif int(record.key[1:]) % 2:
                self.count.set(n)  # unchanged: stays clean
            # else: only read

    return weir.export(Count)()


class Flushes(unittest.TestCase):
    def setUp(self):
        reset()

    def restored(self, keys):
        for i in range(keys):
            HOST.values[("count", b"k%d" % i)] = wit_types.Value_Int(i)

    def test_a_restored_entry_read_but_not_written_is_not_flushed(self):
        self.restored(1000)
        op = reading_every_key_writing_some({b"k7", b"k900"})
        op.open(context())
        op.process(batch(*[(b"k%d" % i, b"x") for i in range(1000)]))
        op.snapshot(1)
        self.assertEqual(HOST.write_calls, [2], "only the two written keys, in one call")
        self.assertEqual(HOST.values[("count", b"k7")], wit_types.Value_Int(8))
        self.assertEqual(HOST.values[("count", b"k900")], wit_types.Value_Int(901))
        # Flushed entries are clean: the next snapshot writes nothing.
        op.snapshot(2)
        self.assertEqual(HOST.write_calls, [2])

    def test_many_dirty_keys_are_flushed_after_process_in_big_batches(self):
        limit, chunk = weir.DIRTY_LIMIT, weir.WRITE_CHUNK
        weir.DIRTY_LIMIT, weir.WRITE_CHUNK = 100, 64
        try:
            op = reading_every_key_writing_some({b"k%d" % i for i in range(150)})
            op.open(context())
            op.process(batch(*[(b"k%d" % i, b"x") for i in range(90)]))
            self.assertEqual(HOST.write_calls, [], "under the limit: kept dirty")
            op.process(batch(*[(b"k%d" % i, b"x") for i in range(90, 150)]))
            self.assertEqual(HOST.write_calls, [64, 64, 22], "over it: flushed in chunks")
            op.snapshot(1)
            self.assertEqual(HOST.write_calls, [64, 64, 22], "nothing left for the snapshot")
        finally:
            weir.DIRTY_LIMIT, weir.WRITE_CHUNK = limit, chunk
        self.assertEqual(HOST.values[("count", b"k149")], wit_types.Value_Int(1))


if __name__ == "__main__":
    unittest.main()
