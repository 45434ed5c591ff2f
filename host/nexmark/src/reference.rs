//! Plain reference implementations of the Nexmark queries, the expected
//! output the query plugins are checked against (`docs/nexmark.md`).
//!
//! Each query takes every event of a run, in any order, and returns its
//! output as canonical JSON lines: compact (no spaces), keys in the
//! documented order, integers only, sorted bytewise. A plugin's output
//! lines, sorted, must equal them exactly. Windowed queries count every
//! window that holds an event as closed, as a run that ends with its
//! final watermark at +∞ does; query 4 closes auctions up to an explicit
//! watermark instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::event::{Auction, Bid, Event, Person};

/// Query 5's default sliding window size: 10 s.
pub const HOP_SIZE_MS: i64 = 10_000;
/// Query 5's default window slide: 2 s.
pub const HOP_SLIDE_MS: i64 = 2_000;
/// Queries 7 and 8's default tumbling window size: 10 s.
pub const TUMBLE_SIZE_MS: i64 = 10_000;
/// Query 3's seller states.
pub const Q3_STATES: [&str; 3] = ["OR", "ID", "CA"];
/// Query 3's auction category.
pub const Q3_CATEGORY: u64 = 10;
/// Query 2 keeps bids on auctions whose id is a multiple of this.
pub const Q2_AUCTION_MODULUS: u64 = 123;
/// The queries this module implements, by name.
pub const QUERIES: [&str; 8] = ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8"];

/// Returns the expected output of the query named `query` (one of
/// [`QUERIES`]) with its default parameters, or `None` for an unknown
/// name.
pub fn expected(query: &str, events: &[Event]) -> Option<Vec<String>> {
    Some(match query {
        "q0" => q0(events),
        "q1" => q1(events),
        "q2" => q2(events),
        "q3" => q3(events),
        "q4" => q4(events),
        "q5" => q5(events),
        "q7" => q7(events),
        "q8" => q8(events),
        _ => return None,
    })
}

/// Query 0, pass-through: every bid as `{"auction","bidder","price",
/// "date_time"}`.
pub fn q0(events: &[Event]) -> Vec<String> {
    #[derive(Serialize)]
    struct Out {
        auction: u64,
        bidder: u64,
        price: u64,
        date_time: i64,
    }
    sorted(bids(events).map(|b| Out {
        auction: b.auction,
        bidder: b.bidder,
        price: b.price,
        date_time: b.date_time,
    }))
}

/// Query 1, currency conversion: every bid as `{"auction","bidder",
/// "price","date_time"}` with the price converted, `price * 908 / 1000`
/// in integer division.
pub fn q1(events: &[Event]) -> Vec<String> {
    #[derive(Serialize)]
    struct Out {
        auction: u64,
        bidder: u64,
        price: u64,
        date_time: i64,
    }
    sorted(bids(events).map(|b| Out {
        auction: b.auction,
        bidder: b.bidder,
        price: convert_price(b.price),
        date_time: b.date_time,
    }))
}

/// Returns query 1's converted price: `price * 908 / 1000`, rounded
/// down, computed without overflow.
pub fn convert_price(price: u64) -> u64 {
    (u128::from(price) * 908 / 1000) as u64
}

/// Query 2, selection: bids on auctions whose id is a multiple of 123, as
/// `{"auction","price"}`.
pub fn q2(events: &[Event]) -> Vec<String> {
    #[derive(Serialize)]
    struct Out {
        auction: u64,
        price: u64,
    }
    sorted(
        bids(events)
            .filter(|b| b.auction % Q2_AUCTION_MODULUS == 0)
            .map(|b| Out {
                auction: b.auction,
                price: b.price,
            }),
    )
}

/// Query 3, local item suggestion: every pair of an auction in category
/// 10 and its seller, a person in state OR, ID or CA (`auction.seller ==
/// person.id`), as `{"name","city","state","id"}` with the person's name,
/// city and state and the auction's id. One line per pair of events,
/// whichever came first.
pub fn q3(events: &[Event]) -> Vec<String> {
    #[derive(Serialize)]
    struct Out<'a> {
        name: &'a str,
        city: &'a str,
        state: &'a str,
        id: u64,
    }
    let mut sellers: HashMap<u64, Vec<&Person>> = HashMap::new();
    for p in people(events).filter(|p| Q3_STATES.contains(&p.state.as_str())) {
        sellers.entry(p.id).or_default().push(p);
    }
    sorted(
        auctions(events)
            .filter(|a| a.category == Q3_CATEGORY)
            .flat_map(|a| {
                sellers
                    .get(&a.seller)
                    .into_iter()
                    .flatten()
                    .map(move |p| Out {
                        name: &p.name,
                        city: &p.city,
                        state: &p.state,
                        id: a.id,
                    })
            }),
    )
}

/// Query 4, average closing price per category, over the auctions closed
/// when the last event happened: [`q4_at`] with the watermark the largest
/// `date_time` of all events (no output for no events).
pub fn q4(events: &[Event]) -> Vec<String> {
    match events.iter().map(Event::date_time).max() {
        Some(last) => q4_at(events, last),
        None => Vec::new(),
    }
}

/// Query 4, average closing price per category, over the auctions closed
/// at `watermark`: `{"category","avg"}` per category that has one.
///
/// An auction is closed if `expires <= watermark`. Its closing price is
/// the highest price of its bids with `date_time` in
/// `auction.date_time..=auction.expires`; a closed auction without such
/// a bid does not count. A category's `avg` is the sum of its closed
/// auctions' closing prices divided by their number, rounded down. (A
/// streaming plugin emits an update each time an auction closes; the
/// last update per category is what compares with this.)
pub fn q4_at(events: &[Event], watermark: i64) -> Vec<String> {
    #[derive(Serialize)]
    struct Out {
        category: u64,
        avg: u64,
    }
    let mut bids_by_auction: HashMap<u64, Vec<&Bid>> = HashMap::new();
    for b in bids(events) {
        bids_by_auction.entry(b.auction).or_default().push(b);
    }
    // category -> (sum of closing prices, closed auctions)
    let mut totals: BTreeMap<u64, (u128, u128)> = BTreeMap::new();
    for a in auctions(events).filter(|a| a.expires <= watermark) {
        let closing = bids_by_auction
            .get(&a.id)
            .into_iter()
            .flatten()
            .filter(|b| a.date_time <= b.date_time && b.date_time <= a.expires)
            .map(|b| b.price)
            .max();
        if let Some(price) = closing {
            let total = totals.entry(a.category).or_default();
            total.0 += u128::from(price);
            total.1 += 1;
        }
    }
    sorted(totals.into_iter().map(|(category, (sum, count))| Out {
        category,
        avg: (sum / count) as u64,
    }))
}

/// Query 5, hot items, with 10 s windows sliding by 2 s: [`q5_with`]
/// with [`HOP_SIZE_MS`] and [`HOP_SLIDE_MS`].
pub fn q5(events: &[Event]) -> Vec<String> {
    q5_with(events, HOP_SIZE_MS, HOP_SLIDE_MS)
}

/// Query 5, hot items: for each sliding window, the auction(s) with the
/// most bids, as `{"auction","num","window_start","window_end"}`.
///
/// Windows are `[start, start + size_ms)` for every `start` a multiple of
/// `slide_ms` (from the epoch, as Flink's `HOP`); a bid belongs to every
/// window that contains its `date_time`. `num` is the auction's bid count
/// in the window; every auction whose count equals the window's highest
/// is a line. Windows without bids have no lines.
///
/// Panics unless `size_ms` and `slide_ms` are positive.
pub fn q5_with(events: &[Event], size_ms: i64, slide_ms: i64) -> Vec<String> {
    #[derive(Serialize)]
    struct Out {
        auction: u64,
        num: u64,
        window_start: i64,
        window_end: i64,
    }
    assert!(
        size_ms > 0 && slide_ms > 0,
        "window size and slide must be positive"
    );
    // window start -> auction -> bids
    let mut counts: BTreeMap<i64, BTreeMap<u64, u64>> = BTreeMap::new();
    for b in bids(events) {
        for start in hop_window_starts(b.date_time, size_ms, slide_ms) {
            *counts
                .entry(start)
                .or_default()
                .entry(b.auction)
                .or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for (start, per_auction) in counts {
        let max = per_auction.values().copied().max().unwrap_or(0);
        for (auction, num) in per_auction {
            if num == max {
                out.push(Out {
                    auction,
                    num,
                    window_start: start,
                    window_end: start + size_ms,
                });
            }
        }
    }
    sorted(out)
}

/// Returns the starts of the sliding windows `[start, start + size_ms)`,
/// `start` a multiple of `slide_ms`, that contain `time`: latest first.
pub fn hop_window_starts(time: i64, size_ms: i64, slide_ms: i64) -> Vec<i64> {
    let mut starts = Vec::new();
    let mut start = time.div_euclid(slide_ms) * slide_ms;
    while start > time - size_ms {
        starts.push(start);
        start -= slide_ms;
    }
    starts
}

/// Returns the start of the tumbling window `[start, start + size_ms)`,
/// `start` a multiple of `size_ms`, that contains `time`.
pub fn tumble_window_start(time: i64, size_ms: i64) -> i64 {
    time.div_euclid(size_ms) * size_ms
}

/// Query 7, highest bid, with 10 s tumbling windows: [`q7_with`] with
/// [`TUMBLE_SIZE_MS`].
pub fn q7(events: &[Event]) -> Vec<String> {
    q7_with(events, TUMBLE_SIZE_MS)
}

/// Query 7, highest bid: for each tumbling window `[start, start +
/// size_ms)` (`start` a multiple of `size_ms`), every bid in it whose
/// price is the window's highest, as `{"auction","price","bidder",
/// "date_time","window_end"}`.
///
/// Panics unless `size_ms` is positive.
pub fn q7_with(events: &[Event], size_ms: i64) -> Vec<String> {
    #[derive(Serialize)]
    struct Out {
        auction: u64,
        price: u64,
        bidder: u64,
        date_time: i64,
        window_end: i64,
    }
    assert!(size_ms > 0, "window size must be positive");
    let mut max_price: HashMap<i64, u64> = HashMap::new();
    for b in bids(events) {
        let max = max_price
            .entry(tumble_window_start(b.date_time, size_ms))
            .or_default();
        *max = (*max).max(b.price);
    }
    sorted(
        bids(events)
            .filter(|b| max_price[&tumble_window_start(b.date_time, size_ms)] == b.price)
            .map(|b| Out {
                auction: b.auction,
                price: b.price,
                bidder: b.bidder,
                date_time: b.date_time,
                window_end: tumble_window_start(b.date_time, size_ms) + size_ms,
            }),
    )
}

/// Query 8, monitor new users, with 10 s tumbling windows: [`q8_with`]
/// with [`TUMBLE_SIZE_MS`].
pub fn q8(events: &[Event]) -> Vec<String> {
    q8_with(events, TUMBLE_SIZE_MS)
}

/// Query 8, monitor new users: people who registered in a tumbling window
/// `[start, start + size_ms)` and sold at least one auction opened in the
/// same window, as `{"id","name","window_start"}`, once per person id,
/// name and window.
///
/// Panics unless `size_ms` is positive.
pub fn q8_with(events: &[Event], size_ms: i64) -> Vec<String> {
    #[derive(Serialize)]
    struct Out<'a> {
        id: u64,
        name: &'a str,
        window_start: i64,
    }
    assert!(size_ms > 0, "window size must be positive");
    let sellers: BTreeSet<(u64, i64)> = auctions(events)
        .map(|a| (a.seller, tumble_window_start(a.date_time, size_ms)))
        .collect();
    let matches: BTreeSet<(u64, &str, i64)> = people(events)
        .map(|p| {
            (
                p.id,
                p.name.as_str(),
                tumble_window_start(p.date_time, size_ms),
            )
        })
        .filter(|(id, _, start)| sellers.contains(&(*id, *start)))
        .collect();
    sorted(matches.into_iter().map(|(id, name, window_start)| Out {
        id,
        name,
        window_start,
    }))
}

/// Returns every bid among `events`.
fn bids(events: &[Event]) -> impl Iterator<Item = &Bid> + Clone {
    events.iter().filter_map(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

/// Returns every auction among `events`.
fn auctions(events: &[Event]) -> impl Iterator<Item = &Auction> {
    events.iter().filter_map(|e| match e {
        Event::Auction(a) => Some(a),
        _ => None,
    })
}

/// Returns every person among `events`.
fn people(events: &[Event]) -> impl Iterator<Item = &Person> {
    events.iter().filter_map(|e| match e {
        Event::Person(p) => Some(p),
        _ => None,
    })
}

/// Returns each output as a compact JSON line, sorted bytewise.
fn sorted<T: Serialize>(outputs: impl IntoIterator<Item = T>) -> Vec<String> {
    let mut lines: Vec<String> = outputs
        .into_iter()
        .map(|out| serde_json::to_string(&out).expect("query outputs serialise"))
        .collect();
    lines.sort_unstable();
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::GeneratorConfig;

    fn person(id: u64, name: &str, state: &str, date_time: i64) -> Event {
        Event::Person(Person {
            id,
            name: name.into(),
            email_address: "a@b.com".into(),
            credit_card: "0000 0000 0000 0000".into(),
            city: format!("{state}-city"),
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

    fn bid(auction: u64, bidder: u64, price: u64, date_time: i64) -> Event {
        Event::Bid(Bid {
            auction,
            bidder,
            price,
            channel: "Google".into(),
            url: "https://www.nexmark.com/googl/item.htm?query=1".into(),
            date_time,
            extra: String::new(),
        })
    }

    #[test]
    fn q0_q1_q2_map_and_filter_bids() {
        let events = vec![
            bid(246, 1, 1000, 20),
            person(1, "A B", "OR", 0),
            bid(123, 2, 999, 10),
            bid(124, 3, 5, 30),
            bid(0, 4, 1, 40),
        ];
        assert_eq!(
            q0(&events),
            [
                r#"{"auction":0,"bidder":4,"price":1,"date_time":40}"#,
                r#"{"auction":123,"bidder":2,"price":999,"date_time":10}"#,
                r#"{"auction":124,"bidder":3,"price":5,"date_time":30}"#,
                r#"{"auction":246,"bidder":1,"price":1000,"date_time":20}"#,
            ]
        );
        assert_eq!(
            q1(&events),
            [
                r#"{"auction":0,"bidder":4,"price":0,"date_time":40}"#,
                r#"{"auction":123,"bidder":2,"price":907,"date_time":10}"#,
                r#"{"auction":124,"bidder":3,"price":4,"date_time":30}"#,
                r#"{"auction":246,"bidder":1,"price":908,"date_time":20}"#,
            ]
        );
        assert_eq!(
            q2(&events),
            [
                r#"{"auction":0,"price":1}"#,
                r#"{"auction":123,"price":999}"#,
                r#"{"auction":246,"price":1000}"#,
            ]
        );
        assert_eq!(
            convert_price(u64::MAX),
            (u128::from(u64::MAX) * 908 / 1000) as u64
        );
    }

    #[test]
    fn q3_joins_in_either_order() {
        let events = vec![
            // Auction before its seller registers.
            auction(2000, 1001, 10, 0, 100),
            person(1001, "Kate Smith", "OR", 5),
            auction(2001, 1001, 10, 10, 100),
            auction(2002, 1001, 11, 10, 100),    // wrong category
            person(1002, "Paul White", "WA", 5), // wrong state
            auction(2003, 1002, 10, 10, 100),
            person(1003, "Luke Jones", "CA", 5),
            auction(2004, 1003, 10, 1, 100),
            auction(2005, 1999, 10, 1, 100), // no such seller
        ];
        assert_eq!(
            q3(&events),
            [
                r#"{"name":"Kate Smith","city":"OR-city","state":"OR","id":2000}"#,
                r#"{"name":"Kate Smith","city":"OR-city","state":"OR","id":2001}"#,
                r#"{"name":"Luke Jones","city":"CA-city","state":"CA","id":2004}"#,
            ]
        );
    }

    #[test]
    fn q4_averages_closing_prices_of_closed_auctions() {
        let events = vec![
            // Category 10: closes at 100 with 30 (the bid at 101 is late,
            // the one at 9 early).
            auction(1, 7, 10, 10, 100),
            bid(1, 8, 20, 10),
            bid(1, 8, 30, 100),
            bid(1, 8, 500, 101),
            bid(1, 8, 400, 9),
            // Category 10: closes at 150 with 45, so avg (30 + 45) / 2 = 37.
            auction(2, 7, 10, 50, 150),
            bid(2, 8, 45, 120),
            // Category 10: closed but no bid in range: does not count.
            auction(3, 7, 10, 50, 60),
            bid(3, 8, 1000, 61),
            // Category 11: still open at the last event (time 200).
            auction(4, 7, 11, 50, 201),
            bid(4, 8, 5, 60),
            // Category 12: expires exactly at the last event: closed.
            auction(5, 7, 12, 100, 200),
            bid(5, 8, 7, 200),
            person(9, "X Y", "OR", 0),
        ];
        assert_eq!(
            q4(&events),
            [r#"{"category":10,"avg":37}"#, r#"{"category":12,"avg":7}"#]
        );
        assert_eq!(
            q4_at(&events, 201),
            [
                r#"{"category":10,"avg":37}"#,
                r#"{"category":11,"avg":5}"#,
                r#"{"category":12,"avg":7}"#,
            ]
        );
        assert_eq!(q4_at(&events, 100), [r#"{"category":10,"avg":30}"#]);
        assert!(q4(&[]).is_empty());
    }

    #[test]
    fn q5_counts_sliding_windows() {
        // Size 4, slide 2: windows [t, t+4) for even t.
        let events = vec![
            bid(1, 0, 1, 0),
            bid(1, 0, 1, 1),
            bid(2, 0, 1, 2), // exactly on a boundary: in [0,4) and [2,6)
            bid(2, 0, 1, 3),
            bid(2, 0, 1, 5),
            bid(3, 0, 1, -1), // in [-4,0) and [-2,2)
        ];
        assert_eq!(hop_window_starts(2, 4, 2), [2, 0]);
        assert_eq!(hop_window_starts(-1, 4, 2), [-2, -4]);
        assert_eq!(hop_window_starts(5, 10, 2), [4, 2, 0, -2, -4]);
        assert_eq!(
            q5_with(&events, 4, 2),
            [
                r#"{"auction":1,"num":2,"window_start":-2,"window_end":2}"#,
                // [0,4): auction 1 has 2 bids, auction 2 has 2: both.
                r#"{"auction":1,"num":2,"window_start":0,"window_end":4}"#,
                r#"{"auction":2,"num":1,"window_start":4,"window_end":8}"#,
                r#"{"auction":2,"num":2,"window_start":0,"window_end":4}"#,
                r#"{"auction":2,"num":3,"window_start":2,"window_end":6}"#,
                r#"{"auction":3,"num":1,"window_start":-4,"window_end":0}"#,
            ]
        );
        // The defaults: a bid belongs to 5 windows.
        let one = q5(&[bid(9, 0, 1, 10_000)]);
        assert_eq!(one.len(), 5);
        assert_eq!(
            one[0],
            r#"{"auction":9,"num":1,"window_start":10000,"window_end":20000}"#
        );
    }

    #[test]
    fn q7_keeps_every_bid_at_the_window_maximum() {
        let events = vec![
            bid(1, 11, 50, 0),
            bid(2, 12, 70, 3),
            bid(3, 13, 70, 9),
            bid(4, 14, 90, 10), // on the boundary: window [10, 20)
            bid(5, 15, 10, 15),
            bid(6, 16, 5, -1), // window [-10, 0)
        ];
        assert_eq!(tumble_window_start(10, 10), 10);
        assert_eq!(tumble_window_start(9, 10), 0);
        assert_eq!(tumble_window_start(-1, 10), -10);
        assert_eq!(
            q7_with(&events, 10),
            [
                r#"{"auction":2,"price":70,"bidder":12,"date_time":3,"window_end":10}"#,
                r#"{"auction":3,"price":70,"bidder":13,"date_time":9,"window_end":10}"#,
                r#"{"auction":4,"price":90,"bidder":14,"date_time":10,"window_end":20}"#,
                r#"{"auction":6,"price":5,"bidder":16,"date_time":-1,"window_end":0}"#,
            ]
        );
        // With 10 s windows: [-10 s, 0) and [0, 10 s), whose maximum is 90.
        assert_eq!(q7(&events).len(), 2);
    }

    #[test]
    fn q8_matches_registration_and_auction_windows() {
        let events = vec![
            person(1, "A", "OR", 0),
            auction(100, 1, 10, 9, 50), // same window [0, 10)
            auction(101, 1, 10, 5, 50), // again: still one line
            person(2, "B", "OR", 9),
            auction(102, 2, 10, 10, 50), // on the boundary: next window
            person(3, "C", "OR", 12),
            auction(103, 3, 11, 19, 50),
            auction(104, 4, 11, 19, 50), // seller never registered
        ];
        assert_eq!(
            q8_with(&events, 10),
            [
                r#"{"id":1,"name":"A","window_start":0}"#,
                r#"{"id":3,"name":"C","window_start":10}"#,
            ]
        );
        // With 10 s windows all three are in [0, 10 s).
        assert_eq!(q8(&events).len(), 3);
    }

    #[test]
    fn expected_dispatches_by_name() {
        let config = GeneratorConfig {
            seed: 3,
            max_events: Some(5_000),
            ..GeneratorConfig::default()
        };
        let events: Vec<Event> = config.events(0..5_000).collect();
        let mut shuffled = events.clone();
        shuffled.reverse();
        for query in QUERIES {
            let out = expected(query, &events).unwrap();
            assert_eq!(out, expected(query, &shuffled).unwrap(), "{query}");
            assert!(out.windows(2).all(|w| w[0] <= w[1]), "{query} sorted");
            for line in &out {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                for field in value.as_object().unwrap().values() {
                    assert!(
                        field.is_string() || field.is_i64() || field.is_u64(),
                        "{line}"
                    );
                }
            }
        }
        assert_eq!(q0(&events).len(), 4_600);
        // The generated data gives every query something to say.
        for query in ["q2", "q3", "q4", "q5", "q7", "q8"] {
            assert!(!expected(query, &events).unwrap().is_empty(), "{query}");
        }
        assert!(expected("q6", &events).is_none());
    }
}
