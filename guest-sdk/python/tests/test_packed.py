"""The SDK's flush through ``keyed-state.write-packed`` (docs/wit.md,
"Packed state writes"): every value the ``write`` path took is packed to
the value it stored, a ``state`` op starts each run of one state, big
flushes are chunked, and the bytes match the golden buffer that
``host/format/src/writes.rs`` and ``guest-sdk/js/test/weir.test.mjs`` check.
Run with ``python3 -m unittest discover -s guest-sdk/python/tests``."""

import dataclasses
import enum
import math
import struct
import unittest

from fakehost import HOST, Err, Malformed, _Reader, batch, context, reset, unpack_writes, weir, wit_types

#: The writes of `golden_operator`, packed by hand from the layout and
#: checked against `weir_format::writes::WritesWriter` in Rust.
GOLDEN = "".join([
    "0105000000636f756e74",                    # state "count"
    "02010000006101feffffffffffffff",          # value-set "a" int -2
    "030100000062",                            # value-clear "b"
    "010400000074616773",                      # state "tags"
    "0401000000610401000000780902000000010000006e020000000000000080020000006f6b0001",
    #   map-put "a": text "x" -> record {n: uint 2**63, ok: true}
    "050100000061010700000000000000",          # map-remove "a": int 7
    "060100000063",                            # map-clear "c"
    "01040000007365656e",                      # state "seen"
    "0701000000610500000003000000000000f83f06050200000000ff07010000000402000000c3a9"
    "080100000001010000000000000004030000006f6e65",
    #   list-set "a": [1.5, none, bytes 00ff, ["é"], {1: "one"}]
    "080100000064",                            # list-clear "d"
])


@dataclasses.dataclass
class Point:
    x: int = 1
    label: str = "p"


class Colour(enum.IntEnum):
    RED = 3


class Name(str):
    def __str__(self):
        return "not the value"


def deep(levels):
    """A value nested ``levels`` levels deep, its root included."""
    v = None
    for _ in range(levels - 1):
        v = [v]
    return v


#: Every kind of value the SDK stores, and odd members of each.
VALUES = [
    True, False, 0, 7, -1, weir._I64_MIN, weir._I64_MAX, weir._I64_MAX + 1, weir._U64_MAX,
    1.5, -0.0, float("inf"), 1e-310, "", "text", "é and 😀", b"", b"\x00\xff", bytearray(b"ba"),
    None, [], [1, "a", None], (2, 3.5), {}, {"count": 3, "tags": ["a"]}, {1: "one", "two": 2},
    {(1, 2): [None], 3: {}}, {"inner": {"empty": {}, "none": None}}, Point(), [Point(2, "q")],
    Colour.RED, Name("n"), deep(64),
]


def exact(w):
    """A WIT value (or a list of them) to compare exactly: case names,
    floats by their bits (-0.0 is not 0.0), subclasses as their base."""
    if isinstance(w, list):
        return [exact(x) for x in w]
    if isinstance(w, tuple):
        return tuple(exact(x) for x in w)
    if not hasattr(w, "value"):
        return w  # a record's field name
    v = w.value
    if isinstance(v, float):
        v = struct.pack("<d", v)
    elif isinstance(v, (list, tuple)):
        v = exact(v)
    elif isinstance(v, bool) or v is None:
        pass
    elif isinstance(v, int):
        v = ("int", int.__index__(v))
    elif isinstance(v, str):
        v = ("str", str.__str__(v))
    elif isinstance(v, (bytes, bytearray)):
        v = ("bytes", bytes(v))
    return type(w).__name__, v


def plain(v):
    """``v`` as it reads back: tuples as lists, dataclasses as dicts."""
    if dataclasses.is_dataclass(v):
        v = dataclasses.asdict(v)
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def packed(v):
    buf = bytearray()
    weir._put(buf, v)
    return bytes(buf)


def read_value(buf):
    r = _Reader(buf)
    value = r.value()
    assert r.pos == len(buf), f"{len(buf) - r.pos} bytes after the value"
    return value


def golden_operator():
    """Writes the golden buffer's writes in one flush, for records keyed
    a, b, c and d in that order."""

    class Golden(weir.Operator):
        def open(self, ctx):
            self.count = weir.ValueState("count")
            self.tags = weir.MapState("tags")
            self.seen = weir.ListState("seen")

        def process(self, record, out):
            k = record.key
            if k == b"a":
                self.count.set(-2)
                self.tags.put("x", {"n": 2**63, "ok": True})
                self.tags.remove(7)
                self.seen.set([1.5, None, b"\x00\xff", ["é"], {1: "one"}])
            elif k == b"b":
                self.count.clear()
            elif k == b"c":
                self.tags.clear()
            else:
                self.seen.clear()

    return Golden


def storing(values):
    """An operator that stores ``values[int(record.value)]`` in a value
    state, as a map entry (key and value) and in a list."""

    class Store(weir.Operator):
        def open(self, ctx):
            self.v = weir.ValueState("v")
            self.m = weir.MapState("m")
            self.l = weir.ListState("l")

        def process(self, record, out):
            v = values[int(record.value)]
            self.v.set(v)
            self.m.put(v if _hashable(v) else "unhashable", v)
            self.l.set([v, v])

    return weir.export(Store)()


def _hashable(v):
    try:
        hash(v)
    except TypeError:
        return False
    return True


class Values(unittest.TestCase):
    def setUp(self):
        reset()

    def assert_same(self, got, want, what):
        self.assertEqual(exact(got), exact(want), what)

    def test_every_value_kind_packs_to_what_the_write_path_stored(self):
        for v in VALUES:
            self.assert_same(read_value(packed(v)), weir._to_value(v), repr(v)[:60])

    def test_a_nan_keeps_its_bits(self):
        got = read_value(packed(math.nan))
        self.assertIsInstance(got, wit_types.Value_Float)
        self.assertTrue(math.isnan(got.value))
        self.assertEqual(packed(math.nan)[1:], struct.pack("<d", math.nan))

    def test_values_stored_through_every_state_kind_read_back_as_written(self):
        op = storing(VALUES)
        op.open(context())
        op.process(batch(*[(b"k%d" % i, str(i)) for i in range(len(VALUES))]))
        op.snapshot(1)
        self.assertEqual(len(HOST.packed_calls), 1, "one buffer for the whole flush")
        for i, v in enumerate(VALUES):
            key = b"k%d" % i
            want = weir._to_value(v)
            what = repr(v)[:60]
            if v is None:
                self.assertNotIn(("v", key), HOST.values, "set(None) clears")
            else:
                self.assert_same(HOST.values[("v", key)], want, what)
            self.assert_same(HOST.lists[("l", key)], [want, want], what)
            map_key = weir._to_value(v if _hashable(v) else "unhashable")
            self.assert_same(HOST.map_state("m", key), [(map_key, want)], what)

        # And a fresh operator reads them back as the values written.
        reset_states()
        read = []

        class Read(weir.Operator):
            def open(self, ctx):
                self.v = weir.ValueState("v")

            def process(self, record, out):
                read.append(self.v.get())

        reader = weir.export(Read)()
        reader.open(context())
        reader.process(batch(*[(b"k%d" % i, "") for i in range(len(VALUES))]))
        self.assertEqual(read, [plain(v) for v in VALUES])

    def test_values_the_host_cannot_store_are_refused_at_the_call(self):
        for bad, error in [
            (2**64, OverflowError), (weir._I64_MIN - 1, OverflowError), ([1, {"big": -2**64}], OverflowError),
            (object(), TypeError), ({1, 2}, TypeError), (deep(65), ValueError),
        ]:
            with self.assertRaises(error, msg=repr(bad)[:60]):
                weir._put(bytearray(), bad)
            with self.assertRaises(error, msg=repr(bad)[:60]):
                weir._check(bad)
        # 64 levels, as the host takes; 65 are too deep for it too.
        self.assertEqual(read_value(packed(deep(64))), weir._to_value(deep(64)))
        buf = bytes([7, 1, 0, 0, 0]) * 64 + bytes([6])
        with self.assertRaisesRegex(Malformed, "at byte 320: a value nested too deep"):
            read_value(buf)


def reset_states():
    """A new instance: declarations and handles start afresh, the host's
    state stays."""
    weir._Registry.states.clear()
    HOST.declared.clear()
    HOST.packed_calls.clear()
    HOST.write_calls.clear()


_OP_NAMES = {2: "value-set", 3: "value-clear", 4: "map-put", 5: "map-remove", 6: "map-clear",
             7: "list-set", 8: "list-clear"}


def walk(buf):
    """Yields each op of a packed buffer as ``("state", name)`` or ``(op,
    key)``, and the offset after it."""
    r = _Reader(buf)
    while r.pos < len(buf):
        op = r.u8()
        if op == 1:
            yield ("state", r.text()), r.pos
            continue
        key = r.bytes().decode()
        for _ in range({2: 1, 4: 2, 5: 1}.get(op, 0)):
            r.value()
        if op == 7:
            for _ in range(r.count(1)):
                r.value()
        yield (_OP_NAMES[op], key), r.pos


def ops(buf):
    """The ops of a packed buffer, as :func:`walk` names them."""
    return [op for op, _ in walk(buf)]


class States(unittest.TestCase):
    def setUp(self):
        reset()

    def test_the_golden_buffer(self):
        op = weir.export(golden_operator())()
        op.open(context())
        op.process(batch(*[(k, "") for k in "abcd"]))
        op.snapshot(1)
        self.assertEqual([b.hex() for b in HOST.packed_calls], [GOLDEN])
        self.assertEqual(HOST.write_calls, [7])

    def test_a_state_op_starts_each_run_of_one_state(self):
        op = weir.export(golden_operator())()
        op.open(context())
        op.process(batch(*[(k, "") for k in "abcd"]))
        op.snapshot(1)
        self.assertEqual(ops(HOST.packed_calls[0]), [
            ("state", "count"), ("value-set", "a"), ("value-clear", "b"),
            ("state", "tags"), ("map-put", "a"), ("map-remove", "a"), ("map-clear", "c"),
            ("state", "seen"), ("list-set", "a"), ("list-clear", "d"),
        ])
        # Each write reached the state its run names.
        self.assertEqual(HOST.values, {("count", b"a"): wit_types.Value_Int(-2)})
        self.assertEqual([k for k, _ in HOST.map_state("tags", b"a")], [wit_types.Value_Text("x")])
        self.assertEqual(HOST.lists[("seen", b"a")][0], wit_types.Value_Float(1.5))
        self.assertNotIn(("seen", b"d"), HOST.lists)

    def test_keys_are_written_in_the_order_they_changed(self):
        class Count(weir.Operator):
            def open(self, ctx):
                self.a = weir.ValueState("a")
                self.b = weir.ValueState("b")

            def process(self, record, out):
                (self.a if record.value == b"a" else self.b).set(1)

        op = weir.export(Count)()
        op.open(context())
        keys = ["k%d" % i for i in range(50, 0, -1)]
        op.process(batch(*[(k, "ab"[i % 2]) for i, k in enumerate(keys)]))
        op.snapshot(1)
        got = ops(HOST.packed_calls[0])
        self.assertEqual([name for kind, name in got if kind == "state"], ["a", "b"], "one run per state")
        self.assertEqual([k for kind, k in got if kind != "state"], keys[0::2] + keys[1::2])

    def test_a_host_error_fails_the_hook_with_its_message(self):
        def refuse(buf):
            raise Err("state `count` is a value state, not a map state")

        packed_write = weir.keyed_state.write_packed
        weir.keyed_state.write_packed = refuse
        try:
            op = weir.export(golden_operator())()
            op.open(context())
            op.process(batch(("a", "")))
            with self.assertRaisesRegex(Err, "is a value state, not a map state"):
                op.snapshot(1)
        finally:
            weir.keyed_state.write_packed = packed_write


class Chunks(unittest.TestCase):
    def setUp(self):
        reset()
        self.saved = weir.WRITE_CHUNK, weir.WRITE_BYTES, weir.DIRTY_LIMIT
        weir.DIRTY_LIMIT = None

    def tearDown(self):
        weir.WRITE_CHUNK, weir.WRITE_BYTES, weir.DIRTY_LIMIT = self.saved

    def two_states(self, value):
        class Two(weir.Operator):
            def open(self, ctx):
                self.a = weir.ValueState("a")
                self.b = weir.ListState("b")

            def process(self, record, out):
                self.a.set(value)
                self.b.set([value])

        op = weir.export(Two)()
        op.open(context())
        return op

    def test_a_flush_of_more_writes_than_a_chunk_is_sent_in_chunks(self):
        weir.WRITE_CHUNK = 64
        op = self.two_states(7)
        op.process(batch(*[("k%03d" % i, "") for i in range(100)]))
        op.snapshot(1)
        self.assertEqual(HOST.write_calls, [64, 64, 64, 8])
        # Every buffer stands alone: it names its state before its first
        # write (the decoder refuses a write before a `state` op).
        self.assertEqual([ops(b)[0] for b in HOST.packed_calls],
                         [("state", "a"), ("state", "a"), ("state", "b"), ("state", "b")])
        self.assertEqual([sum(1 for o in ops(b) if o[0] == "state") for b in HOST.packed_calls], [1, 2, 1, 1])
        for i in range(100):
            self.assertEqual(HOST.values[("a", b"k%03d" % i)], wit_types.Value_Int(7))
            self.assertEqual(HOST.lists[("b", b"k%03d" % i)], [wit_types.Value_Int(7)])
        op.snapshot(2)
        self.assertEqual(len(HOST.write_calls), 4, "nothing left to write")

    def test_a_buffer_is_sent_once_it_reaches_the_byte_bound(self):
        weir.WRITE_BYTES = 1000
        text = "x" * 300
        op = self.two_states(text)
        op.process(batch(*[("k%d" % i, "") for i in range(10)]))
        op.close()
        # A write is 1 + 4 + 2 + 1 + 4 + 300 = 312 bytes (a list-set 4
        # more): a buffer takes writes while it holds less than 1000 bytes.
        self.assertEqual(sum(HOST.write_calls), 20)
        self.assertTrue(all(n == 4 for n in HOST.write_calls[:-1]), HOST.write_calls)
        for b in HOST.packed_calls[:-1]:
            self.assertGreaterEqual(len(b), 1000)
            self.assertLess(len(b), 1000 + 320)
        self.assertEqual(HOST.values[("a", b"k9")], wit_types.Value_Text(text))

    def test_the_default_chunk_holds_65536_writes(self):
        op = self.two_states(1)
        op.process(batch(*[("k%d" % i, "") for i in range(40_000)]))
        op.snapshot(1)
        self.assertEqual(HOST.write_calls, [65_536, 80_000 - 65_536])


class FakeHost(unittest.TestCase):
    """The fake host's reader refuses what the host refuses, so the tests
    above would catch a malformed buffer."""

    def refused(self, buf):
        with self.assertRaises(Malformed) as e:
            unpack_writes(bytes(buf))
        return str(e.exception)

    def test_malformed_buffers_are_refused_at_their_offset(self):
        head = bytes([1, 1, 0, 0, 0]) + b"s" + bytes([2, 0, 0, 0, 0])
        self.assertEqual(self.refused([9]), "malformed packed state writes at byte 0: unknown op 0x09")
        self.assertIn("a write before any `state` op", self.refused([3, 0, 0, 0, 0]))
        self.assertIn("at byte 1: text that is not UTF-8", self.refused([1, 1, 0, 0, 0, 0xFF]))
        self.assertIn("at byte 12: a boolean of 2", self.refused(head + bytes([0, 2])))
        self.assertIn("unknown value tag 10", self.refused(head + bytes([10])))
        self.assertIn("a count of 4294967295 items", self.refused(head + bytes([7, 255, 255, 255, 255])))
        full = bytes.fromhex(GOLDEN)
        self.assertEqual(len(unpack_writes(full)), 7)
        # A cut is refused as truncated unless it falls between two ops.
        between = {end for _, end in walk(full)}
        for cut in range(1, len(full)):
            try:
                unpack_writes(full[:cut])
            except Malformed as e:
                self.assertRegex(str(e), "truncated|a count of", cut)
                self.assertNotIn(cut, between)
            else:
                self.assertIn(cut, between)

    def test_a_refused_buffer_keeps_the_writes_before_the_fault(self):
        reset()
        good = bytes.fromhex(GOLDEN)[:31]  # state "count", value-set, value-clear
        with self.assertRaisesRegex(Err, "at byte 31: unknown op 0x7f"):
            weir.keyed_state.write_packed(good + bytes([0x7F]))
        self.assertEqual(HOST.values, {("count", b"a"): wit_types.Value_Int(-2)})
        self.assertEqual(HOST.write_calls, [2])


if __name__ == "__main__":
    unittest.main()
