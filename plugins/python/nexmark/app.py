"""Nexmark query stages in Python: the twin of the Rust plugin
`plugins/nexmark` for the stages below, with byte-identical output
(docs/nexmark.md). One stage per instance, chosen by the first word of the
config:

| stage | input | output |
| --- | --- | --- |
| `q1` | events | `{"auction","bidder","price","date_time"}`, price * 908 // 1000 |
| `bids-by-auction` | events | bids, keyed by auction id |
| `q5-count [size] [slide]` | bids by auction | per sliding window and auction, `auction,count`, keyed by window start |
| `q5-max [size]` | q5-count | the hot items of each window (JSON lines) |

Sizes and slides are ms (defaults: 10 s windows, 2 s slide). Events are
the JSON objects of the `nexmark` source; persons and auctions are
skipped, anything else fails the job.

`q5-count` is a sliding-window count with its results re-keyed by window
start (the Rust stage's `WindowFunction::result_key`), which
`weir.WindowOperator` cannot do: it always emits under the window's key.
So it keeps the windows itself, in keyed map state `counts` (window start
-> bids so far, `map<int, int>`) with an event-time timer at each window's
end - 1, and the window semantics of docs/sdk.md ("Windows", no allowed
lateness): a record too late for every window is dropped and counted in
`late_records_dropped`. An int per window, not the `windows` layout the
window operators of every SDK share (`record{end, acc}` per window),
because the SDK checks and encodes a record on every `put`: with it this
stage took about three times as long per bid. The price: this stage and
the Rust `q5-count` do not restore from each other's savepoints.
`q5-max` keeps the Rust stage's state (`best`, `record{max: uint, items:
list<text>}`), so either restores the other's.
"""

import json
import re

import weir

DEFAULT_SIZE = 10_000
DEFAULT_SLIDE = 2_000

_I64_MIN, _I64_MAX, _U64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")
_UNSIGNED = re.compile(r"\+?[0-9]+")
_loads = json.loads
_register = weir.register_event_time_timer
_watermark = weir.current_watermark


def _arg(words, i, default):
    """Word ``i`` of the config as ms (an i64, as Rust parses it), or ``default``."""
    if i >= len(words):
        return default
    w = words[i]
    if not _INTEGER.fullmatch(w) or not _I64_MIN <= int(w) <= _I64_MAX:
        raise ValueError(f"`{w}` is not a number of milliseconds")
    return int(w)


def _event(value):
    """The event in ``value`` (a dict) and its type, failing as Rust's parser
    does on what is not a Nexmark event."""
    try:
        e = _loads(value)
        kind = e["type"]
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"not a Nexmark event: {err!r}") from None
    if kind != "bid" and kind != "person" and kind != "auction":
        raise ValueError(f"not a Nexmark event: unknown type {kind!r}")
    return e, kind


def _u64(text, what):
    """``text`` as Rust parses a u64."""
    if not _UNSIGNED.fullmatch(text) or int(text) > _U64_MAX:
        raise ValueError(what)
    return int(text)


def _bad_bid(e):
    return ValueError(f"not a Nexmark event: a bid needs auction, bidder and price (u64) and date_time (i64): {e!r}")


class Nexmark(weir.Operator):
    def open(self, ctx):
        words = ctx.config.split()
        stage = words[0] if words else ""
        if stage == "q1":
            self.process = self._q1
        elif stage == "bids-by-auction":
            self.process = self._bids_by_auction
        elif stage == "q5-count":
            self.size = _arg(words, 1, DEFAULT_SIZE)
            self.slide = _arg(words, 2, DEFAULT_SLIDE)
            if self.size <= 0 or self.slide <= 0:
                raise ValueError(
                    f"window sizes and slides must be positive: size {self.size}, slide {self.slide}")
            self.counts = weir.MapState("counts", type=int, key_type=int)
            self.process = self._q5_count
            self.on_timer = self._q5_count_fire
        elif stage == "q5-max":
            self.size = _arg(words, 1, DEFAULT_SIZE)
            if self.size <= 0:
                raise ValueError("the window size must be positive")
            self.best = weir.ValueState("best", type="record{max: uint, items: list<text>}")
            self.process = self._q5_max
            self.on_timer = self._q5_max_fire
        else:
            raise ValueError(
                f"unknown stage `{stage}`: expected q1, bids-by-auction, q5-count or q5-max")

    def process(self, record, out):
        raise AssertionError("open chooses the stage's process")

    def _q1(self, record, out):
        e, kind = _event(record.value)
        if kind != "bid":
            return
        try:
            a, b, p, d = e["auction"], e["bidder"], e["price"], e["date_time"]
        except KeyError:
            raise _bad_bid(e) from None
        if not (type(a) is type(b) is type(p) is type(d) is int and 0 <= a <= _U64_MAX
                and 0 <= b <= _U64_MAX and 0 <= p <= _U64_MAX and _I64_MIN <= d <= _I64_MAX):
            raise _bad_bid(e)
        out.emit(None, f'{{"auction":{a},"bidder":{b},"price":{p * 908 // 1000},"date_time":{d}}}')

    def _bids_by_auction(self, record, out):
        e, kind = _event(record.value)
        if kind != "bid":
            return
        a = e.get("auction")
        if type(a) is not int or not 0 <= a <= _U64_MAX:
            raise _bad_bid(e)
        out.emit(str(a), record.value)

    def _q5_count(self, record, out):
        ts = record.timestamp
        if ts is None:
            raise ValueError("a window operator needs event timestamps: the record has none")
        if record.key is None:
            raise ValueError("a window operator needs keyed input: the record has no key")
        # The sliding windows [s, s + size) holding ts, latest first; a
        # window is too late once the watermark reached its end - 1.
        size, slide, counts = self.size, self.slide, self.counts
        wm = _watermark()
        start = ts - ts % slide
        low = ts - size
        taken = False
        while start > low:
            last = start + size - 1
            if last > wm:
                n = counts.get(start)
                if n is None:
                    _register(last)
                    n = 0
                counts.put(start, n + 1)
                taken = True
            start -= slide
        if not taken:
            weir.counter_add(weir.LATE_RECORDS_DROPPED)

    def _q5_count_fire(self, timer, out):
        if timer.domain != weir.EVENT_TIME:
            return
        start = timer.timestamp + 1 - self.size
        counts = self.counts
        n = counts.get(start)
        if n is not None:
            # Emitted with the timer's timestamp, the window's end - 1.
            out.emit(str(start), timer.key + b"," + str(n).encode())
            counts.remove(start)

    def _q5_max(self, record, out):
        # Key: the window start; value: `auction,count`.
        key = record.key
        try:
            start = int(key) if key is not None and _INTEGER.fullmatch(key.decode()) else None
        except UnicodeDecodeError:
            start = None
        if start is None or not _I64_MIN <= start <= _I64_MAX:
            raise ValueError("records must be keyed by their window")
        text = record.value.decode()
        auction, comma, count = text.partition(",")
        if not comma:
            raise ValueError(f"expected `auction,count`, got `{text}`")
        count = _u64(count, "bad count")
        best = self.best.get()
        if best is None:
            _register(start + self.size - 1)
            best = {"max": 0, "items": []}
        if count > best["max"]:
            best["max"] = count
            best["items"] = [auction]
        elif count == best["max"]:
            best["items"].append(auction)
        else:
            return
        self.best.set(best)

    def _q5_max_fire(self, timer, out):
        best = self.best.get()
        if best is None:
            return
        self.best.clear()
        window_end = timer.timestamp + 1
        window_start = window_end - self.size
        num = best["max"]
        for item in best["items"]:
            out.emit(None, f'{{"auction":{_u64(item, "bad auction id")},"num":{num},'
                           f'"window_start":{window_start},"window_end":{window_end}}}')


Operator = weir.export(Nexmark)
