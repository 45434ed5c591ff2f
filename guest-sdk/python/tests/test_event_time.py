"""Event time in the Python SDK: timers, watermarks, metrics and windows
(docs/sdk.md, "Event time"), against the fake host's :class:`Harness`.
Run with ``python3 -m unittest discover -s guest-sdk/python/tests``."""

import importlib.util
import json
import sys
import unittest
from pathlib import Path

from fakehost import EVENT, HOST, I64_MAX, I64_MIN, PROCESSING, Err, Harness, weir, wit_types

N = wit_types


class Count:
    """A count aggregate; results read ``key,start,end,count``."""

    def create(self):
        return 0

    def add(self, acc, record):
        return acc + 1

    def merge(self, a, b):
        return a + b

    def result(self, key, window, acc):
        return f"{key.decode()},{window.start},{window.end},{acc}"


def windowed(assigner, allowed_lateness=0, on_late=None):
    return lambda: weir.WindowOperator(assigner, Count(), allowed_lateness=allowed_lateness, on_late=on_late)


def window_state(key):
    """The host's `windows` map of ``key`` as {start: (end, acc)}, checking
    the layout every SDK shares."""
    out = {}
    for k, v in HOST.map_state("windows", key.encode()):
        assert isinstance(k, N.Value_Int), k
        assert isinstance(v, N.Value_Nested), v
        record, end, acc = v.value
        assert record == N.Node_Record(["end", "acc"]) and isinstance(end, N.Node_Int), v
        out[k.value] = (end.value, acc.value)
    return out


class Timers(unittest.TestCase):
    def test_event_time_timers_fire_in_order_scoped_to_their_key_before_on_watermark(self):
        seen = []

        class Op(weir.Operator):
            def open(self, ctx):
                self.count = weir.ValueState("count")

            def process(self, record, out):
                self.count.set(self.count.get(0) + 1)
                weir.register_event_time_timer(int(record.value_str()))

            def on_timer(self, timer, out):
                seen.append((timer, weir.current_watermark()))
                # State and emits are the timer's key's; the emit carries
                # the timer's timestamp.
                out.emit(timer.key, str(self.count.get()))
                self.count.clear()

            def on_watermark(self, watermark, out):
                seen.append(("watermark", watermark))
                out.emit(None, f"wm {watermark}")

        h = Harness(Op)
        h.process(("a", "20", 1), ("b", "10", 2), ("a", "10", 3), ("a", "20", 4), ("c", "99", 5))
        self.assertEqual(h.timers(), [("a", 10), ("a", 20), ("b", 10), ("c", 99)])
        h.watermark(20)
        self.assertEqual(seen, [
            (weir.Timer(b"a", 10, "event-time"), 20),
            (weir.Timer(b"b", 10, "event-time"), 20),
            (weir.Timer(b"a", 20, "event-time"), 20),
            ("watermark", 20),
        ])
        self.assertEqual(h.take(), [("a", "3", 10), ("b", "1", 10), ("a", "None", 20), (None, "wm 20", None)])
        self.assertEqual(h.timers(), [("c", 99)])
        # The writes of on_timer reach the host at the snapshot.
        h.snapshot()
        self.assertNotIn(("count", b"a"), HOST.values)
        self.assertNotIn(("count", b"b"), HOST.values)
        self.assertEqual(HOST.values[("count", b"c")], N.Value_Int(1))

    def test_processing_time_timers_deletion_and_clocks(self):
        class Op(weir.Operator):
            def process(self, record, out):
                cmd, _, at = record.value_str().partition(" ")
                if cmd == "now":
                    out.emit(record.key, f"{weir.current_processing_time()} {weir.current_watermark()}")
                elif cmd == "in":
                    weir.register_processing_time_timer(weir.current_processing_time() + int(at))
                elif cmd == "del":
                    weir.delete_processing_time_timer(int(at))
                    weir.delete_event_time_timer(int(at))  # none: does nothing

            def on_timer(self, timer, out):
                out.emit(timer.key, f"{timer.domain} {timer.timestamp}")

        h = Harness(Op)
        HOST.processing_time = 1000
        h.process(("k", "now", 5), ("k", "in 50"), ("j", "in 70"), ("j", "in 100"), ("j", "del 1100"))
        self.assertEqual(h.take(), [("k", f"1000 {I64_MIN}", 5)])
        self.assertEqual(h.timers(PROCESSING), [("j", 1070), ("k", 1050)])
        h.advance_processing_time(1060)
        # A processing-time timer's emits carry no timestamp by default.
        self.assertEqual(h.take(), [("k", "processing-time 1050", None)])
        h.watermark(7)
        h.process(("k", "now"), ("k", "in -1"))
        # A timer in the past fires as soon as the call returns.
        self.assertEqual(h.take(), [("k", "1060 7", None), ("k", "processing-time 1059", None)])
        h.advance_processing_time(5000)
        self.assertEqual(h.take(), [("j", "processing-time 1070", None)])

    def test_timers_need_a_key_and_an_s64_timestamp(self):
        class Op(weir.Operator):
            def process(self, record, out):
                weir.register_event_time_timer(int(record.value_str()) if record.value else 1.5)

            def on_watermark(self, watermark, out):
                weir.register_event_time_timer(watermark)

        h = Harness(Op)
        with self.assertRaisesRegex(Err, "RuntimeError: timers are keyed"):
            h.process((None, "1"))
        with self.assertRaisesRegex(Err, "ValueError: a timer timestamp is a signed 64-bit int"):
            h.process(("k", str(1 << 63)))
        with self.assertRaisesRegex(Err, "ValueError: a timer timestamp"):
            h.process(("k", ""))
        with self.assertRaisesRegex(Err, "RuntimeError: timers are keyed"):
            h.watermark(3)

    def test_counters_add_up_and_check_names(self):
        class Op(weir.Operator):
            def process(self, record, out):
                name, _, delta = record.value_str().partition(" ")
                weir.counter_add(name, int(delta) if delta else 1)

        h = Harness(Op)
        h.process(("k", "refused"), ("k", "refused 4"), ("k", "a.b-c_D9 0"))
        self.assertEqual(HOST.counters, {"refused": 5, "a.b-c_D9": 0})
        with self.assertRaisesRegex(Err, "counter name is 1 to 64 of"):
            h.process(("k", "bad/name"))
        with self.assertRaisesRegex(Err, "counter name"):
            h.process(("k", "x" * 65))
        with self.assertRaisesRegex(Err, "delta is an unsigned 64-bit int"):
            h.process(("k", "refused -1"))
        h.process(*[("k", f"c{i}") for i in range(30)])
        with self.assertRaisesRegex(Err, "at most 32 counters"):
            h.process(("k", "one_too_many"))

    def test_the_default_hooks_do_nothing(self):
        class Op(weir.Operator):
            def process(self, record, out):
                weir.register_event_time_timer(5)
                weir.register_processing_time_timer(5)

        h = Harness(Op)
        h.process(("k", "x"))
        h.advance_processing_time(10)
        h.finish()
        self.assertEqual(h.take(), [])
        self.assertEqual(HOST.timers, set())


class Tumbling(unittest.TestCase):
    def test_windows_fire_at_their_last_timestamp_in_start_order_and_are_dropped(self):
        h = Harness(windowed(weir.tumbling(10)))
        self.assertIn(("windows", N.StateKind.MAP, "map<int, record{end: int, acc: any}>"), HOST.declared)
        h.process(("a", "x", 3), ("a", "x", 12), ("b", "x", 9), ("a", "x", 0), ("a", "x", -1), ("a", "x", -10))
        self.assertEqual(h.timers(), [("a", -1), ("a", 9), ("a", 19), ("b", 9)])
        h.snapshot()
        self.assertEqual(window_state("a"), {-10: (0, 2), 0: (10, 2), 10: (20, 1)})
        h.watermark(8)
        self.assertEqual(h.take(), [("a", "a,-10,0,2", -1)])
        h.watermark(9)
        self.assertEqual(h.take(), [("a", "a,0,10,2", 9), ("b", "b,0,10,1", 9)])
        h.snapshot(2)
        self.assertEqual(window_state("a"), {10: (20, 1)})
        self.assertEqual(window_state("b"), {})
        h.finish()
        self.assertEqual(h.take(), [("a", "a,10,20,1", 19)])
        self.assertEqual(window_state("a"), {})

    def test_an_offset_shifts_the_windows(self):
        h = Harness(windowed(weir.tumbling(10, offset=3)))
        h.process(("a", "x", 3), ("a", "x", 2), ("a", "x", 12), ("a", "x", 13))
        h.finish()
        self.assertEqual(h.take(), [("a", "a,-7,3,1", 2), ("a", "a,3,13,2", 12), ("a", "a,13,23,1", 22)])

    def test_result_key_re_keys_a_window_result(self):
        class ByStart(Count):
            def result_key(self, key, window):
                return str(window.start) if key != b"b" else None

        h = Harness(lambda: weir.WindowOperator(weir.tumbling(10), ByStart()))
        h.process(("a", "x", 3), ("b", "x", 4), ("a", "x", 12))
        h.finish()
        self.assertEqual(h.take(), [("0", "a,0,10,1", 9), ("b", "b,0,10,1", 9), ("10", "a,10,20,1", 19)])

    def test_a_record_without_a_timestamp_fails_and_an_assigner_is_required(self):
        h = Harness(windowed(weir.tumbling(10)))
        with self.assertRaisesRegex(Err, "ValueError: a window operator needs event time"):
            h.process(("a", "x"))
        with self.assertRaisesRegex(Err, "state `windows` is keyed"):
            h.process((None, "x", 5))
        with self.assertRaisesRegex(Err, "needs an assigner"):
            Harness(weir.WindowOperator)
        with self.assertRaisesRegex(Err, "aggregate object lacks create, add, result"):
            Harness(lambda: weir.WindowOperator(weir.tumbling(5), object()))

        class NoMerge(Count):
            merge = None

        with self.assertRaisesRegex(Err, "aggregate NoMerge lacks merge"):
            Harness(lambda: weir.WindowOperator(weir.session(5), NoMerge()))
        Harness(lambda: weir.WindowOperator(weir.tumbling(5), NoMerge()))
        with self.assertRaisesRegex(ValueError, "positive int"):
            weir.tumbling(0)
        with self.assertRaisesRegex(ValueError, "ends past the largest timestamp"):
            weir.tumbling(10).assign(I64_MAX - 2)

    def test_a_rust_written_window_state_restores(self):
        # What the Rust SDK writes (Value::Int starts, record {end, acc})
        # and the timers the host restores with it.
        entry = (N.Value_Int(0), N.Value_Nested([N.Node_Record(["end", "acc"]), N.Node_Int(10), N.Node_Int(4)]))

        def restored():
            HOST.maps[("windows", b"a")] = {repr(entry[0]): entry}
            HOST.timers.add((b"a", 9, EVENT))
            return weir.WindowOperator(weir.tumbling(10), Count())

        h = Harness(restored)
        h.process(("a", "x", 5))
        h.watermark(9)
        self.assertEqual(h.take(), [("a", "a,0,10,5", 9)])


class Sliding(unittest.TestCase):
    def test_a_record_is_in_every_window_that_contains_it(self):
        self.assertEqual(weir.sliding(10, 5).assign(12), [weir.Window(10, 20), weir.Window(5, 15)])
        self.assertEqual(weir.sliding(10, 3).assign(-1), [weir.Window(-3, 7), weir.Window(-6, 4), weir.Window(-9, 1)])
        h = Harness(windowed(weir.sliding(10, 5)))
        h.process(("a", "x", 12), ("a", "x", 7), ("a", "x", 3))
        h.watermark(14)
        self.assertEqual(h.take(), [("a", "a,-5,5,1", 4), ("a", "a,0,10,2", 9), ("a", "a,5,15,2", 14)])
        h.finish()
        self.assertEqual(h.take(), [("a", "a,10,20,1", 19)])

    def test_a_record_late_for_some_windows_goes_to_the_others(self):
        h = Harness(windowed(weir.sliding(10, 5)))
        h.watermark(12)
        h.process(("a", "x", 8))  # [0, 10) is late, [5, 15) is not
        h.finish()
        self.assertEqual(h.take(), [("a", "a,5,15,1", 14)])
        self.assertEqual(HOST.counters, {})


class SessionCount(weir.WindowOperator):
    """A session count as a plugin writes it: config in open, the aggregate
    as methods of the operator."""

    def open(self, ctx):
        self.assigner = weir.session(json.loads(ctx.config or "{}").get("gap", 3000))
        self.allowed_lateness = json.loads(ctx.config or "{}").get("lateness", 0)

    def create(self):
        return 0

    def add(self, acc, record):
        return acc + 1

    def merge(self, a, b):
        return a + b

    def result(self, key, window, acc):
        return f"{key.decode()},{window.start},{window.end},{acc}"


class Session(unittest.TestCase):
    def test_a_record_bridging_two_sessions_merges_them(self):
        h = Harness(SessionCount, '{"gap": 3000}')
        h.process(("k", "x", 1000), ("k", "x", 5000), ("j", "x", 1500))
        self.assertEqual(h.timers(), [("j", 4499), ("k", 3999), ("k", 7999)])
        h.process(("k", "x", 3500))  # [3500, 6500) touches both
        h.snapshot()
        self.assertEqual(window_state("k"), {1000: (8000, 3)})
        self.assertEqual(h.timers(), [("j", 4499), ("k", 7999)])
        h.process(("k", "x", 2000))  # inside: nothing moves
        h.process(("k", "x", 8000))  # touches the end: extends it
        h.process(("k", "x", 500))  # extends the start
        self.assertEqual(h.timers(), [("j", 4499), ("k", 10999)])
        h.watermark(10_000)
        self.assertEqual(h.take(), [("j", "j,1500,4500,1", 4499)])
        h.finish()
        self.assertEqual(h.take(), [("k", "k,500,11000,6", 10999)])
        self.assertEqual(window_state("k"), {})

    def test_the_default_gap_and_separate_sessions_fire_in_start_order(self):
        h = Harness(SessionCount)
        h.process(("k", "x", 10_000), ("k", "x", 0), ("k", "x", 2999))
        h.finish()
        self.assertEqual(h.take(), [("k", "k,0,5999,2", 5998), ("k", "k,10000,13000,1", 12999)])

    def test_a_merge_keeps_a_timer_another_window_still_needs(self):
        # Timers are per key and timestamp: [0, 1000) cleans up at 2999,
        # when [2000, 3000) fires. Merging the latter must not delete it.
        h = Harness(SessionCount, '{"gap": 1000, "lateness": 2000}')
        h.process(("k", "x", 0), ("k", "x", 2000))
        self.assertEqual(h.timers(), [("k", 999), ("k", 2999), ("k", 4999)])
        h.process(("k", "x", 2500))  # [2000, 3500)
        self.assertEqual(h.timers(), [("k", 999), ("k", 2999), ("k", 3499), ("k", 5499)])
        h.watermark(2999)
        self.assertEqual(h.take(), [("k", "k,0,1000,1", 999)])
        h.snapshot()
        self.assertEqual(window_state("k"), {2000: (3500, 2)}, "[0, 1000) cleaned up")
        h.finish()
        self.assertEqual(h.take(), [("k", "k,2000,3500,2", 3499)])
        self.assertEqual(window_state("k"), {})

    def test_a_late_session_record_is_dropped_and_counted(self):
        h = Harness(SessionCount, '{"gap": 100}')
        h.watermark(1000)
        # [900, 1000) and [901, 1001) end at or before the watermark.
        h.process(("k", "x", 900), ("k", "x", 901), ("k", "x", 902))
        self.assertEqual(HOST.counters, {"late_records_dropped": 2})
        h.finish()
        self.assertEqual(h.take(), [("k", "k,902,1002,1", 1001)])


class Lateness(unittest.TestCase):
    def test_a_kept_window_fires_again_for_each_late_record_until_its_clean_up(self):
        h = Harness(windowed(weir.tumbling(10), allowed_lateness=5))
        h.process(("a", "x", 1), ("a", "x", 2))
        self.assertEqual(h.timers(), [("a", 9), ("a", 14)])
        h.watermark(9)
        self.assertEqual(h.take(), [("a", "a,0,10,2", 9)])
        h.snapshot()
        self.assertEqual(window_state("a"), {0: (10, 2)}, "kept for the allowed lateness")
        h.process(("a", "x", 3))
        self.assertEqual(h.take(), [("a", "a,0,10,3", 9)], "fired again at once")
        h.watermark(13)
        h.process(("a", "x", 4))
        self.assertEqual(h.take(), [("a", "a,0,10,4", 9)])
        h.watermark(14)
        self.assertEqual(h.take(), [], "the clean-up emits nothing")
        h.snapshot(2)
        self.assertEqual(window_state("a"), {})
        h.process(("a", "x", 5))
        self.assertEqual(h.take(), [])
        self.assertEqual(HOST.counters, {"late_records_dropped": 1})
        self.assertEqual(h.timers(), [])

    def test_a_first_record_after_the_fire_time_fires_at_once_and_only_once(self):
        h = Harness(windowed(weir.tumbling(10), allowed_lateness=5))
        h.watermark(12)
        h.process(("a", "x", 7))
        self.assertEqual(h.take(), [("a", "a,0,10,1", 9)])
        self.assertEqual(h.timers(), [("a", 14)], "no firing timer behind the watermark")
        h.finish()
        self.assertEqual(h.take(), [])

    def test_one_timer_both_fires_a_window_and_cleans_up_another(self):
        h = Harness(windowed(weir.tumbling(10), allowed_lateness=10))
        h.process(("a", "x", 5), ("a", "x", 15))
        self.assertEqual(h.timers(), [("a", 9), ("a", 19), ("a", 29)])
        h.watermark(19)
        self.assertEqual(h.take(), [("a", "a,0,10,1", 9), ("a", "a,10,20,1", 19)])
        h.snapshot()
        self.assertEqual(window_state("a"), {10: (20, 1)})

    def test_late_records_are_dropped_and_counted(self):
        h = Harness(windowed(weir.tumbling(10)))
        h.process(("a", "x", 5))
        h.watermark(9)
        h.process(("a", "x", 9), ("b", "x", 0), ("a", "x", 10))
        self.assertEqual(h.take(), [("a", "a,0,10,1", 9)])
        self.assertEqual(HOST.counters, {"late_records_dropped": 2})
        h.finish()
        self.assertEqual(h.take(), [("a", "a,10,20,1", 19)])

    def test_a_late_handler_emits_instead_with_the_record_key_and_timestamp(self):
        def on_late(record):
            value = record.value_str()
            return None if value == "drop" else f"late {value}"

        h = Harness(windowed(weir.tumbling(10), on_late=on_late))
        h.watermark(20)
        h.process(("a", "x", 5), ("a", "drop", 6), ("b", "y", 19), ("b", "z", 21))
        self.assertEqual(h.take(), [("a", "late x", 5), ("b", "late y", 19)])
        self.assertEqual(HOST.counters, {"late_records_dropped": 1})
        h.finish()
        self.assertEqual(h.take(), [("b", "b,20,30,1", 29)])


class Caches(unittest.TestCase):
    def test_many_keys_changed_by_timers_are_flushed_after_the_call(self):
        limit = weir.DIRTY_LIMIT
        try:
            h = Harness(windowed(weir.tumbling(10)))
            h.process(*[(f"k{i}", "x", 1) for i in range(3)])
            h.snapshot()
            self.assertEqual(HOST.write_calls, [3])
            weir.DIRTY_LIMIT = 2
            h.watermark(9)  # each firing removes a window: the third flushes
            self.assertEqual(len(h.take()), 3)
            self.assertEqual(HOST.write_calls, [3, 3], "the removes, after the third on_timer")
            self.assertEqual(window_state("k2"), {})
        finally:
            weir.DIRTY_LIMIT = limit


class Plugins(unittest.TestCase):
    def test_the_session_count_plugin(self):
        app = Path(__file__).resolve().parents[3] / "plugins/python/session-count/app.py"
        spec = importlib.util.spec_from_file_location("session_count_app", app)
        module = importlib.util.module_from_spec(spec)
        # No bytecode cache in the plugin folder: it would retrigger the
        # plugin build script.
        dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True
        try:
            spec.loader.exec_module(module)
        finally:
            sys.dont_write_bytecode = dont_write
        h = Harness(module.SessionCount, '{"gap": 1000}')
        h.process(("a", "x", 0), ("a", "x", 500), ("b", "x", 100), ("a", "x", 3000))
        h.watermark(2000)
        h.process(("a", "x", 100))  # late
        h.finish()
        self.assertEqual(h.take(), [("b", "b,100,1100,1", 1099), ("a", "a,0,1500,2", 1499),
                                    ("a", "a,3000,4000,1", 3999)])
        self.assertEqual(HOST.counters, {"late_records_dropped": 1})
        h = Harness(module.SessionCount)
        h.process(("a", "x", 0), ("a", "x", 2999))
        h.finish()
        self.assertEqual(h.take(), [("a", "a,0,5999,2", 5998)], "the default gap is 3000")
        for bad in ['{"size": 1}', "[1]", "{", '{"gap": 0}']:
            with self.assertRaises(Err, msg=bad):
                Harness(module.SessionCount, bad)


if __name__ == "__main__":
    unittest.main()
