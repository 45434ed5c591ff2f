// Formats keyed counts for people: a record keyed by a word whose value is
// its count becomes the unkeyed line `word: count`. Stateless; the last
// stage of the mixed-language example job (Rust tokenize → Python count →
// JavaScript format). Config: an optional separator (default `: `).
// `weir.js` is guest-sdk/js/weir.js, put beside this file by the build.

import { Operator, exportOperator } from './weir.js';

class Format extends Operator {
  open(ctx) {
    this.separator = ctx.config === '' ? ': ' : ctx.config;
  }

  process(record, out) {
    if (record.key === null) {
      throw new Error(`format: a record without a key (value ${JSON.stringify(record.valueString())})`);
    }
    out.emit(null, `${record.keyString()}${this.separator}${record.valueString()}`);
  }
}

export const operator = exportOperator(Format);
