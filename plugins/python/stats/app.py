"""Per-key purchase statistics in Python: the same state and output as the
Rust plugin in `plugins/stats` (see there for the record layout), so either
continues from the state the other wrote.
"""

import weir

RECENT = 3


class UserStats(weir.Operator):
    def open(self, ctx):
        if ctx.config.strip():
            raise ValueError(f"stats: takes no config, got {ctx.config!r}")
        self.stats = weir.ValueState("stats")
        self.items = weir.MapState("items")
        self.recent = weir.ListState("recent")

    def process(self, record, out):
        line = record.value_str()
        item, _, amount = line.partition(" ")
        try:
            amount = float(amount)
        except ValueError as e:
            raise ValueError(f"stats: bad amount in {line!r}: {e}") from None

        stats = self.stats.get() or {"count": 0, "total": 0.0, "last": "", "raw": b""}
        stats["count"] += 1
        stats["total"] = float(stats["total"]) + amount
        stats["last"] = item
        stats["raw"] = bytes(record.value)
        self.stats.set(stats)

        self.items.put(item, self.items.get(item, 0) + 1)

        recent = (self.recent.get() + [item])[-RECENT:]
        self.recent.set(recent)

        items = ",".join(f"{k}:{n}" for k, n in sorted(self.items.entries()))
        out.emit(record.key, (
            f"count={stats['count']} total={stats['total']:.1f} last={item} "
            f"raw={stats['raw'].hex()} items={items} recent={','.join(recent)}"))


Operator = weir.export(UserStats)
