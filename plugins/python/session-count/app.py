"""Records per key and session, in Python: the session-window twin of the
JavaScript `plugins/js/tumbling-count`, for the cross-language window tests.

Config: JSON, `{"gap": 3000}` (the session gap in ms; the default 3000).
Each session emits one record when the watermark passes its end, keyed by
the key, with timestamp `end - 1` and the value `<key>,<start>,<end>,<count>`.
Late records are dropped and counted in the `late_records_dropped` metric.
The windows live in the state layout every SDK shares (docs/sdk.md,
"Windows"), so a Rust or JavaScript session count restores from its
savepoints.
"""

import json

import weir

DEFAULT_GAP = 3000


class SessionCount(weir.WindowOperator):
    def open(self, ctx):
        try:
            config = json.loads(ctx.config) if ctx.config.strip() else {}
        except ValueError as e:
            raise ValueError(f"session-count: config is JSON like {{\"gap\": 3000}}: {e}") from None
        if not isinstance(config, dict) or set(config) - {"gap"}:
            raise ValueError(f"session-count: config takes only `gap`, got {ctx.config!r}")
        self.assigner = weir.session(config.get("gap", DEFAULT_GAP))

    def create(self):
        return 0

    def add(self, acc, record):
        return acc + 1

    def merge(self, a, b):
        return a + b

    def result(self, key, window, acc):
        return f"{key.decode()},{window.start},{window.end},{acc}"


Operator = weir.export(SessionCount)
