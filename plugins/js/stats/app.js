// Per-key purchase statistics in JavaScript: the same state and output as
// the Rust plugin in `plugins/stats` (see there for the record layout), so
// any of the three languages continues from the state another wrote.
// `weir.js` is guest-sdk/js/weir.js, put beside this file by the build.

import { ListState, MapState, Operator, ValueState, exportOperator, float } from './weir.js';

const RECENT = 3;

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

class UserStats extends Operator {
  open(ctx) {
    if (ctx.config.trim() !== '') {
      throw new Error(`stats: takes no config, got ${JSON.stringify(ctx.config)}`);
    }
    this.stats = new ValueState('stats');
    this.items = new MapState('items');
    this.recent = new ListState('recent');
  }

  process(record, out) {
    const line = record.valueString();
    const space = line.indexOf(' ');
    const item = space < 0 ? line : line.slice(0, space);
    const amount = Number(space < 0 ? '' : line.slice(space + 1).trim());
    if (space < 0 || Number.isNaN(amount)) {
      throw new Error(`stats: bad amount in ${JSON.stringify(line)}`);
    }

    const stats = this.stats.get() ?? { count: 0, total: 0, last: '', raw: new Uint8Array() };
    const next = {
      count: stats.count + 1,
      // A float even when whole, as the Rust and Python twins write it.
      total: float(stats.total + amount),
      last: item,
      raw: record.value.slice(),
    };
    this.stats.set(next);

    this.items.put(item, this.items.get(item, 0) + 1);

    const recent = [...this.recent.get(), item].slice(-RECENT);
    this.recent.set(recent);

    const items = this.items
      .entries()
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([k, n]) => `${k}:${n}`)
      .join(',');
    const total = stats.total + amount;
    out.emit(
      record.key,
      `count=${next.count} total=${total.toFixed(1)} last=${item} raw=${hex(record.value)} ` +
        `items=${items} recent=${recent.join(',')}`,
    );
  }
}

export const operator = exportOperator(UserStats);
