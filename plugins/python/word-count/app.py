"""Keyed running word count in Python: the same output as the Rust plugin."""

import weir


class WordCount(weir.Operator):
    def open(self, ctx):
        self.count = weir.ValueState("count")
        if ctx.config.strip() == "raise":
            self.fail = True
        else:
            self.fail = False

    def process(self, record, out):
        if self.fail:
            raise ValueError(f"cannot count {record.value_str()!r}")
        n = self.count.get(0) + 1
        self.count.set(n)
        out.emit(record.key, str(n))


Operator = weir.export(WordCount)
