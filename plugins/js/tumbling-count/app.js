// Records per key and tumbling window, in JavaScript: the tumbling twin of
// the Python `plugins/python/session-count`, for the cross-language window
// tests.
//
// Config: JSON, `{"size": 10000}` (the window size in ms; the default
// 10000). Each window emits one record when the watermark passes its end,
// keyed by the key, with timestamp `end - 1` and the value
// `<key>,<start>,<end>,<count>`. Late records are dropped and counted in
// the `late_records_dropped` metric. The windows live in the state layout
// every SDK shares (docs/sdk.md, "Windows"), so a Rust or Python tumbling
// count restores from its savepoints.
// `weir.js` is guest-sdk/js/weir.js, put beside this file by the build.

import { WindowOperator, exportOperator, tumbling } from './weir.js';

const DEFAULT_SIZE = 10_000;
const decoder = new TextDecoder();

class TumblingCount extends WindowOperator {
  open(ctx) {
    let config = {};
    if (ctx.config.trim() !== '') {
      try {
        config = JSON.parse(ctx.config);
      } catch (e) {
        throw new Error(`tumbling-count: config is JSON like {"size": 10000}: ${e.message}`);
      }
    }
    if (config === null || typeof config !== 'object' || Object.keys(config).some((k) => k !== 'size')) {
      throw new Error(`tumbling-count: config takes only \`size\`, got ${JSON.stringify(ctx.config)}`);
    }
    this.assigner = tumbling(config.size ?? DEFAULT_SIZE);
  }

  create() {
    return 0;
  }

  add(acc) {
    return acc + 1;
  }

  merge(a, b) {
    return a + b;
  }

  result(key, window, acc) {
    return `${decoder.decode(key)},${window.start},${window.end},${acc}`;
  }
}

export const operator = exportOperator(TumblingCount);
