"""Unit tests of the Python Nexmark stages (`app.py`) against the SDK's fake
host (`guest-sdk/python/tests/fakehost.py`). Outside WebAssembly: run with

    PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -s plugins/python/nexmark

(or pytest). Without bytecode caches: one in this folder would be built
into the component and retrigger the plugin build script.
"""

import importlib.util
import json
import random
import sys
import unittest
from collections import defaultdict
from pathlib import Path

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "guest-sdk/python/tests"))

from fakehost import HOST, I64_MAX, Err, Harness, weir, wit_types  # noqa: E402

_spec = importlib.util.spec_from_file_location("nexmark_app", HERE / "app.py")
app = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(app)

N = wit_types


def bid(auction, bidder=2001, price=4321, date_time=1_700_000_000_000, extra=""):
    """A bid as the `nexmark` source writes it (docs/nexmark.md)."""
    return (f'{{"type":"bid","auction":{auction},"bidder":{bidder},"price":{price},"channel":"Google",'
            f'"url":"https://www.nexmark.com/googl/item.htm?query=1","date_time":{date_time},'
            f'"extra":"{extra}"}}')


PERSON = ('{"type":"person","id":1000,"name":"Peter Shultz","email_address":"abc@xyz.com",'
          '"credit_card":"0123 4567 8901 2345","city":"Boise","state":"ID","date_time":1700000000000,'
          '"extra":""}')
AUCTION = ('{"type":"auction","id":1000,"item_name":"abc","description":"de fg","initial_bid":1234,'
           '"reserve":5678,"date_time":1700000000000,"expires":1700000000123,"seller":1000,'
           '"category":12,"extra":""}')


def stage(config):
    return Harness(app.Nexmark, config)


def hot_items(start, size, items, num):
    return [(None, f'{{"auction":{a},"num":{num},"window_start":{start},"window_end":{start + size}}}',
             start + size - 1) for a in items]


class Config(unittest.TestCase):
    def test_unknown_stages_and_bad_numbers_fail_open(self):
        for config in ["", "q9", "Q1", "q5-count ten", "q5-count 10 0", "q5-count 0", "q5-count 10 1_0",
                       "q5-max -5", "q5-max 1.5", f"q5-max {I64_MAX + 1}"]:
            with self.assertRaises(Err, msg=config):
                stage(config)

    def test_the_window_arguments_and_their_defaults(self):
        # A bid at 0 opens the windows starting at 0, -slide, ... > -size,
        # each with a timer at its end - 1.
        for config, want in [("q5-count", [1999, 3999, 5999, 7999, 9999]),
                             ("q5-count 5000", [999, 2999, 4999]),
                             ("  q5-count   10\t+4  extra words ", [1, 5, 9]),
                             ("q5-count 3 3", [2])]:
            h = stage(config)
            h.process(("1", bid(1), 0))
            self.assertEqual(h.timers(), [("1", t) for t in want], config)
        for config, want in [("q5-max", 10_099), ("q5-max 7 extra", 106)]:
            h = stage(config)
            h.process(("100", "1,1"))
            self.assertEqual(h.timers(), [("100", want)], config)


class Q1(unittest.TestCase):
    def test_bids_become_compact_json_with_the_price_in_euros(self):
        h = stage("q1")
        h.process(("k", bid(1000, 2001, 4321, 1_700_000_000_123), 5), (None, PERSON, 6), (None, AUCTION, 7),
                  (None, bid(18_446_744_073_709_551_615, 0, 99_999_999, -3)))
        self.assertEqual(h.take(), [
            (None, '{"auction":1000,"bidder":2001,"price":3923,"date_time":1700000000123}', 5),
            (None, '{"auction":18446744073709551615,"bidder":0,"price":90799999,"date_time":-3}', None),
        ])

    def test_the_output_is_what_json_dumps_writes(self):
        h = stage("q1")
        rng = random.Random(1)
        events = [(rng.randrange(1000, 10**6), rng.randrange(1000, 10**6), rng.randrange(100, 10**8),
                   rng.randrange(10**12, 2 * 10**12)) for _ in range(200)]
        h.process(*[(None, bid(*e)) for e in events])
        want = [json.dumps({"auction": a, "bidder": b, "price": p * 908 // 1000, "date_time": d},
                           separators=(",", ":")) for a, b, p, d in events]
        self.assertEqual([v for _, v, _ in h.take()], want)

    def test_keys_may_come_in_any_order_and_unknown_keys_are_ignored(self):
        h = stage("q1")
        h.process((None, '{"price":5000,"date_time":7,"extra":"","url":"u","channel":"c","bidder":2,'
                         '"auction":1,"type":"bid","unknown":[1,{"a":null}]}'))
        self.assertEqual(h.take(), [(None, '{"auction":1,"bidder":2,"price":4540,"date_time":7}', None)])

    def test_what_is_not_a_nexmark_event_fails_the_call(self):
        for value in ["not json", "[1]", '{"id":1}', '{"type":"comment"}', '{"type":"bid","auction":1}',
                      bid(-1), bid(1, price=1.5), bid(1, bidder="true"), bid(2**64)]:
            h = stage("q1")
            with self.assertRaises(Err, msg=value) as e:
                h.process((None, value))
            self.assertIn("not a Nexmark event", str(e.exception.value))


class BidsByAuction(unittest.TestCase):
    def test_bids_are_keyed_by_auction_unchanged(self):
        h = stage("bids-by-auction")
        h.process((None, bid(1007, date_time=12), 12), ("x", PERSON, 13), (None, AUCTION), ("y", bid(2), 14))
        self.assertEqual(h.take(), [("1007", bid(1007, date_time=12), 12), ("2", bid(2), 14)])
        for value in ["{", '{"type":"bid"}', bid(-5), '{"type":"x"}']:
            with self.assertRaises(Err, msg=value):
                h.process((None, value))


def counts_state(key):
    """The host's `counts` map of ``key``: {window start: bids}."""
    out = {}
    for k, v in HOST.map_state("counts", key.encode()):
        assert isinstance(k, N.Value_Int) and isinstance(v, N.Value_Int), (k, v)
        out[k.value] = v.value
    return out


class Q5Count(unittest.TestCase):
    def test_each_window_fires_at_the_watermark_keyed_by_its_start(self):
        h = stage("q5-count 10 4")  # windows [4n, 4n + 10)
        # ts 3: [-4, 6), [0, 10); ts 5: [-4, 6), [0, 10), [4, 14); ts 9: [0, 10), [4, 14), [8, 18).
        h.process(("1001", bid(1001), 3), ("1001", bid(1001), 5), ("1002", bid(1002), 9))
        self.assertEqual(h.take(), [])
        self.assertEqual(h.timers(), [("1001", 5), ("1001", 9), ("1001", 13), ("1002", 9), ("1002", 13),
                                      ("1002", 17)])
        h.snapshot()
        self.assertEqual(counts_state("1001"), {-4: 2, 0: 2, 4: 1})
        h.watermark(4)
        self.assertEqual(h.take(), [])
        h.watermark(5)
        self.assertEqual(h.take(), [("-4", "1001,2", 5)])
        h.watermark(12)
        self.assertEqual(h.take(), [("0", "1001,2", 9), ("0", "1002,1", 9)])
        h.finish()
        self.assertEqual(h.take(), [("4", "1001,1", 13), ("4", "1002,1", 13), ("8", "1002,1", 17)])
        self.assertEqual(counts_state("1001"), {})
        self.assertEqual(counts_state("1002"), {})
        self.assertEqual(h.timers(), [])
        self.assertEqual(HOST.counters, {})

    def test_late_records_join_only_the_windows_still_open_or_are_dropped_and_counted(self):
        h = stage("q5-count 10 4")
        h.watermark(9)
        h.process(("7", bid(7), 9), ("7", bid(7), 1), ("7", bid(7), 3))  # 1 and 3: every window fired
        self.assertEqual(HOST.counters, {"late_records_dropped": 2})
        self.assertEqual(h.timers(), [("7", 13), ("7", 17)], "[0, 10) ended at 9: not opened again")
        h.finish()
        self.assertEqual(h.take(), [("4", "7,1", 13), ("8", "7,1", 17)])

    def test_records_need_a_timestamp_and_a_key(self):
        h = stage("q5-count")
        with self.assertRaises(Err):
            h.process(("1", bid(1)))
        with self.assertRaises(Err):
            h.process((None, bid(1), 5))

    def test_default_windows_match_a_brute_force_count(self):
        rng = random.Random(5)
        h = stage("q5-count")
        want = defaultdict(int)  # (window start, auction) -> bids
        ts = 1_700_000_000_000
        for _ in range(30):
            batch = []
            for _ in range(rng.randrange(1, 40)):
                ts += rng.randrange(0, 300)
                auction = str(rng.randrange(1000, 1010))
                batch.append((auction, bid(auction, date_time=ts), ts))
                start = ts - ts % 2000
                while start > ts - 10_000:
                    want[(str(start), auction)] += 1
                    start -= 2000
            h.process(*batch)
            h.watermark(ts - 1)
        h.finish()
        got = h.take()
        # Every window once, at its end - 1, in timestamp order.
        self.assertTrue(all(t == int(k) + 9999 for k, _, t in got))
        self.assertEqual([t for _, _, t in got], sorted(t for _, _, t in got))
        self.assertEqual(sorted((k, v) for k, v, _ in got),
                         sorted((k, f"{a},{n}") for (k, a), n in want.items()))
        self.assertEqual(HOST.counters, {})


def best_state(key):
    """The host's `best` value of ``key`` as (max, items), checking it is the
    record the Rust stage writes."""
    v = HOST.values.get(("best", key.encode()))
    if v is None:
        return None
    assert isinstance(v, N.Value_Nested), v
    record, max_, items, *rest = v.value
    assert record == N.Node_Record(["max", "items"]) and isinstance(max_, N.Node_Int), v
    assert items == N.Node_List(len(rest)), v
    return max_.value, [n.value for n in rest]


class Q5Max(unittest.TestCase):
    def test_the_hot_items_of_a_window_are_emitted_when_the_watermark_passes_its_end(self):
        h = stage("q5-max")
        h.process(("0", "1001,3", 9999), ("0", "1002,5", 9999), ("2000", "1001,1", 11999),
                  ("0", "1003,5", 9999), ("0", "1004,2", 9999))
        self.assertEqual(h.take(), [])
        self.assertEqual(h.timers(), [("0", 9999), ("2000", 11999)])
        h.snapshot()
        self.assertEqual(best_state("0"), (5, ["1002", "1003"]))
        self.assertIn(("best", N.StateKind.VALUE, "record{max: uint, items: list<text>}"), HOST.declared)
        h.watermark(9998)
        self.assertEqual(h.take(), [])
        h.watermark(9999)
        self.assertEqual(h.take(), hot_items(0, 10_000, [1002, 1003], 5))
        h.process(("2000", "1005,1", 11999))
        h.finish()
        self.assertEqual(h.take(), hot_items(2000, 10_000, [1001, 1005], 1))
        self.assertEqual(best_state("0"), None)
        self.assertEqual(best_state("2000"), None)

    def test_the_window_size_comes_from_the_config(self):
        h = stage("q5-max 10")
        h.process(("-4", "7,1", 5))
        self.assertEqual(h.timers(), [("-4", 5)])
        h.finish()
        self.assertEqual(h.take(), hot_items(-4, 10, [7], 1))

    def test_bad_input_fails_the_call(self):
        for record in [(None, "1,2"), ("w", "1,2"), ("1.5", "1,2"), ("0", "12"), ("0", "1,x"), ("0", "1,-2")]:
            h = stage("q5-max")
            with self.assertRaises(Err, msg=record):
                h.process(record)
        h = stage("q5-max")
        h.process(("0", "x,2"))
        with self.assertRaises(Err, msg="the auction is read at the window's end"):
            h.finish()


class Q5Pipeline(unittest.TestCase):
    """bids-by-auction -> q5-count -> q5-max, one stage after the other,
    against a brute-force q5 (weir_nexmark::reference::q5_with)."""

    def run_stage(self, config, records, watermarks):
        h = stage(config)
        for record in records:
            h.process(record)
            if watermarks:
                h.watermark(max(HOST.watermark, record[2] - 1))
        h.finish()
        return h.take()

    def test_q5(self):
        rng = random.Random(7)
        size, slide = 1000, 200
        events, ts = [], 10_000
        for i in range(3000):
            ts += rng.randrange(0, 5)
            kind = rng.randrange(50)
            if kind == 0:
                events.append((None, PERSON, ts))
            elif kind < 4:
                events.append((None, AUCTION, ts))
            else:
                # Hot auctions: most bids go to a few.
                auction = rng.choice([1000, 1001, 1002]) if rng.random() < 0.5 else rng.randrange(1000, 1100)
                events.append((None, bid(auction, date_time=ts), ts))
        keyed = self.run_stage("bids-by-auction", events, watermarks=False)
        counted = self.run_stage(f"q5-count {size} {slide}", keyed, watermarks=True)
        got = self.run_stage(f"q5-max {size}", counted, watermarks=True)

        windows = defaultdict(lambda: defaultdict(int))
        for _, value, t in events:
            e = json.loads(value)
            if e["type"] == "bid":
                start = t - t % slide
                while start > t - size:
                    windows[start][e["auction"]] += 1
                    start -= slide
        want = []
        for start, per_auction in windows.items():
            top = max(per_auction.values())
            want += [json.dumps({"auction": a, "num": n, "window_start": start, "window_end": start + size},
                                separators=(",", ":")) for a, n in per_auction.items() if n == top]
        self.assertEqual(sorted(v for _, v, _ in got), sorted(want))
        self.assertEqual(len(got), len(want))

if __name__ == "__main__":
    unittest.main()
