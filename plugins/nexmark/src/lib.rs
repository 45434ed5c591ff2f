//! The Nexmark queries as one operator plugin, one stage per instance,
//! chosen by the first word of its config (`docs/nexmark.md`):
//!
//! | stage | input | output |
//! | --- | --- | --- |
//! | `q0`, `q1`, `q2` | events | the query's JSON lines |
//! | `bids-by-auction` | events | bids, keyed by auction id |
//! | `bids-by-bidder` | events | bids, keyed by bidder id |
//! | `q5-count [size] [slide]` | bids by auction | per sliding window and auction, `auction,count`, keyed by window start |
//! | `q5-max [size]` | q5-count | the hot items of each window (JSON lines) |
//! | `bids-by-window [size]` | events | bids, keyed by the end of their tumbling window |
//! | `q7-max [size]` | bids by window | the highest bids of each window (JSON lines) |
//!
//! `q5-count` uses the SDK's sliding windows; `q5-max` and `q7-max` keep a
//! window's candidates in keyed state and emit them from an event-time
//! timer at the window's end. Sizes and slides are ms (defaults: 10 s
//! windows, 2 s slide).

use serde::{Deserialize, Serialize};
use weir_nexmark::{Bid, Event};
use weir_sdk::time::register_event_time_timer;
use weir_sdk::window::{Assigner, Window, WindowConfig, WindowFunction, Windowed};
use weir_sdk::{Context, Emitter, Error, Operator, Record, Structured, Timer, ValueState};

const DEFAULT_SIZE: i64 = weir_nexmark::reference::HOP_SIZE_MS;
const DEFAULT_SLIDE: i64 = weir_nexmark::reference::HOP_SLIDE_MS;

/// The stage an instance runs.
pub enum Nexmark {
    /// A stateless query: q0, q1 or q2.
    Map(u8),
    /// Bids keyed by auction id.
    BidsByAuction,
    /// Bids keyed by bidder id.
    BidsByBidder,
    /// Bids keyed by the end of their tumbling window of this size.
    BidsByWindow(i64),
    /// Bids per auction per sliding window.
    Q5Count(Box<Windowed<CountBids>>),
    /// The hot items per window.
    Q5Max(MaxPerWindow),
    /// The highest bids per window.
    Q7Max(MaxPerWindow),
}

fn arg(words: &[&str], i: usize, default: i64) -> Result<i64, Error> {
    words.get(i).map_or(Ok(default), |w| {
        w.parse()
            .map_err(|_| Error::msg(format!("`{w}` is not a number of milliseconds")))
    })
}

fn bid(record: &Record<'_>) -> Result<Option<Bid>, Error> {
    match Event::from_json(record.value) {
        Ok(Event::Bid(b)) => Ok(Some(b)),
        Ok(_) => Ok(None),
        Err(e) => Err(Error::msg(format!("not a Nexmark event: {e}"))),
    }
}

fn json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("invariant: plain structs serialise")
}

impl Operator for Nexmark {
    fn open(ctx: &Context) -> Result<Self, Error> {
        let words: Vec<&str> = ctx.config().split_whitespace().collect();
        Ok(match words.first().copied().unwrap_or("") {
            "q0" => Nexmark::Map(0),
            "q1" => Nexmark::Map(1),
            "q2" => Nexmark::Map(2),
            "bids-by-auction" => Nexmark::BidsByAuction,
            "bids-by-bidder" => Nexmark::BidsByBidder,
            "bids-by-window" => Nexmark::BidsByWindow(arg(&words, 1, DEFAULT_SIZE)?),
            "q5-count" => Nexmark::Q5Count(Box::new(Windowed::open(ctx)?)),
            "q5-max" => Nexmark::Q5Max(MaxPerWindow::open(
                Query::Q5,
                arg(&words, 1, DEFAULT_SIZE)?,
            )?),
            "q7-max" => Nexmark::Q7Max(MaxPerWindow::open(
                Query::Q7,
                arg(&words, 1, DEFAULT_SIZE)?,
            )?),
            other => {
                return Err(Error::msg(format!(
                    "unknown stage `{other}`: expected q0, q1, q2, bids-by-auction, bids-by-bidder, bids-by-window, \
                     q5-count, q5-max or q7-max"
                )));
            }
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        match self {
            Nexmark::Map(q) => {
                let Some(b) = bid(&record)? else {
                    return Ok(());
                };
                match q {
                    0 | 1 => {
                        #[derive(Serialize)]
                        struct Out {
                            auction: u64,
                            bidder: u64,
                            price: u64,
                            date_time: i64,
                        }
                        let price = if *q == 1 {
                            weir_nexmark::reference::convert_price(b.price)
                        } else {
                            b.price
                        };
                        out.emit(
                            None,
                            &json(&Out {
                                auction: b.auction,
                                bidder: b.bidder,
                                price,
                                date_time: b.date_time,
                            }),
                        );
                    }
                    _ => {
                        #[derive(Serialize)]
                        struct Out {
                            auction: u64,
                            price: u64,
                        }
                        if b.auction % weir_nexmark::reference::Q2_AUCTION_MODULUS == 0 {
                            out.emit(
                                None,
                                &json(&Out {
                                    auction: b.auction,
                                    price: b.price,
                                }),
                            );
                        }
                    }
                }
                Ok(())
            }
            Nexmark::BidsByAuction => {
                if let Some(b) = bid(&record)? {
                    out.emit(Some(b.auction.to_string().as_bytes()), record.value);
                }
                Ok(())
            }
            Nexmark::BidsByBidder => {
                if let Some(b) = bid(&record)? {
                    out.emit(Some(b.bidder.to_string().as_bytes()), record.value);
                }
                Ok(())
            }
            Nexmark::BidsByWindow(size) => {
                if let Some(b) = bid(&record)? {
                    let end =
                        weir_nexmark::reference::tumble_window_start(b.date_time, *size) + *size;
                    out.emit(Some(end.to_string().as_bytes()), record.value);
                }
                Ok(())
            }
            Nexmark::Q5Count(w) => w.process(record, out),
            Nexmark::Q5Max(m) | Nexmark::Q7Max(m) => m.process(record),
        }
    }

    fn on_timer(&mut self, timer: Timer<'_>, out: &mut Emitter) -> Result<(), Error> {
        match self {
            Nexmark::Q5Count(w) => w.on_timer(timer, out),
            Nexmark::Q5Max(m) | Nexmark::Q7Max(m) => m.on_timer(timer, out),
            _ => Ok(()),
        }
    }
}

/// Counts bids per auction in sliding windows; emits `auction,count`
/// keyed by the window's start.
pub struct CountBids;

impl WindowFunction for CountBids {
    type Acc = i64;

    fn open(ctx: &Context) -> Result<(Self, WindowConfig), Error> {
        let words: Vec<&str> = ctx.config().split_whitespace().collect();
        let size = arg(&words, 1, DEFAULT_SIZE)?;
        let slide = arg(&words, 2, DEFAULT_SLIDE)?;
        Ok((CountBids, WindowConfig::new(Assigner::sliding(size, slide))))
    }

    fn create(&self) -> i64 {
        0
    }

    fn add(&self, acc: i64, _: &Record<'_>) -> Result<i64, Error> {
        Ok(acc + 1)
    }

    fn result(&self, key: &[u8], _: Window, acc: &i64) -> Result<Vec<u8>, Error> {
        let mut v = key.to_vec();
        v.extend_from_slice(format!(",{acc}").as_bytes());
        Ok(v)
    }

    fn result_key(&self, _: &[u8], window: Window) -> Option<Vec<u8>> {
        Some(window.start.to_string().into_bytes())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Query {
    Q5,
    Q7,
}

/// A window's best candidates so far: the greatest measure and everything
/// that has it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Best {
    max: u64,
    items: Vec<String>,
}

impl Structured for Best {
    fn type_descriptor() -> Option<String> {
        Some("record{max: uint, items: list<text>}".into())
    }
}

/// Keeps, per window (the key), the candidates with the greatest measure,
/// and emits them once the watermark passes the window's end.
pub struct MaxPerWindow {
    query: Query,
    size: i64,
    best: ValueState<Best>,
}

impl MaxPerWindow {
    fn open(query: Query, size: i64) -> Result<Self, Error> {
        if size <= 0 {
            return Err(Error::msg("the window size must be positive"));
        }
        Ok(Self {
            query,
            size,
            best: ValueState::new("best")?,
        })
    }

    fn process(&mut self, record: Record<'_>) -> Result<(), Error> {
        let key = std::str::from_utf8(record.key.unwrap_or_default())
            .ok()
            .and_then(|k| k.parse::<i64>().ok())
            .ok_or_else(|| Error::msg("records must be keyed by their window"))?;
        let (measure, item) = match self.query {
            // Key: the window start; value: `auction,count`.
            Query::Q5 => {
                let text = record.value_str()?;
                let (auction, count) = text
                    .split_once(',')
                    .ok_or_else(|| Error::msg(format!("expected `auction,count`, got `{text}`")))?;
                let count: u64 = count.parse().map_err(|_| Error::msg("bad count"))?;
                (count, auction.to_owned())
            }
            // Key: the window end; value: the bid.
            Query::Q7 => {
                let Some(b) = bid(&record)? else {
                    return Ok(());
                };
                (b.price, String::from_utf8_lossy(record.value).into_owned())
            }
        };
        let end = match self.query {
            Query::Q5 => key + self.size,
            Query::Q7 => key,
        };
        let mut best = match self.best.get()? {
            Some(b) => b,
            None => {
                register_event_time_timer(end - 1)?;
                Best::default()
            }
        };
        if measure > best.max {
            best.max = measure;
            best.items.clear();
        }
        if measure == best.max {
            best.items.push(item);
        }
        self.best.set(best)
    }

    fn on_timer(&mut self, timer: Timer<'_>, out: &mut Emitter) -> Result<(), Error> {
        let Some(best) = self.best.get()? else {
            return Ok(());
        };
        self.best.clear()?;
        let window_end = timer.timestamp + 1;
        for item in best.items {
            let line = match self.query {
                Query::Q5 => {
                    #[derive(Serialize)]
                    struct Out {
                        auction: u64,
                        num: u64,
                        window_start: i64,
                        window_end: i64,
                    }
                    json(&Out {
                        auction: item.parse().map_err(|_| Error::msg("bad auction id"))?,
                        num: best.max,
                        window_start: window_end - self.size,
                        window_end,
                    })
                }
                Query::Q7 => {
                    #[derive(Serialize)]
                    struct Out {
                        auction: u64,
                        price: u64,
                        bidder: u64,
                        date_time: i64,
                        window_end: i64,
                    }
                    let Ok(Event::Bid(b)) = Event::from_json(item.as_bytes()) else {
                        return Err(Error::msg("a stored bid does not parse"));
                    };
                    json(&Out {
                        auction: b.auction,
                        price: b.price,
                        bidder: b.bidder,
                        date_time: b.date_time,
                        window_end,
                    })
                }
            };
            out.emit(None, &line);
        }
        Ok(())
    }
}

weir_sdk::export!(Nexmark);
