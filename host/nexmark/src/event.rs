//! The Nexmark event types and their JSON encoding.
//!
//! An [`Event`] is one JSON object per record, tagged by `"type"`:
//!
//! ```json
//! {"type":"person","id":1000,"name":"Peter Shultz","email_address":"abc@xyz.com","credit_card":"0123 4567 8901 2345","city":"Boise","state":"ID","date_time":1700000000000,"extra":""}
//! {"type":"auction","id":1000,"item_name":"abc","description":"de fg","initial_bid":1234,"reserve":5678,"date_time":1700000000000,"expires":1700000000123,"seller":1000,"category":12,"extra":""}
//! {"type":"bid","auction":1000,"bidder":1001,"price":4321,"channel":"Google","url":"https://www.nexmark.com/googl/item.htm?query=1","date_time":1700000000000,"extra":""}
//! ```
//!
//! Times are milliseconds since the Unix epoch, prices are cents; every
//! number is an integer. [`Event::write_json`] writes exactly the text
//! `serde_json` would (keys in the order above, no spaces), without the
//! serde machinery, into a buffer the caller reuses.

use serde::{Deserialize, Serialize};

/// A person registering to buy or sell.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Person {
    /// The person's id, unique over the run; the first is 1000.
    pub id: u64,
    /// First and last name, e.g. `"Peter Shultz"`.
    pub name: String,
    /// A random e-mail address.
    pub email_address: String,
    /// A random credit card number: four groups of four digits.
    pub credit_card: String,
    /// A US city.
    pub city: String,
    /// A US state code: one of `AZ`, `CA`, `ID`, `OR`, `WA`, `WY`.
    pub state: String,
    /// When the person registered, in milliseconds since the epoch.
    pub date_time: i64,
    /// Filler; empty unless the generator is configured to pad records.
    pub extra: String,
}

/// An item put up for auction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Auction {
    /// The auction's id, unique over the run; the first is 1000.
    pub id: u64,
    /// The item's name.
    pub item_name: String,
    /// The item's description.
    pub description: String,
    /// The opening price, in cents.
    pub initial_bid: u64,
    /// The reserve price, in cents; at least `initial_bid`.
    pub reserve: u64,
    /// When the auction opened, in milliseconds since the epoch.
    pub date_time: i64,
    /// When the auction closes, in milliseconds since the epoch; after
    /// `date_time`.
    pub expires: i64,
    /// The id of the [`Person`] selling the item.
    pub seller: u64,
    /// The item's category, `10..=14`.
    pub category: u64,
    /// Filler; empty unless the generator is configured to pad records.
    pub extra: String,
}

/// A bid on an auction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bid {
    /// The id of the [`Auction`] bid on.
    pub auction: u64,
    /// The id of the [`Person`] bidding.
    pub bidder: u64,
    /// The price bid, in cents.
    pub price: u64,
    /// The channel the bid came through, e.g. `"Google"` or
    /// `"channel-1234"`.
    pub channel: String,
    /// The URL the bid came from.
    pub url: String,
    /// When the bid was made, in milliseconds since the epoch.
    pub date_time: i64,
    /// Filler; empty unless the generator is configured to pad records.
    pub extra: String,
}

/// One Nexmark event: a person, an auction or a bid.
///
/// Serialised as one JSON object whose `"type"` is `"person"`,
/// `"auction"` or `"bid"`, followed by the fields of the variant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", try_from = "FlatEvent")]
pub enum Event {
    /// A new person.
    Person(Person),
    /// A new auction.
    Auction(Auction),
    /// A new bid.
    Bid(Bid),
}

impl Event {
    /// Returns the event's time: when the person registered, the auction
    /// opened or the bid was made, in milliseconds since the epoch.
    pub fn date_time(&self) -> i64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }

    /// Returns the value of the event's `"type"` field: `"person"`,
    /// `"auction"` or `"bid"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Person(_) => "person",
            Event::Auction(_) => "auction",
            Event::Bid(_) => "bid",
        }
    }

    /// Returns the event as one JSON object, the same text
    /// [`Event::write_json`] appends.
    pub fn to_json(&self) -> String {
        let mut buf = Vec::with_capacity(256);
        self.write_json(&mut buf);
        String::from_utf8(buf).expect("JSON written from strings is UTF-8")
    }

    /// Appends the event as one JSON object (no newline) to `buf`.
    ///
    /// The text is byte for byte what `serde_json::to_vec(self)` gives:
    /// `"type"` first, then the fields in declaration order, no spaces.
    pub fn write_json(&self, buf: &mut Vec<u8>) {
        match self {
            Event::Person(p) => {
                buf.extend_from_slice(b"{\"type\":\"person\",\"id\":");
                write_u64(buf, p.id);
                buf.extend_from_slice(b",\"name\":");
                write_str(buf, &p.name);
                buf.extend_from_slice(b",\"email_address\":");
                write_str(buf, &p.email_address);
                buf.extend_from_slice(b",\"credit_card\":");
                write_str(buf, &p.credit_card);
                buf.extend_from_slice(b",\"city\":");
                write_str(buf, &p.city);
                buf.extend_from_slice(b",\"state\":");
                write_str(buf, &p.state);
                buf.extend_from_slice(b",\"date_time\":");
                write_i64(buf, p.date_time);
                buf.extend_from_slice(b",\"extra\":");
                write_str(buf, &p.extra);
            }
            Event::Auction(a) => {
                buf.extend_from_slice(b"{\"type\":\"auction\",\"id\":");
                write_u64(buf, a.id);
                buf.extend_from_slice(b",\"item_name\":");
                write_str(buf, &a.item_name);
                buf.extend_from_slice(b",\"description\":");
                write_str(buf, &a.description);
                buf.extend_from_slice(b",\"initial_bid\":");
                write_u64(buf, a.initial_bid);
                buf.extend_from_slice(b",\"reserve\":");
                write_u64(buf, a.reserve);
                buf.extend_from_slice(b",\"date_time\":");
                write_i64(buf, a.date_time);
                buf.extend_from_slice(b",\"expires\":");
                write_i64(buf, a.expires);
                buf.extend_from_slice(b",\"seller\":");
                write_u64(buf, a.seller);
                buf.extend_from_slice(b",\"category\":");
                write_u64(buf, a.category);
                buf.extend_from_slice(b",\"extra\":");
                write_str(buf, &a.extra);
            }
            Event::Bid(b) => {
                buf.extend_from_slice(b"{\"type\":\"bid\",\"auction\":");
                write_u64(buf, b.auction);
                buf.extend_from_slice(b",\"bidder\":");
                write_u64(buf, b.bidder);
                buf.extend_from_slice(b",\"price\":");
                write_u64(buf, b.price);
                buf.extend_from_slice(b",\"channel\":");
                write_str(buf, &b.channel);
                buf.extend_from_slice(b",\"url\":");
                write_str(buf, &b.url);
                buf.extend_from_slice(b",\"date_time\":");
                write_i64(buf, b.date_time);
                buf.extend_from_slice(b",\"extra\":");
                write_str(buf, &b.extra);
            }
        }
        buf.push(b'}');
    }

    /// Parses one event from a JSON object.
    ///
    /// Keys may come in any order and unknown keys are ignored; every
    /// field of the `"type"` named must be present.
    pub fn from_json(bytes: &[u8]) -> Result<Event, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl From<Person> for Event {
    fn from(p: Person) -> Self {
        Event::Person(p)
    }
}

impl From<Auction> for Event {
    fn from(a: Auction) -> Self {
        Event::Auction(a)
    }
}

impl From<Bid> for Event {
    fn from(b: Bid) -> Self {
        Event::Bid(b)
    }
}

/// Which variant a JSON event is.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Person,
    Auction,
    Bid,
}

/// Every key any event has, so an event parses in one pass without the
/// buffering serde's internally tagged enums do.
#[derive(Deserialize)]
struct FlatEvent {
    #[serde(rename = "type")]
    kind: Kind,
    id: Option<u64>,
    name: Option<String>,
    email_address: Option<String>,
    credit_card: Option<String>,
    city: Option<String>,
    state: Option<String>,
    item_name: Option<String>,
    description: Option<String>,
    initial_bid: Option<u64>,
    reserve: Option<u64>,
    expires: Option<i64>,
    seller: Option<u64>,
    category: Option<u64>,
    auction: Option<u64>,
    bidder: Option<u64>,
    price: Option<u64>,
    channel: Option<String>,
    url: Option<String>,
    date_time: Option<i64>,
    extra: Option<String>,
}

impl TryFrom<FlatEvent> for Event {
    type Error = String;

    fn try_from(f: FlatEvent) -> Result<Self, String> {
        fn need<T>(v: Option<T>, field: &str, kind: &str) -> Result<T, String> {
            v.ok_or_else(|| format!("missing field `{field}` in {kind} event"))
        }
        Ok(match f.kind {
            Kind::Person => {
                let k = "person";
                Event::Person(Person {
                    id: need(f.id, "id", k)?,
                    name: need(f.name, "name", k)?,
                    email_address: need(f.email_address, "email_address", k)?,
                    credit_card: need(f.credit_card, "credit_card", k)?,
                    city: need(f.city, "city", k)?,
                    state: need(f.state, "state", k)?,
                    date_time: need(f.date_time, "date_time", k)?,
                    extra: need(f.extra, "extra", k)?,
                })
            }
            Kind::Auction => {
                let k = "auction";
                Event::Auction(Auction {
                    id: need(f.id, "id", k)?,
                    item_name: need(f.item_name, "item_name", k)?,
                    description: need(f.description, "description", k)?,
                    initial_bid: need(f.initial_bid, "initial_bid", k)?,
                    reserve: need(f.reserve, "reserve", k)?,
                    date_time: need(f.date_time, "date_time", k)?,
                    expires: need(f.expires, "expires", k)?,
                    seller: need(f.seller, "seller", k)?,
                    category: need(f.category, "category", k)?,
                    extra: need(f.extra, "extra", k)?,
                })
            }
            Kind::Bid => {
                let k = "bid";
                Event::Bid(Bid {
                    auction: need(f.auction, "auction", k)?,
                    bidder: need(f.bidder, "bidder", k)?,
                    price: need(f.price, "price", k)?,
                    channel: need(f.channel, "channel", k)?,
                    url: need(f.url, "url", k)?,
                    date_time: need(f.date_time, "date_time", k)?,
                    extra: need(f.extra, "extra", k)?,
                })
            }
        })
    }
}

/// Appends `v` in decimal.
fn write_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Appends `v` in decimal, with a `-` if negative.
fn write_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    write_u64(buf, v.unsigned_abs());
}

/// Appends `s` as a JSON string, escaped exactly as `serde_json` does:
/// `"` and `\` with a backslash, `\b \t \n \f \r` short, other control
/// characters as `\u00xx`, everything else as is.
fn write_str(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    buf.push(b'"');
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        if c >= 0x20 && c != b'"' && c != b'\\' {
            continue;
        }
        buf.extend_from_slice(&bytes[start..i]);
        match c {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            0x08 => buf.extend_from_slice(b"\\b"),
            0x09 => buf.extend_from_slice(b"\\t"),
            0x0a => buf.extend_from_slice(b"\\n"),
            0x0c => buf.extend_from_slice(b"\\f"),
            0x0d => buf.extend_from_slice(b"\\r"),
            _ => buf.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 0xf)],
            ]),
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Event> {
        vec![
            Event::Person(Person {
                id: 1000,
                name: "Peter Shultz".into(),
                email_address: "abc@xyz.com".into(),
                credit_card: "0123 4567 8901 2345".into(),
                city: "Boise".into(),
                state: "ID".into(),
                date_time: 1_700_000_000_000,
                extra: String::new(),
            }),
            Event::Auction(Auction {
                id: 1001,
                item_name: "tab\tquote\"back\\slash".into(),
                description: "ctl \u{1}\u{8}\u{c}\n\r\u{1f}\u{7f} ünïcödé ✓ 🦀".into(),
                initial_bid: 0,
                reserve: u64::MAX,
                date_time: -1,
                expires: i64::MIN,
                seller: 1000,
                category: 10,
                extra: "x".into(),
            }),
            Event::Bid(Bid {
                auction: 1001,
                bidder: 1000,
                price: 1_234_567,
                channel: "Google".into(),
                url: "https://www.nexmark.com/googl/item.htm?query=1".into(),
                date_time: i64::MAX,
                extra: String::new(),
            }),
        ]
    }

    #[test]
    fn write_json_matches_serde_json_and_round_trips() {
        for event in samples() {
            let text = event.to_json();
            assert_eq!(text, serde_json::to_string(&event).unwrap());
            assert_eq!(Event::from_json(text.as_bytes()).unwrap(), event);
        }
        let bid = samples().pop().unwrap();
        assert_eq!(
            bid.to_json(),
            r#"{"type":"bid","auction":1001,"bidder":1000,"price":1234567,"channel":"Google","url":"https://www.nexmark.com/googl/item.htm?query=1","date_time":9223372036854775807,"extra":""}"#
        );
    }

    #[test]
    fn write_json_appends() {
        let mut buf = b"prefix ".to_vec();
        let events = samples();
        events[0].write_json(&mut buf);
        assert!(buf.starts_with(b"prefix {\"type\":\"person\",\"id\":1000,"));
        assert!(buf.ends_with(b"\"extra\":\"\"}"));
    }

    #[test]
    fn from_json_takes_any_key_order_and_ignores_unknown_keys() {
        let text = r#"{"price":5,"date_time":7,"extra":"","url":"u","channel":"c","bidder":2,"auction":1,"type":"bid","unknown":[1,{"a":null}]}"#;
        let want = Event::Bid(Bid {
            auction: 1,
            bidder: 2,
            price: 5,
            channel: "c".into(),
            url: "u".into(),
            date_time: 7,
            extra: String::new(),
        });
        assert_eq!(Event::from_json(text.as_bytes()).unwrap(), want);
        assert_eq!(want.date_time(), 7);
        assert_eq!(want.type_name(), "bid");
    }

    #[test]
    fn from_json_rejects_bad_events() {
        let missing =
            r#"{"type":"bid","auction":1,"bidder":2,"price":5,"channel":"c","url":"u","extra":""}"#;
        let err = Event::from_json(missing.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("date_time"), "{err}");
        assert!(Event::from_json(br#"{"type":"comment"}"#).is_err());
        assert!(Event::from_json(br#"{"id":1}"#).is_err());
        assert!(Event::from_json(br#"{"type":"bid","auction":-1}"#).is_err());
        assert!(Event::from_json(b"not json").is_err());
    }

    #[test]
    fn variants_parse_on_their_own() {
        let events = samples();
        let Event::Bid(bid) = &events[2] else {
            unreachable!()
        };
        let text = serde_json::to_string(bid).unwrap();
        assert!(text.starts_with(r#"{"auction":1001,"#));
        assert_eq!(&serde_json::from_str::<Bid>(&text).unwrap(), bid);
        // A plugin may read a bid record straight into `Bid`: the tag is
        // an unknown key there.
        let bid_back: Bid = serde_json::from_str(&events[2].to_json()).unwrap();
        assert_eq!(&bid_back, bid);
    }
}
