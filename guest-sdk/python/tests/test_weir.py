"""Unit tests of the Python SDK (``weir``) outside WebAssembly, against the
fake host in ``fakehost.py`` (stand-ins for the bindings componentize-py
generates). Run with ``python3 -m unittest discover -s
guest-sdk/python/tests``; ``cargo test -p weir --test e2e python_sdk`` runs it
too.
"""

import dataclasses
import typing
import unittest

from fakehost import HOST, batch, context, reset, weir, wit_types


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
