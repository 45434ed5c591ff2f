//! The Nexmark event generator, modelled on the standard one (Apache
//! Beam's `org.apache.beam.sdk.nexmark.sources.generator`, also used by
//! `nexmark-flink`).
//!
//! Event number `n` (from 0) alone decides what the event is:
//!
//! - its kind, by `n % 50`: `0` a person, `1..=3` an auction, else a bid
//!   (proportions 1 : 3 : 46);
//! - the id of a new person or auction: people and auctions are numbered
//!   in event order from [`FIRST_PERSON_ID`] and [`FIRST_AUCTION_ID`];
//! - the ids an auction or bid refers to: a "hot" recent seller, bidder or
//!   auction, or one drawn from the active people and in-flight auctions
//!   plus a small lead ([`PERSON_ID_LEAD`], [`AUCTION_ID_LEAD`]);
//! - its time: `base_time_ms + n * 1000 / events_per_second`;
//! - everything random, drawn from an RNG seeded with `(seed, n)` only.
//!
//! So any split of the event numbers produces the same events, and a
//! split resumes exactly from a count of events produced
//! ([`SplitGenerator`]).

use std::fmt;
use std::fmt::Write as _;
use std::ops::Range;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};

use crate::event::{Auction, Bid, Event, Person};

/// The id of the first person.
pub const FIRST_PERSON_ID: u64 = 1000;
/// The id of the first auction.
pub const FIRST_AUCTION_ID: u64 = 1000;
/// The first auction category; categories are
/// `FIRST_CATEGORY_ID..FIRST_CATEGORY_ID + NUM_CATEGORIES`.
pub const FIRST_CATEGORY_ID: u64 = 10;
/// How many auction categories there are.
pub const NUM_CATEGORIES: u64 = 5;

/// People per [`PROPORTION_DENOMINATOR`] events.
pub const PERSON_PROPORTION: u64 = 1;
/// Auctions per [`PROPORTION_DENOMINATOR`] events.
pub const AUCTION_PROPORTION: u64 = 3;
/// Bids per [`PROPORTION_DENOMINATOR`] events.
pub const BID_PROPORTION: u64 = 46;
/// The length of the cycle of event kinds: 50.
pub const PROPORTION_DENOMINATOR: u64 = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION;

/// How far past the last person generated a random person id may point
/// (people that are "about to" register).
pub const PERSON_ID_LEAD: u64 = 10;
/// How far past the last auction generated a random auction id may point.
pub const AUCTION_ID_LEAD: u64 = 10;

/// Hot sellers, bidders and auctions are the first (sellers, auctions) or
/// second (bidders) of the last batch of this many people or auctions.
const HOT_BATCH: u64 = 100;

/// The default event-time rate: 10 000 events per second of event time,
/// the standard generator's default `firstEventRate`.
pub const DEFAULT_EVENTS_PER_SECOND: u64 = 10_000;
/// The default time of event 0: 2023-11-14T22:13:20Z, a multiple of every
/// window size the queries use.
pub const DEFAULT_BASE_TIME_MS: i64 = 1_700_000_000_000;
/// The standard number of people a random person id is drawn from.
pub const DEFAULT_NUM_ACTIVE_PEOPLE: u64 = 1000;
/// The standard number of recent auctions a random auction id is drawn
/// from; also sets the average auction length.
pub const DEFAULT_NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
/// The standard hot auction ratio: a bid is for a hot auction with
/// probability `1 - 1/2`.
pub const DEFAULT_HOT_AUCTION_RATIO: u64 = 2;
/// The standard hot seller ratio: an auction has a hot seller with
/// probability `1 - 1/4`.
pub const DEFAULT_HOT_SELLER_RATIO: u64 = 4;
/// The standard hot bidder ratio: a bid is by a hot bidder with
/// probability `1 - 1/4`.
pub const DEFAULT_HOT_BIDDER_RATIO: u64 = 4;

/// The standard US states; few, so that query 3 finds matches.
pub const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
/// The standard US cities.
pub const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
/// The standard first names.
pub const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
/// The standard last names.
pub const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
/// The hot bid channels, chosen for 99 bids in 100.
pub const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
/// The URLs of the [`HOT_CHANNELS`], index for index.
pub const HOT_URLS: [&str; 4] = [
    "https://www.nexmark.com/googl/item.htm?query=1",
    "https://www.nexmark.com/meta/item.htm?query=1",
    "https://www.nexmark.com/bidu/item.htm?query=1",
    "https://www.nexmark.com/aapl/item.htm?query=1",
];
/// How many other channels (`channel-0` … `channel-9999`) there are.
pub const CHANNELS_NUMBER: u64 = 10_000;

/// The kind of event an event number generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A [`Person`].
    Person,
    /// An [`Auction`].
    Auction,
    /// A [`Bid`].
    Bid,
}

/// Returns the kind of event number `n`: by `n % 50`, `0` is a person,
/// `1..=3` an auction, anything else a bid.
pub fn event_kind(n: u64) -> EventKind {
    let offset = n % PROPORTION_DENOMINATOR;
    if offset < PERSON_PROPORTION {
        EventKind::Person
    } else if offset < PERSON_PROPORTION + AUCTION_PROPORTION {
        EventKind::Auction
    } else {
        EventKind::Bid
    }
}

/// Returns the base-0 id of the last person generated at or before event
/// `n` (the standard `lastBase0PersonId`): the new person's own id if
/// `n` is a person.
pub fn last_base0_person_id(n: u64) -> u64 {
    let epoch = n / PROPORTION_DENOMINATOR;
    let offset = n % PROPORTION_DENOMINATOR;
    // People at offsets 0..PERSON_PROPORTION of each epoch; at least one
    // (offset 0) is at or before any offset.
    epoch * PERSON_PROPORTION + (offset + 1).min(PERSON_PROPORTION) - 1
}

/// Returns the base-0 id of the last auction generated at or before event
/// `n` (the standard `lastBase0AuctionId`): the new auction's own id if
/// `n` is an auction. Event 0 precedes every auction; it gives 0.
pub fn last_base0_auction_id(n: u64) -> u64 {
    let epoch = n / PROPORTION_DENOMINATOR;
    let offset = n % PROPORTION_DENOMINATOR;
    // Auctions at offsets PERSON_PROPORTION..PERSON_PROPORTION +
    // AUCTION_PROPORTION of each epoch.
    let in_epoch = (offset + 1)
        .saturating_sub(PERSON_PROPORTION)
        .min(AUCTION_PROPORTION);
    (epoch * AUCTION_PROPORTION + in_epoch).saturating_sub(1)
}

/// An invalid [`GeneratorConfig`] or split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid nexmark generator config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// What the generator generates. Every event is a pure function of this
/// config and the event number.
///
/// Deserialises from a map in which every field is optional (missing
/// fields take the [`Default`]) and unknown fields are an error.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Seeds every event's random content. Default 0.
    pub seed: u64,
    /// The time of event 0, in milliseconds since the epoch. Default
    /// [`DEFAULT_BASE_TIME_MS`].
    pub base_time_ms: i64,
    /// The event-time rate: event `n` happens at `base_time_ms + n * 1000
    /// / events_per_second`. Says nothing about how fast the events are
    /// emitted in wall-clock time. At least 1; default
    /// [`DEFAULT_EVENTS_PER_SECOND`].
    pub events_per_second: u64,
    /// The number of events of the whole run (event numbers
    /// `0..max_events`, over all splits); `None` (the default) is
    /// unbounded.
    pub max_events: Option<u64>,
    /// A random person id is drawn from the last this many people (plus
    /// [`PERSON_ID_LEAD`]). Default [`DEFAULT_NUM_ACTIVE_PEOPLE`].
    pub num_active_people: u64,
    /// A random auction id is drawn from the last this many auctions
    /// (plus [`AUCTION_ID_LEAD`]); auctions last on average as long as it
    /// takes to generate this many more. Default
    /// [`DEFAULT_NUM_IN_FLIGHT_AUCTIONS`].
    pub num_in_flight_auctions: u64,
    /// A bid is for a hot auction with probability `1 - 1/ratio`. At least
    /// 1; default [`DEFAULT_HOT_AUCTION_RATIO`].
    pub hot_auction_ratio: u64,
    /// An auction has a hot seller with probability `1 - 1/ratio`. At
    /// least 1; default [`DEFAULT_HOT_SELLER_RATIO`].
    pub hot_seller_ratio: u64,
    /// A bid is by a hot bidder with probability `1 - 1/ratio`. At least
    /// 1; default [`DEFAULT_HOT_BIDDER_RATIO`].
    pub hot_bidder_ratio: u64,
    /// The length of every event's `extra` filler, in random lowercase
    /// letters. Default 0 (empty), to keep records small; at most 1 MiB.
    pub extra_len: u32,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 0,
            base_time_ms: DEFAULT_BASE_TIME_MS,
            events_per_second: DEFAULT_EVENTS_PER_SECOND,
            max_events: None,
            num_active_people: DEFAULT_NUM_ACTIVE_PEOPLE,
            num_in_flight_auctions: DEFAULT_NUM_IN_FLIGHT_AUCTIONS,
            hot_auction_ratio: DEFAULT_HOT_AUCTION_RATIO,
            hot_seller_ratio: DEFAULT_HOT_SELLER_RATIO,
            hot_bidder_ratio: DEFAULT_HOT_BIDDER_RATIO,
            extra_len: 0,
        }
    }
}

impl GeneratorConfig {
    /// Checks that every field is in range: the rate and the hot ratios at
    /// least 1, the filler at most 1 MiB.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("events_per_second", self.events_per_second),
            ("hot_auction_ratio", self.hot_auction_ratio),
            ("hot_seller_ratio", self.hot_seller_ratio),
            ("hot_bidder_ratio", self.hot_bidder_ratio),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError(format!("`{name}` must be at least 1")));
            }
        }
        if self.extra_len > 1 << 20 {
            return Err(ConfigError("`extra_len` must be at most 1048576".into()));
        }
        Ok(())
    }

    /// Returns the time of event number `n`: `base_time_ms + n * 1000 /
    /// events_per_second` milliseconds (saturating at `i64::MAX`).
    pub fn timestamp(&self, n: u64) -> i64 {
        let offset = u128::from(n) * 1000 / u128::from(self.events_per_second.max(1));
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        self.base_time_ms.saturating_add(offset)
    }

    /// Returns whether event number `n` is part of the run: below
    /// `max_events` if that is set.
    pub fn contains(&self, n: u64) -> bool {
        self.max_events.is_none_or(|max| n < max)
    }

    /// Returns event number `n`, a pure function of this config and `n`.
    ///
    /// Panics if the config does not [`validate`](Self::validate).
    pub fn event(&self, n: u64) -> Event {
        let mut rng = Pcg64::seed_from_u64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let time = self.timestamp(n);
        match event_kind(n) {
            EventKind::Person => Event::Person(self.person(n, time, &mut rng)),
            EventKind::Auction => Event::Auction(self.auction(n, time, &mut rng)),
            EventKind::Bid => Event::Bid(self.bid(n, time, &mut rng)),
        }
    }

    /// Returns the events numbered `range` (ignoring `max_events`), in
    /// order.
    pub fn events(&self, range: Range<u64>) -> impl Iterator<Item = Event> + '_ {
        range.map(|n| self.event(n))
    }

    /// Generates the person of event `n`.
    fn person(&self, n: u64, time: i64, rng: &mut Pcg64) -> Person {
        let id = last_base0_person_id(n) + FIRST_PERSON_ID;
        let mut name = String::with_capacity(16);
        name.push_str(pick(rng, &FIRST_NAMES));
        name.push(' ');
        name.push_str(pick(rng, &LAST_NAMES));
        let mut email_address = next_string(rng, 7);
        email_address.push('@');
        email_address.push_str(&next_string(rng, 5));
        email_address.push_str(".com");
        let mut credit_card = String::with_capacity(19);
        for i in 0..4 {
            if i > 0 {
                credit_card.push(' ');
            }
            let group = rng.random_range(0..10_000u32);
            write!(credit_card, "{group:04}").expect("writing to a String");
        }
        let city = pick(rng, &US_CITIES).to_owned();
        let state = pick(rng, &US_STATES).to_owned();
        Person {
            id,
            name,
            email_address,
            credit_card,
            city,
            state,
            date_time: time,
            extra: self.extra(rng),
        }
    }

    /// Generates the auction of event `n`.
    fn auction(&self, n: u64, time: i64, rng: &mut Pcg64) -> Auction {
        let id = last_base0_auction_id(n) + FIRST_AUCTION_ID;
        let seller = if rng.random_range(0..self.hot_seller_ratio) > 0 {
            // The first person of the last batch of HOT_BATCH people.
            (last_base0_person_id(n) / HOT_BATCH) * HOT_BATCH
        } else {
            self.next_base0_person_id(n, rng)
        } + FIRST_PERSON_ID;
        let category = FIRST_CATEGORY_ID + rng.random_range(0..NUM_CATEGORIES);
        let initial_bid = next_price(rng);
        let expires = time.saturating_add(self.auction_length_ms(n, time, rng));
        let item_name = next_string(rng, 20);
        let description = next_string(rng, 100);
        let reserve = initial_bid + next_price(rng);
        Auction {
            id,
            item_name,
            description,
            initial_bid,
            reserve,
            date_time: time,
            expires,
            seller,
            category,
            extra: self.extra(rng),
        }
    }

    /// Generates the bid of event `n`.
    fn bid(&self, n: u64, time: i64, rng: &mut Pcg64) -> Bid {
        let auction = if rng.random_range(0..self.hot_auction_ratio) > 0 {
            // The first auction of the last batch of HOT_BATCH auctions.
            (last_base0_auction_id(n) / HOT_BATCH) * HOT_BATCH
        } else {
            self.next_base0_auction_id(n, rng)
        } + FIRST_AUCTION_ID;
        let bidder = if rng.random_range(0..self.hot_bidder_ratio) > 0 {
            // The second person of the last batch of HOT_BATCH people, so
            // hot bidders and hot sellers differ.
            (last_base0_person_id(n) / HOT_BATCH) * HOT_BATCH + 1
        } else {
            self.next_base0_person_id(n, rng)
        } + FIRST_PERSON_ID;
        let price = next_price(rng);
        let channel_number = rng.random_range(0..CHANNELS_NUMBER);
        let (channel, url) = if rng.random_range(0..100u32) == 0 {
            (
                format!("channel-{channel_number}"),
                self.channel_url(channel_number),
            )
        } else {
            let hot = rng.random_range(0..HOT_CHANNELS.len() as u32) as usize;
            (HOT_CHANNELS[hot].to_owned(), HOT_URLS[hot].to_owned())
        };
        Bid {
            auction,
            bidder,
            price,
            channel,
            url,
            date_time: time,
            extra: self.extra(rng),
        }
    }

    /// Returns a random base-0 person id for event `n` (the standard
    /// `nextBase0PersonId`): one of the last `num_active_people` people,
    /// or up to [`PERSON_ID_LEAD`] past the last one.
    fn next_base0_person_id(&self, n: u64, rng: &mut Pcg64) -> u64 {
        let num_people = last_base0_person_id(n) + 1;
        let active = num_people.min(self.num_active_people);
        num_people - active + rng.random_range(0..active + PERSON_ID_LEAD)
    }

    /// Returns a random base-0 auction id for event `n` (the standard
    /// `nextBase0AuctionId`): one of the last `num_in_flight_auctions`
    /// auctions, or up to [`AUCTION_ID_LEAD`] past the last one.
    fn next_base0_auction_id(&self, n: u64, rng: &mut Pcg64) -> u64 {
        let max = last_base0_auction_id(n);
        let min = max.saturating_sub(self.num_in_flight_auctions);
        min + rng.random_range(0..max - min + 1 + AUCTION_ID_LEAD)
    }

    /// Returns a random auction length for event `n` at `time` (the
    /// standard `nextAuctionLengthMs`): uniform in `1..=2 * horizon`,
    /// where the horizon is how long generating `num_in_flight_auctions`
    /// more auctions takes, so on average that many are open.
    fn auction_length_ms(&self, n: u64, time: i64, rng: &mut Pcg64) -> i64 {
        let events_for_auctions = self
            .num_in_flight_auctions
            .saturating_mul(PROPORTION_DENOMINATOR)
            / AUCTION_PROPORTION;
        let future = self.timestamp(n.saturating_add(events_for_auctions));
        let horizon = u64::try_from(future.saturating_sub(time)).unwrap_or(0);
        let length = 1 + rng.random_range(0..horizon.saturating_mul(2).max(1));
        i64::try_from(length).unwrap_or(i64::MAX)
    }

    /// Returns the URL of `channel-{number}`: the same for every bid of
    /// the channel, as the standard generator's channel cache makes it.
    fn channel_url(&self, number: u64) -> String {
        let mut rng = Pcg64::seed_from_u64(
            self.seed ^ 0xC4A7_7E1D_5EED_0000 ^ number.wrapping_mul(0xD6E8_FEB8_6659_FD93),
        );
        let path_len = 3 + rng.random_range(0..3u32) as usize;
        let path = next_exact_string(&mut rng, path_len);
        let mut url = format!("https://www.nexmark.com/{path}/item.htm?query=1");
        // One channel in ten has no channel id in its URL.
        if rng.random_range(0..10u32) != 0 {
            let id = (number as u32).reverse_bits();
            write!(url, "&channel_id={id}").expect("writing to a String");
        }
        url
    }

    /// Returns the `extra` filler: `extra_len` random lowercase letters.
    fn extra(&self, rng: &mut Pcg64) -> String {
        if self.extra_len == 0 {
            return String::new();
        }
        next_exact_string(rng, self.extra_len as usize)
    }
}

/// Returns a random element of `items`.
fn pick<'a>(rng: &mut Pcg64, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len() as u32) as usize]
}

/// Returns a random string of 3 to `max_len - 1` characters, lowercase
/// letters and about one space in 13, trimmed (the standard
/// `nextString`).
fn next_string(rng: &mut Pcg64, max_len: u32) -> String {
    let len = 3 + rng.random_range(0..max_len - 3);
    let mut s = String::with_capacity(len as usize + 8);
    for _ in 0..len {
        if rng.random_range(0..13u32) == 0 {
            s.push(' ');
        } else {
            s.push(char::from(b'a' + rng.random_range(0..26u8)));
        }
    }
    let trimmed = s.trim();
    if trimmed.len() == s.len() {
        s
    } else {
        trimmed.to_owned()
    }
}

/// Returns `len` random lowercase letters.
fn next_exact_string(rng: &mut Pcg64, len: usize) -> String {
    (0..len)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// Returns a random price in cents, in `100..100_000_000`: a decade
/// chosen uniformly, then a price uniform within it (the standard
/// generator's `10^(6u) * 100`, made integer so every platform agrees).
fn next_price(rng: &mut Pcg64) -> u64 {
    let low = 100 * 10u64.pow(rng.random_range(0..6u32));
    low + rng.random_range(0..9 * low)
}

/// One split of a run: generates event numbers `split, split + splits,
/// split + 2 * splits, …` (below `max_events` if set), in order, so their
/// timestamps never decrease.
///
/// The position is the count of events this split has produced; a
/// generator created at a position continues exactly where one that
/// reached it left off, so the position is all a checkpoint keeps.
#[derive(Clone, Debug)]
pub struct SplitGenerator {
    config: GeneratorConfig,
    split: u64,
    splits: u64,
    position: u64,
}

impl SplitGenerator {
    /// Creates split `split` of `splits`, at `position` (0 for a fresh
    /// start, or a position a checkpoint kept).
    ///
    /// Fails if the config does not validate, `splits` is 0 or `split`
    /// is not below `splits`.
    pub fn new(
        config: GeneratorConfig,
        split: u64,
        splits: u64,
        position: u64,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        if split >= splits {
            return Err(ConfigError(format!(
                "split {split} of {splits}: the split must be below the number of splits"
            )));
        }
        Ok(SplitGenerator {
            config,
            split,
            splits,
            position,
        })
    }

    /// Returns the config events are generated from.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Returns this split's index.
    pub fn split(&self) -> u64 {
        self.split
    }

    /// Returns the number of splits.
    pub fn splits(&self) -> u64 {
        self.splits
    }

    /// Returns the count of events this split has produced: the position
    /// to keep in a checkpoint.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Returns how many events this split produces in all, or `None` if
    /// the run is unbounded.
    pub fn len(&self) -> Option<u64> {
        let max = self.config.max_events?;
        Some(if self.split >= max {
            0
        } else {
            (max - self.split - 1) / self.splits + 1
        })
    }

    /// Returns whether this split produces no events at all.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// Returns whether this split has produced all its events.
    pub fn is_finished(&self) -> bool {
        self.next_event_number().is_none()
    }

    /// Returns the number of the next event, or `None` if the split is
    /// finished.
    pub fn next_event_number(&self) -> Option<u64> {
        let n = self
            .position
            .checked_mul(self.splits)?
            .checked_add(self.split)?;
        self.config.contains(n).then_some(n)
    }

    /// Returns the time of the next event without generating it, or
    /// `None` if the split is finished.
    pub fn next_timestamp(&self) -> Option<i64> {
        self.next_event_number().map(|n| self.config.timestamp(n))
    }

    /// Generates the next event and returns it with its number, or
    /// returns `None` if the split is finished.
    pub fn next_event(&mut self) -> Option<(u64, Event)> {
        let n = self.next_event_number()?;
        self.position += 1;
        Some((n, self.config.event(n)))
    }

    /// Generates the next event and appends it as JSON to `buf` (see
    /// [`Event::write_json`]), returning its number and time, or returns
    /// `None` if the split is finished.
    pub fn next_json(&mut self, buf: &mut Vec<u8>) -> Option<(u64, i64)> {
        let (n, event) = self.next_event()?;
        event.write_json(buf);
        Some((n, event.date_time()))
    }
}

impl Iterator for SplitGenerator {
    type Item = (u64, Event);

    fn next(&mut self) -> Option<(u64, Event)> {
        self.next_event()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounded(max_events: u64) -> GeneratorConfig {
        GeneratorConfig {
            seed: 42,
            max_events: Some(max_events),
            ..GeneratorConfig::default()
        }
    }

    #[test]
    fn kinds_follow_the_standard_cycle() {
        assert_eq!(event_kind(0), EventKind::Person);
        assert_eq!(event_kind(1), EventKind::Auction);
        assert_eq!(event_kind(3), EventKind::Auction);
        assert_eq!(event_kind(4), EventKind::Bid);
        assert_eq!(event_kind(49), EventKind::Bid);
        assert_eq!(event_kind(50), EventKind::Person);
        // The standard lastBase0*Id values.
        assert_eq!(last_base0_person_id(0), 0);
        assert_eq!(last_base0_person_id(49), 0);
        assert_eq!(last_base0_person_id(50), 1);
        assert_eq!(last_base0_auction_id(1), 0);
        assert_eq!(last_base0_auction_id(3), 2);
        assert_eq!(last_base0_auction_id(4), 2);
        assert_eq!(last_base0_auction_id(50), 2);
        assert_eq!(last_base0_auction_id(51), 3);
        assert_eq!(last_base0_auction_id(99), 5);
    }

    #[test]
    fn proportions_are_1_3_46() {
        let config = bounded(50_000);
        let (mut people, mut auctions, mut bids) = (0, 0, 0);
        for event in config.events(0..50_000) {
            match event {
                Event::Person(_) => people += 1,
                Event::Auction(_) => auctions += 1,
                Event::Bid(_) => bids += 1,
            }
        }
        assert_eq!((people, auctions, bids), (1_000, 3_000, 46_000));
    }

    #[test]
    fn same_seed_same_events_other_seed_other_events() {
        let a: Vec<Event> = bounded(500).events(0..500).collect();
        let b: Vec<Event> = bounded(500).events(0..500).collect();
        assert_eq!(a, b);
        let other = GeneratorConfig {
            seed: 43,
            ..bounded(500)
        };
        let c: Vec<Event> = other.events(0..500).collect();
        assert_ne!(a, c);
        // Ids and times come from the event number, not the seed.
        for (x, y) in a.iter().zip(&c) {
            assert_eq!(x.date_time(), y.date_time());
            match (x, y) {
                (Event::Person(p), Event::Person(q)) => assert_eq!(p.id, q.id),
                (Event::Auction(p), Event::Auction(q)) => assert_eq!(p.id, q.id),
                (Event::Bid(_), Event::Bid(_)) => {}
                _ => panic!("kinds differ: {x:?} {y:?}"),
            }
        }
    }

    #[test]
    fn splits_produce_the_same_events() {
        let config = bounded(1_000);
        let whole: Vec<Event> = config.events(0..1_000).collect();
        for k in 1..=3u64 {
            let mut seen = 0;
            for i in 0..k {
                let split = SplitGenerator::new(config.clone(), i, k, 0).unwrap();
                let len = split.len().unwrap();
                let mut produced = 0;
                for (n, event) in split {
                    assert_eq!(n % k, i);
                    assert_eq!(event, whole[n as usize], "event {n}, split {i} of {k}");
                    produced += 1;
                }
                assert_eq!(produced, len);
                seen += produced;
            }
            assert_eq!(seen, 1_000);
        }
    }

    #[test]
    fn resuming_from_a_position_continues_exactly() {
        let config = bounded(3_000);
        let mut first = SplitGenerator::new(config.clone(), 1, 3, 0).unwrap();
        let mut before = Vec::new();
        for _ in 0..400 {
            before.push(first.next_event().unwrap());
        }
        assert_eq!(first.position(), 400);
        let rest: Vec<_> = first.collect();
        let resumed: Vec<_> = SplitGenerator::new(config, 1, 3, 400).unwrap().collect();
        assert_eq!(rest, resumed);
        assert_eq!(before.len() + resumed.len(), 1_000);
        assert_eq!(resumed.last().unwrap().0, 2_998);
    }

    #[test]
    fn timestamps_never_decrease_within_a_split() {
        let config = GeneratorConfig {
            events_per_second: 3,
            ..bounded(2_000)
        };
        for i in 0..3 {
            let mut split = SplitGenerator::new(config.clone(), i, 3, 0).unwrap();
            let mut last = i64::MIN;
            while let Some(next) = split.next_timestamp() {
                let (n, event) = split.next_event().unwrap();
                assert_eq!(event.date_time(), next);
                assert_eq!(next, config.timestamp(n));
                assert!(next >= last);
                last = next;
            }
        }
        assert_eq!(config.timestamp(0), DEFAULT_BASE_TIME_MS);
        assert_eq!(config.timestamp(3), DEFAULT_BASE_TIME_MS + 1_000);
        assert_eq!(config.timestamp(4), DEFAULT_BASE_TIME_MS + 1_333);
        assert_eq!(
            GeneratorConfig::default().timestamp(25),
            DEFAULT_BASE_TIME_MS + 2
        );
    }

    /// What the standard generator guarantees: people and auctions are
    /// numbered in event order; a seller or bidder is at most
    /// `PERSON_ID_LEAD` past the last person generated so far and among the
    /// `num_active_people` before it; a bid's auction is at most
    /// `AUCTION_ID_LEAD` past the last auction generated so far and among
    /// the `num_in_flight_auctions` before it.
    #[test]
    fn ids_refer_to_people_and_auctions_that_exist_or_are_about_to() {
        let config = bounded(50_000);
        let mut next_person = FIRST_PERSON_ID;
        let mut next_auction = FIRST_AUCTION_ID;
        let (mut hot_auction_bids, mut bids) = (0, 0);
        for (n, event) in config.events(0..50_000).enumerate() {
            let last_person = next_person - 1;
            let last_auction = next_auction.saturating_sub(1);
            let person_range = (last_person + 1).saturating_sub(config.num_active_people)
                ..=last_person + PERSON_ID_LEAD;
            match event {
                Event::Person(p) => {
                    assert_eq!(p.id, next_person, "event {n}");
                    next_person += 1;
                }
                Event::Auction(a) => {
                    assert_eq!(a.id, next_auction, "event {n}");
                    next_auction += 1;
                    assert!(person_range.contains(&a.seller), "event {n}: {a:?}");
                    assert!(a.seller >= FIRST_PERSON_ID);
                    assert!((10..=14).contains(&a.category));
                    assert!(a.expires > a.date_time);
                    assert!(a.reserve >= a.initial_bid);
                }
                Event::Bid(b) => {
                    assert!(person_range.contains(&b.bidder), "event {n}: {b:?}");
                    let auction_range = last_auction
                        .saturating_sub(config.num_in_flight_auctions)
                        .max(FIRST_AUCTION_ID)
                        ..=last_auction + AUCTION_ID_LEAD;
                    assert!(auction_range.contains(&b.auction), "event {n}: {b:?}");
                    assert!((100..100_000_000).contains(&b.price));
                    bids += 1;
                    if b.auction == (last_auction - FIRST_AUCTION_ID) / 100 * 100 + 1000 {
                        hot_auction_bids += 1;
                    }
                }
            }
        }
        // Hot auction ratio 2: about half the bids (and a few random ones)
        // go to the hot auction.
        assert!(
            hot_auction_bids * 100 > bids * 45 && hot_auction_bids * 100 < bids * 60,
            "{hot_auction_bids} of {bids}"
        );
    }

    #[test]
    fn fields_come_from_the_standard_lists() {
        let config = bounded(5_000);
        let mut states = std::collections::BTreeSet::new();
        let mut expired_quickly = 0;
        let mut auctions = 0;
        for event in config.events(0..5_000) {
            match event {
                Event::Person(p) => {
                    let (first, last) = p.name.split_once(' ').unwrap();
                    assert!(FIRST_NAMES.contains(&first) && LAST_NAMES.contains(&last));
                    assert!(US_CITIES.contains(&p.city.as_str()));
                    assert!(US_STATES.contains(&p.state.as_str()));
                    states.insert(p.state);
                    assert!(p.email_address.ends_with(".com") && p.email_address.contains('@'));
                    assert_eq!(p.credit_card.len(), 19);
                    assert!(p.extra.is_empty());
                }
                Event::Auction(a) => {
                    auctions += 1;
                    // Default rate: 1666 events (~167 ms) of horizon, so
                    // lengths are uniform in 1..=333 ms.
                    assert!(a.expires - a.date_time <= 2 * 167, "{a:?}");
                    if a.expires - a.date_time <= 167 {
                        expired_quickly += 1;
                    }
                    assert!(!a.item_name.starts_with(' ') && !a.item_name.ends_with(' '));
                }
                Event::Bid(b) => {
                    if let Some(i) = HOT_CHANNELS.iter().position(|c| *c == b.channel) {
                        assert_eq!(b.url, HOT_URLS[i]);
                    } else {
                        let number: u64 = b.channel["channel-".len()..].parse().unwrap();
                        assert_eq!(b.url, config.channel_url(number));
                    }
                }
            }
        }
        assert_eq!(states.len(), US_STATES.len());
        assert!(expired_quickly > auctions / 3 && expired_quickly < auctions * 2 / 3);
    }

    #[test]
    fn extra_len_pads_every_event() {
        let config = GeneratorConfig {
            extra_len: 17,
            ..bounded(100)
        };
        for event in config.events(0..100) {
            let extra = match &event {
                Event::Person(p) => &p.extra,
                Event::Auction(a) => &a.extra,
                Event::Bid(b) => &b.extra,
            };
            assert_eq!(extra.len(), 17);
        }
    }

    #[test]
    fn bounds_and_bad_configs() {
        let config = bounded(10);
        let split = SplitGenerator::new(config.clone(), 3, 4, 0).unwrap();
        assert_eq!(split.len(), Some(2)); // events 3 and 7
        assert_eq!(split.map(|(n, _)| n).collect::<Vec<_>>(), [3, 7]);
        let empty = SplitGenerator::new(bounded(2), 3, 4, 0).unwrap();
        assert!(empty.is_empty() && empty.is_finished());
        let past_end = SplitGenerator::new(config.clone(), 0, 1, 10).unwrap();
        assert!(past_end.is_finished());
        let unbounded = SplitGenerator::new(GeneratorConfig::default(), 0, 1, u64::MAX).unwrap();
        assert_eq!(unbounded.len(), None);
        assert_eq!(unbounded.next_event_number(), Some(u64::MAX));
        let overflow = SplitGenerator::new(GeneratorConfig::default(), 1, 2, u64::MAX).unwrap();
        assert!(overflow.is_finished());

        assert!(SplitGenerator::new(config.clone(), 1, 1, 0).is_err());
        assert!(SplitGenerator::new(config.clone(), 0, 0, 0).is_err());
        let zero_rate = GeneratorConfig {
            events_per_second: 0,
            ..config.clone()
        };
        let err = SplitGenerator::new(zero_rate, 0, 1, 0).unwrap_err();
        assert!(err.to_string().contains("events_per_second"), "{err}");
        let zero_ratio = GeneratorConfig {
            hot_bidder_ratio: 0,
            ..config
        };
        assert!(zero_ratio.validate().is_err());
    }

    #[test]
    fn config_parses_from_json_with_defaults() {
        let config: GeneratorConfig =
            serde_json::from_str(r#"{"seed":7,"max_events":100}"#).unwrap();
        assert_eq!(
            config,
            GeneratorConfig {
                seed: 7,
                max_events: Some(100),
                ..GeneratorConfig::default()
            }
        );
        assert!(serde_json::from_str::<GeneratorConfig>(r#"{"sed":7}"#).is_err());
    }

    #[test]
    fn next_json_writes_what_the_event_serialises_to() {
        let mut split = SplitGenerator::new(bounded(200), 0, 2, 0).unwrap();
        let mut buf = Vec::new();
        let mut lines = 0;
        while let Some((n, time)) = split.next_json(&mut buf) {
            let event = bounded(200).event(n);
            assert_eq!(time, event.date_time());
            assert_eq!(buf, serde_json::to_vec(&event).unwrap());
            assert_eq!(Event::from_json(&buf).unwrap(), event);
            assert!(buf.len() < 400, "{}", String::from_utf8_lossy(&buf));
            buf.clear();
            lines += 1;
        }
        assert_eq!(lines, 100);
    }

    /// Generates and encodes a batch the way the source does, reporting
    /// the rate; asserts only on the output, never on time.
    #[test]
    fn throughput_smoke() {
        let config = bounded(20_000);
        let mut split = SplitGenerator::new(config, 0, 1, 0).unwrap();
        let mut buf = Vec::with_capacity(1 << 20);
        let start = std::time::Instant::now();
        let mut events = 0u64;
        let (mut shortest, mut longest, mut last_len) = (usize::MAX, 0, 0);
        while split.next_json(&mut buf).is_some() {
            shortest = shortest.min(buf.len() - last_len);
            longest = longest.max(buf.len() - last_len);
            buf.push(b'\n');
            last_len = buf.len();
            events += 1;
        }
        let elapsed = start.elapsed();
        eprintln!("record sizes: {shortest} to {longest} bytes");
        eprintln!(
            "generated and encoded {events} events, {} bytes, in {elapsed:?} ({:.0} events/s, \
             {} build)",
            buf.len(),
            events as f64 / elapsed.as_secs_f64().max(1e-9),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        assert_eq!(events, 20_000);
        let parsed = buf
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .filter(|line| Event::from_json(line).is_ok())
            .count();
        assert_eq!(parsed, 20_000);
    }
}
