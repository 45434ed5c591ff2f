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
//! | `q3-key` | events | people in OR, ID or CA keyed by id, auctions in category 10 keyed by seller |
//! | `q3-join` | q3-key | each (person, auction) pair as a JSON line |
//! | `q4-key` | events | auctions and bids, keyed by auction id |
//! | `q4-close` | q4-key | each closed auction's closing price, keyed by category |
//! | `q4-avg` | q4-close | the category's average closing price (a JSON line per update) |
//! | `q8-key` | events | people keyed by id, auctions keyed by seller |
//! | `q8-join [size]` | q8-key | per tumbling window, the people who registered and sold in it (JSON lines) |
//!
//! `q5-count` uses the SDK's sliding windows; `q5-max` and `q7-max` keep a
//! window's candidates in keyed state and emit them from an event-time
//! timer at the window's end. `q3-join` is a join without windows: a
//! person's name, city and state, and the auctions that came before them.
//! `q4-close` keeps an auction with its best valid bid until an
//! event-time timer at `expires` (and bids that came before their auction
//! until the watermark passes them); `q8-join` keeps per window whether
//! the person registered and sold, until a timer at the window's end.
//! Sizes and slides are ms (defaults: 10 s windows, 2 s slide).

use serde::{Deserialize, Serialize};
use weir_nexmark::reference::{Q3_CATEGORY, Q3_STATES, tumble_window_start};
use weir_nexmark::{Bid, Event};
use weir_sdk::time::{delete_event_time_timer, register_event_time_timer};
use weir_sdk::window::{Assigner, Window, WindowConfig, WindowFunction, Windowed};
use weir_sdk::{
    Context, Emitter, Error, ListState, MapState, Operator, Record, Structured, Timer, ValueState,
};

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
    /// Query 3's sellers keyed by id and their auctions keyed by seller.
    Q3Key,
    /// Query 3's join of sellers and auctions.
    Q3Join(Q3Join),
    /// Auctions and bids keyed by auction id.
    Q4Key,
    /// Query 4's closing prices per auction.
    Q4Close(Q4Close),
    /// Query 4's average closing price per category.
    Q4Avg(Q4Avg),
    /// People keyed by id and auctions keyed by seller.
    Q8Key,
    /// Query 8's join per tumbling window.
    Q8Join(Q8Join),
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

fn event(record: &Record<'_>) -> Result<Event, Error> {
    Event::from_json(record.value).map_err(|e| Error::msg(format!("not a Nexmark event: {e}")))
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
            "q3-key" => Nexmark::Q3Key,
            "q3-join" => Nexmark::Q3Join(Q3Join::open()?),
            "q4-key" => Nexmark::Q4Key,
            "q4-close" => Nexmark::Q4Close(Q4Close::open()?),
            "q4-avg" => Nexmark::Q4Avg(Q4Avg::open()?),
            "q8-key" => Nexmark::Q8Key,
            "q8-join" => Nexmark::Q8Join(Q8Join::open(arg(&words, 1, DEFAULT_SIZE)?)?),
            other => {
                return Err(Error::msg(format!(
                    "unknown stage `{other}`: expected q0, q1, q2, bids-by-auction, bids-by-bidder, bids-by-window, \
                     q5-count, q5-max, q7-max, q3-key, q3-join, q4-key, q4-close, q4-avg, q8-key or q8-join"
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
            Nexmark::Q3Key => {
                match event(&record)? {
                    Event::Person(p) if Q3_STATES.contains(&p.state.as_str()) => {
                        out.emit(Some(p.id.to_string().as_bytes()), record.value);
                    }
                    Event::Auction(a) if a.category == Q3_CATEGORY => {
                        out.emit(Some(a.seller.to_string().as_bytes()), record.value);
                    }
                    _ => {}
                }
                Ok(())
            }
            Nexmark::Q4Key => {
                match event(&record)? {
                    Event::Auction(a) => out.emit(Some(a.id.to_string().as_bytes()), record.value),
                    Event::Bid(b) => out.emit(Some(b.auction.to_string().as_bytes()), record.value),
                    Event::Person(_) => {}
                }
                Ok(())
            }
            Nexmark::Q8Key => {
                match event(&record)? {
                    Event::Person(p) => out.emit(Some(p.id.to_string().as_bytes()), record.value),
                    Event::Auction(a) => {
                        out.emit(Some(a.seller.to_string().as_bytes()), record.value);
                    }
                    Event::Bid(_) => {}
                }
                Ok(())
            }
            Nexmark::Q3Join(j) => j.process(record, out),
            Nexmark::Q4Close(c) => c.process(record),
            Nexmark::Q4Avg(a) => a.process(record, out),
            Nexmark::Q8Join(j) => j.process(record),
        }
    }

    fn on_timer(&mut self, timer: Timer<'_>, out: &mut Emitter) -> Result<(), Error> {
        match self {
            Nexmark::Q5Count(w) => w.on_timer(timer, out),
            Nexmark::Q5Max(m) | Nexmark::Q7Max(m) => m.on_timer(timer, out),
            Nexmark::Q4Close(c) => c.on_timer(timer, out),
            Nexmark::Q8Join(j) => j.on_timer(timer, out),
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

/// A query 3 seller: what its output lines name.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seller {
    name: String,
    city: String,
    state: String,
}

impl Structured for Seller {
    fn type_descriptor() -> Option<String> {
        Some("record{name: text, city: text, state: text}".into())
    }
}

/// Query 3's incremental join, keyed by person id: the seller once they
/// registered, and the ids of their auctions that came before them. Each
/// (person, auction) pair is emitted once, when its second half arrives.
pub struct Q3Join {
    seller: ValueState<Seller>,
    waiting: ListState<u64>,
}

impl Q3Join {
    fn open() -> Result<Self, Error> {
        Ok(Self {
            seller: ValueState::new("seller")?,
            waiting: ListState::new("waiting-auctions")?,
        })
    }

    fn line(seller: &Seller, auction: u64) -> Vec<u8> {
        #[derive(Serialize)]
        struct Out<'a> {
            name: &'a str,
            city: &'a str,
            state: &'a str,
            id: u64,
        }
        json(&Out {
            name: &seller.name,
            city: &seller.city,
            state: &seller.state,
            id: auction,
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        match event(&record)? {
            Event::Person(p) => {
                let seller = Seller {
                    name: p.name,
                    city: p.city,
                    state: p.state,
                };
                let waiting = self.waiting.get()?;
                if !waiting.is_empty() {
                    for auction in waiting {
                        out.emit(None, &Self::line(&seller, auction));
                    }
                    self.waiting.clear()?;
                }
                self.seller.set(seller)
            }
            Event::Auction(a) => match self.seller.get()? {
                Some(seller) => {
                    out.emit(None, &Self::line(&seller, a.id));
                    Ok(())
                }
                None => self.waiting.add(a.id),
            },
            Event::Bid(_) => Ok(()),
        }
    }
}

/// An auction query 4 waits to close: when, its category, and the
/// highest valid bid so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpenAuction {
    date_time: i64,
    expires: i64,
    category: u64,
    best: Option<u64>,
}

impl Structured for OpenAuction {
    fn type_descriptor() -> Option<String> {
        Some("record{date_time: int, expires: int, category: uint, best: option<uint>}".into())
    }
}

/// Query 4's closing prices, keyed by auction id.
///
/// Keeps the auction and its highest bid with `date_time <= bid.date_time
/// <= expires`, and at an event-time timer at `expires` emits that price
/// keyed by category (nothing without a valid bid) and clears the key.
/// A bid before its auction is kept (the highest price per bid time) with
/// a cleanup timer at its time: an auction it is valid for opened no later
/// than the bid, so it has arrived by the time the watermark reaches the
/// bid; if none has, the bid is dropped. So bids after their auction
/// closed, or for auctions that never come, leave nothing behind.
pub struct Q4Close {
    auction: ValueState<OpenAuction>,
    early_bids: MapState<i64, u64>,
}

impl Q4Close {
    fn open() -> Result<Self, Error> {
        Ok(Self {
            auction: ValueState::new("auction")?,
            early_bids: MapState::new("early-bids")?,
        })
    }

    fn process(&mut self, record: Record<'_>) -> Result<(), Error> {
        match event(&record)? {
            Event::Auction(a) => {
                let mut best = None;
                for (time, price) in self.early_bids.entries()? {
                    if a.date_time <= time && time <= a.expires {
                        best = best.max(Some(price));
                    }
                    if time != a.expires {
                        delete_event_time_timer(time)?;
                    }
                }
                self.early_bids.clear()?;
                self.auction.set(OpenAuction {
                    date_time: a.date_time,
                    expires: a.expires,
                    category: a.category,
                    best,
                })?;
                register_event_time_timer(a.expires)
            }
            Event::Bid(b) => match self.auction.get()? {
                Some(mut a) => {
                    if a.date_time <= b.date_time
                        && b.date_time <= a.expires
                        && a.best.is_none_or(|best| b.price > best)
                    {
                        a.best = Some(b.price);
                        self.auction.set(a)?;
                    }
                    Ok(())
                }
                None => match self.early_bids.get(&b.date_time)? {
                    Some(price) if price >= b.price => Ok(()),
                    Some(_) => self.early_bids.put(b.date_time, b.price),
                    None => {
                        self.early_bids.put(b.date_time, b.price)?;
                        register_event_time_timer(b.date_time)
                    }
                },
            },
            Event::Person(_) => Ok(()),
        }
    }

    fn on_timer(&mut self, timer: Timer<'_>, out: &mut Emitter) -> Result<(), Error> {
        match self.auction.get()? {
            Some(a) if a.expires == timer.timestamp => {
                if let Some(price) = a.best {
                    out.emit(
                        Some(a.category.to_string().as_bytes()),
                        price.to_string().as_bytes(),
                    );
                }
                self.auction.clear()
            }
            // A bid's cleanup timer the auction's arrival did not delete.
            Some(_) => Ok(()),
            // The watermark passed these bids and no auction came for them.
            None => {
                for (time, _) in self.early_bids.entries()? {
                    if time <= timer.timestamp {
                        self.early_bids.remove(&time)?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// A category's closing prices so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Total {
    sum: u64,
    count: u64,
}

impl Structured for Total {
    fn type_descriptor() -> Option<String> {
        Some("record{sum: uint, count: uint}".into())
    }
}

/// Query 4's average closing price, keyed by category: emits
/// `{"category","avg"}` (rounded down) at every closing price.
pub struct Q4Avg {
    total: ValueState<Total>,
}

impl Q4Avg {
    fn open() -> Result<Self, Error> {
        Ok(Self {
            total: ValueState::new("total")?,
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
        #[derive(Serialize)]
        struct Out {
            category: u64,
            avg: u64,
        }
        let category: u64 = std::str::from_utf8(record.key.unwrap_or_default())
            .ok()
            .and_then(|k| k.parse().ok())
            .ok_or_else(|| Error::msg("records must be keyed by their category"))?;
        let price: u64 = record
            .value_str()?
            .parse()
            .map_err(|_| Error::msg("expected a closing price"))?;
        let mut total = self.total.get()?.unwrap_or_default();
        total.sum = total
            .sum
            .checked_add(price)
            .ok_or_else(|| Error::msg("the sum of closing prices overflows"))?;
        total.count += 1;
        let avg = total.sum / total.count;
        self.total.set(total)?;
        out.emit(None, &json(&Out { category, avg }));
        Ok(())
    }
}

/// What query 8 knows of one person in one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct NewUser {
    name: Option<String>,
    sold: bool,
}

impl Structured for NewUser {
    fn type_descriptor() -> Option<String> {
        Some("record{name: option<text>, sold: bool}".into())
    }
}

/// Query 8's window join, keyed by person id: per tumbling window (by
/// start), whether the person registered in it (and their name) and
/// whether they opened an auction in it. An event-time timer at the
/// window's last millisecond emits `{"id","name","window_start"}` if both
/// hold, and forgets the window.
pub struct Q8Join {
    size: i64,
    windows: MapState<i64, NewUser>,
}

impl Q8Join {
    fn open(size: i64) -> Result<Self, Error> {
        if size <= 0 {
            return Err(Error::msg("the window size must be positive"));
        }
        Ok(Self {
            size,
            windows: MapState::new("new-users")?,
        })
    }

    fn process(&mut self, record: Record<'_>) -> Result<(), Error> {
        let (time, name) = match event(&record)? {
            Event::Person(p) => (p.date_time, Some(p.name)),
            Event::Auction(a) => (a.date_time, None),
            Event::Bid(_) => return Ok(()),
        };
        let start = tumble_window_start(time, self.size);
        let old = self.windows.get(&start)?;
        if old.is_none() {
            register_event_time_timer(start + self.size - 1)?;
        }
        let mut new = old.clone().unwrap_or_default();
        match name {
            Some(name) => new.name = Some(name),
            None => new.sold = true,
        }
        if old.as_ref() != Some(&new) {
            self.windows.put(start, new)?;
        }
        Ok(())
    }

    fn on_timer(&mut self, timer: Timer<'_>, out: &mut Emitter) -> Result<(), Error> {
        #[derive(Serialize)]
        struct Out<'a> {
            id: u64,
            name: &'a str,
            window_start: i64,
        }
        let start = timer.timestamp + 1 - self.size;
        let Some(window) = self.windows.get(&start)? else {
            return Ok(());
        };
        self.windows.remove(&start)?;
        if let (Some(name), true) = (&window.name, window.sold) {
            let id = std::str::from_utf8(timer.key)
                .ok()
                .and_then(|k| k.parse().ok())
                .ok_or_else(|| Error::msg("records must be keyed by person id"))?;
            out.emit(
                None,
                &json(&Out {
                    id,
                    name,
                    window_start: start,
                }),
            );
        }
        Ok(())
    }
}

weir_sdk::export!(Nexmark);

#[cfg(test)]
mod tests {
    use weir_nexmark::{Auction, Person};
    use weir_sdk::testing::{Harness, TestRecord};
    use weir_sdk::time::TimeDomain;

    use super::*;

    fn person(id: u64, name: &str, state: &str, date_time: i64) -> Event {
        Event::Person(Person {
            id,
            name: name.into(),
            email_address: "a@b.com".into(),
            credit_card: "0000 0000 0000 0000".into(),
            city: "Boise".into(),
            state: state.into(),
            date_time,
            extra: String::new(),
        })
    }

    fn auction(id: u64, seller: u64, category: u64, date_time: i64, expires: i64) -> Event {
        Event::Auction(Auction {
            id,
            item_name: "item".into(),
            description: "desc".into(),
            initial_bid: 1,
            reserve: 2,
            date_time,
            expires,
            seller,
            category,
            extra: String::new(),
        })
    }

    fn bid(auction: u64, price: u64, date_time: i64) -> Event {
        Event::Bid(Bid {
            auction,
            bidder: 1,
            price,
            channel: "Google".into(),
            url: "https://www.nexmark.com/googl/item.htm?query=1".into(),
            date_time,
            extra: String::new(),
        })
    }

    fn keyed(key: u64, e: &Event) -> TestRecord {
        TestRecord::keyed(key.to_string(), e.to_json()).at(e.date_time())
    }

    fn values(out: &[TestRecord]) -> Vec<String> {
        out.iter()
            .map(|r| String::from_utf8(r.value.clone()).unwrap())
            .collect()
    }

    #[test]
    fn q3_key_and_join_pair_sellers_and_auctions_in_either_order() {
        let events = [
            auction(2000, 7, 10, 0, 9),
            auction(2001, 7, 11, 0, 9),
            person(7, "Kate Smith", "OR", 1),
            auction(2002, 7, 10, 2, 9),
            person(8, "Paul White", "WA", 1),
        ];
        let mut key = Harness::<Nexmark>::open("q3-key").unwrap();
        let unkeyed: Vec<_> = events
            .iter()
            .map(|e| TestRecord::unkeyed(e.to_json()).at(e.date_time()))
            .collect();
        let keyed_out = key.process(&unkeyed).unwrap();
        drop(key);
        assert_eq!(keyed_out.len(), 3, "category 11 and WA dropped");
        assert!(keyed_out.iter().all(|r| r.key.as_deref() == Some(b"7")));

        let mut join = Harness::<Nexmark>::open("q3-join").unwrap();
        let out = join.process(&keyed_out).unwrap();
        assert_eq!(
            values(&out),
            [
                r#"{"name":"Kate Smith","city":"Boise","state":"OR","id":2000}"#,
                r#"{"name":"Kate Smith","city":"Boise","state":"OR","id":2002}"#,
            ]
        );
        join.snapshot(1).unwrap();
        assert!(join.host_list("waiting-auctions", b"7").is_empty());
    }

    #[test]
    fn q4_close_keeps_early_bids_and_leaves_no_state_behind() {
        let mut close = Harness::<Nexmark>::open("q4-close").unwrap();
        let out = close
            .process(&[
                // Before their auction: one valid (at its opening), one early.
                keyed(1, &bid(1, 50, 10)),
                keyed(1, &bid(1, 900, 9)),
                keyed(1, &auction(1, 7, 12, 10, 20)),
                keyed(1, &bid(1, 40, 15)),
                keyed(1, &bid(1, 60, 20)),
                keyed(1, &bid(1, 999, 21)), // after expires
                // An auction without a valid bid (one too early).
                keyed(2, &auction(2, 7, 13, 10, 20)),
                keyed(2, &bid(2, 5, 9)),
                // Bids of an auction that never comes.
                keyed(3, &bid(3, 5, 12)),
                keyed(3, &bid(3, 6, 12)),
                keyed(3, &bid(3, 7, 13)),
            ])
            .unwrap();
        assert!(out.is_empty());
        // The auction's arrival deleted its bids' cleanup timers.
        assert_eq!(
            close.timers(TimeDomain::EventTime),
            [
                (12, b"3".to_vec()),
                (13, b"3".to_vec()),
                (20, b"1".to_vec()),
                (20, b"2".to_vec()),
            ]
        );
        assert!(close.watermark(12).unwrap().is_empty());
        let out = close.watermark(20).unwrap();
        assert_eq!(out, [TestRecord::keyed("12", "60").at(20)]);
        // A bid after the auction closed waits for the watermark, then goes.
        assert!(
            close
                .process(&[keyed(1, &bid(1, 1, 25))])
                .unwrap()
                .is_empty()
        );
        assert!(close.watermark(i64::MAX).unwrap().is_empty());
        close.snapshot(1).unwrap();
        assert!(close.timers(TimeDomain::EventTime).is_empty());
        for key in [b"1", b"2", b"3"] {
            assert_eq!(close.host_value("auction", key), None);
            assert!(close.host_map("early-bids", key).is_empty());
        }
    }

    #[test]
    fn q4_avg_emits_the_running_average_rounded_down() {
        let mut avg = Harness::<Nexmark>::open("q4-avg").unwrap();
        let out = avg
            .process(&[
                TestRecord::keyed("10", "30"),
                TestRecord::keyed("11", "7"),
                TestRecord::keyed("10", "45"),
            ])
            .unwrap();
        assert_eq!(
            values(&out),
            [
                r#"{"category":10,"avg":30}"#,
                r#"{"category":11,"avg":7}"#,
                r#"{"category":10,"avg":37}"#,
            ]
        );
    }

    #[test]
    fn q8_join_emits_people_who_registered_and_sold_in_one_window() {
        let mut join = Harness::<Nexmark>::open("q8-join 10").unwrap();
        let out = join
            .process(&[
                keyed(1, &auction(100, 1, 10, 9, 50)),
                keyed(1, &person(1, "A", "OR", 0)),
                keyed(1, &auction(101, 1, 10, 5, 50)),
                keyed(2, &person(2, "B", "OR", 9)),
                keyed(2, &auction(102, 2, 10, 10, 50)), // the next window
                keyed(4, &auction(104, 4, 11, 19, 50)), // never registered
            ])
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(
            values(&join.watermark(9).unwrap()),
            [r#"{"id":1,"name":"A","window_start":0}"#]
        );
        assert!(join.watermark(i64::MAX).unwrap().is_empty());
        join.snapshot(1).unwrap();
        assert!(join.timers(TimeDomain::EventTime).is_empty());
        for key in [b"1", b"2", b"4"] {
            assert!(join.host_map("new-users", key).is_empty());
        }
    }
}
