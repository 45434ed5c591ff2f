"""Keyed running word count in Python: the same output as the Rust plugin.

Config: empty, or `raise` to raise a ValueError on the first record (the
end-to-end tests use it to check how a Python exception fails a job).
"""

import weir


class WordCount(weir.Operator):
    def open(self, ctx):
        self.count = weir.ValueState("count")
        self.fail = ctx.config.strip() == "raise"

    def process(self, record, out):
        if self.fail:
            raise ValueError(f"cannot count {record.value_str()!r}")
        n = self.count.get(0) + 1
        self.count.set(n)
        out.emit(record.key, str(n))


Operator = weir.export(WordCount)
