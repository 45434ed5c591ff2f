// Keyed running word count in JavaScript: the same output as the Rust and
// Python plugins.
//
// Config: empty, or `throw` to throw an Error on the first record (the
// end-to-end tests use it to check how a JavaScript error fails a job).
// `weir.js` is guest-sdk/js/weir.js, put beside this file by the build.

import { Operator, ValueState, exportOperator } from './weir.js';

class WordCount extends Operator {
  open(ctx) {
    this.count = new ValueState('count');
    this.fail = ctx.config.trim() === 'throw';
  }

  process(record, out) {
    if (this.fail) {
      throw new Error(`cannot count '${record.valueString()}'`);
    }
    const n = this.count.get(0) + 1;
    this.count.set(n);
    out.emit(record.key, String(n));
  }
}

export const operator = exportOperator(WordCount);
