//! Routing rules: where an accepted event's session record goes.
//!
//! Rules are tried in order and the first that matches decides the destinations; an event no
//! rule matches goes to `sessions` (the `promo.sessions` topic). Events of a store the store
//! table marks as not live go to the quarantine destination, whatever the rules say, and yield
//! no redemption or loyalty facts (a test store must not move real ledgers). Every mistake in
//! the rules (an unknown destination, a bad glob, a store listed twice) is a start-up error.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use tillbridge_core::config::Topics;
use tillbridge_core::domain::{BodyKind, Channel, RejectReason, TillEvent};
use tillbridge_core::log::Record;
use tillbridge_proto::{pb, Rejection};

/// The name of the built-in destination `promo.sessions`.
pub const SESSIONS: &str = "sessions";

/// A routing configuration error, found at start-up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("router.rules[{rule}] ({name}) sends to unknown destination {destination:?}; known: {known}")]
    UnknownDestination {
        rule: usize,
        name: String,
        destination: String,
        known: String,
    },
    #[error("router.rules[{rule}] ({name}) has no destination")]
    NoDestination { rule: usize, name: String },
    #[error("router.rules[{rule}] ({name}): bad store glob {glob:?}: {why}")]
    BadGlob {
        rule: usize,
        name: String,
        glob: String,
        why: String,
    },
    #[error("router.stores lists store {0:?} twice")]
    DuplicateStore(String),
    #[error("router.destinations.{0} has an empty topic name")]
    EmptyTopic(String),
    #[error("router config: {0}")]
    Invalid(String),
}

/// The `[router]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Named destinations and their topics, besides the built-in `sessions`.
    pub destinations: BTreeMap<String, String>,
    /// The destination of events from stores that are not live.
    pub quarantine: String,
    /// Rules, tried in order; the first match decides.
    pub rules: Vec<RuleConfig>,
    /// The store table: metadata rules can match on.
    pub stores: Vec<StoreConfig>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            destinations: BTreeMap::from([(
                "quarantine".to_owned(),
                "tillbridge.quarantine".to_owned(),
            )]),
            quarantine: "quarantine".into(),
            rules: Vec::new(),
            stores: Vec::new(),
        }
    }
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A name for logs and errors.
    pub name: String,
    /// What the event must be; every condition given must hold.
    #[serde(rename = "match", default)]
    pub when: MatchConfig,
    /// Destination names.
    pub to: Vec<String>,
}

/// Conditions of a rule; an absent condition matches everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatchConfig {
    /// Body types (`sale`, `return`, `session_cancelled`, `manual_override`, `till_status`).
    pub body: Vec<BodyKind>,
    /// Store id, exact or a glob (`S0*`, `outlet-?`).
    pub store: Option<String>,
    /// Store region from the store table.
    pub region: Option<String>,
    /// Store channel type from the store table.
    pub channel_type: Option<String>,
    /// Event channels (`IN_STORE`, `ONLINE`, `MOBILE`, `KIOSK`).
    pub channel: Vec<Channel>,
}

/// A row of the store table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub store_id: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub channel_type: Option<String>,
    /// A store that is not live has its events quarantined.
    #[serde(default = "live")]
    pub is_live: bool,
    #[serde(default)]
    pub opening_date: Option<NaiveDate>,
}

fn live() -> bool {
    true
}

/// The store table read from the compacted stores topic (`promo.stores`), shared between the
/// task that follows the topic and routing. A row from the topic takes precedence over a row
/// of `router.stores` for the same store; a tombstone removes the topic's row.
#[derive(Clone, Debug, Default)]
pub struct StoreTable(Arc<RwLock<BTreeMap<String, StoreConfig>>>);

impl StoreTable {
    pub fn new() -> Self {
        StoreTable::default()
    }

    /// Applies one record of the stores topic: a `Store` (protobuf or JSON) keyed by store id,
    /// or a tombstone. A row that breaks the contract is refused with a typed rejection and
    /// changes nothing.
    pub fn apply(&self, record: &Record) -> Result<(), Rejection> {
        let key = record
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .filter(|k| !k.is_empty());
        let Some(payload) = record.payload.as_deref() else {
            let key = key.ok_or_else(|| {
                Rejection::new(RejectReason::MissingField, "a tombstone needs a key")
            })?;
            self.write().remove(&key);
            return Ok(());
        };
        let row: pb::Store =
            tillbridge_proto::decode_message(payload, record.header("content-type"))?;
        if row.store_id.trim().is_empty() {
            return Err(Rejection::new(
                RejectReason::MissingField,
                "store_id: required",
            ));
        }
        if key.as_ref().is_some_and(|k| *k != row.store_id) {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                "store_id: differs from the record key",
            ));
        }
        let opening_date = match row.opening_date.trim() {
            "" => None,
            d => Some(NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|_| {
                Rejection::new(
                    RejectReason::InvalidField,
                    "opening_date: not a date (YYYY-MM-DD)",
                )
            })?),
        };
        let opt = |s: String| (!s.is_empty()).then_some(s);
        let store = StoreConfig {
            store_id: row.store_id.clone(),
            region: opt(row.region),
            channel_type: opt(row.channel_type),
            is_live: row.is_live.unwrap_or(true),
            opening_date,
        };
        self.write().insert(row.store_id, store);
        Ok(())
    }

    /// The topic's row of `store_id`.
    pub fn get(&self, store_id: &str) -> Option<StoreConfig> {
        self.read().get(store_id).cloned()
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // The lock is never held across an await or a panic point that could poison it halfway.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, StoreConfig>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, StoreConfig>> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Compiled rules.
#[derive(Clone, Debug)]
pub struct Rules {
    rules: Vec<(String, Matcher, Vec<String>)>,
    stores: BTreeMap<String, StoreConfig>,
    table: Option<StoreTable>,
    topics: BTreeMap<String, String>,
    quarantine: String,
    sessions: String,
}

#[derive(Clone, Debug)]
struct Matcher {
    body: Vec<BodyKind>,
    store: Option<glob::Pattern>,
    region: Option<String>,
    channel_type: Option<String>,
    channel: Vec<Channel>,
}

/// Where one event's session record goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Topics of the session record.
    pub topics: Vec<String>,
    /// Whether the event's facts (redemptions, loyalty) are emitted.
    pub facts: bool,
}

impl Rules {
    /// Compiles `cfg`; every mistake is reported here.
    pub fn compile(topics: &Topics, cfg: &RouterConfig) -> Result<Rules, RuleError> {
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        names.insert(SESSIONS.to_owned(), topics.sessions.clone());
        for (name, topic) in &cfg.destinations {
            if topic.trim().is_empty() {
                return Err(RuleError::EmptyTopic(name.clone()));
            }
            names.insert(name.clone(), topic.clone());
        }
        let known = names.keys().cloned().collect::<Vec<_>>().join(", ");
        if !names.contains_key(&cfg.quarantine) {
            return Err(RuleError::Invalid(format!(
                "router.quarantine names unknown destination {:?}; known: {known}",
                cfg.quarantine
            )));
        }
        let mut rules = Vec::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            if r.to.is_empty() {
                return Err(RuleError::NoDestination {
                    rule: i,
                    name: r.name.clone(),
                });
            }
            for d in &r.to {
                if !names.contains_key(d) {
                    return Err(RuleError::UnknownDestination {
                        rule: i,
                        name: r.name.clone(),
                        destination: d.clone(),
                        known: known.clone(),
                    });
                }
            }
            let store = r
                .when
                .store
                .as_ref()
                .map(|g| {
                    glob::Pattern::new(g).map_err(|e| RuleError::BadGlob {
                        rule: i,
                        name: r.name.clone(),
                        glob: g.clone(),
                        why: e.to_string(),
                    })
                })
                .transpose()?;
            let m = Matcher {
                body: r.when.body.clone(),
                store,
                region: r.when.region.clone(),
                channel_type: r.when.channel_type.clone(),
                channel: r.when.channel.clone(),
            };
            rules.push((r.name.clone(), m, r.to.clone()));
        }
        let mut stores = BTreeMap::new();
        for s in &cfg.stores {
            if stores.insert(s.store_id.clone(), s.clone()).is_some() {
                return Err(RuleError::DuplicateStore(s.store_id.clone()));
            }
        }
        Ok(Rules {
            rules,
            stores,
            table: None,
            quarantine: names[&cfg.quarantine].clone(),
            sessions: topics.sessions.clone(),
            topics: names,
        })
    }

    /// The default rules: everything to `sessions`, nothing quarantined.
    pub fn default_for(topics: &Topics) -> Rules {
        Rules {
            rules: Vec::new(),
            stores: BTreeMap::new(),
            table: None,
            topics: BTreeMap::from([(SESSIONS.to_owned(), topics.sessions.clone())]),
            quarantine: topics.sessions.clone(),
            sessions: topics.sessions.clone(),
        }
    }

    /// The topic of destination `name`.
    pub fn topic_of(&self, name: &str) -> Option<&str> {
        self.topics.get(name).map(String::as_str)
    }

    /// The names of every destination, for error messages.
    pub fn destination_names(&self) -> Vec<&str> {
        self.topics.keys().map(String::as_str).collect()
    }

    /// Every topic a rule can send to (for creating topics).
    pub fn destination_topics(&self) -> Vec<String> {
        self.topics.values().cloned().collect()
    }

    /// Also match on the rows of the stores topic (they take precedence over `router.stores`).
    pub fn with_store_table(mut self, table: StoreTable) -> Self {
        self.table = Some(table);
        self
    }

    /// Where `ev`'s session record goes.
    pub fn decide(&self, ev: &TillEvent) -> Decision {
        let from_topic = self.table.as_ref().and_then(|t| t.get(&ev.store_id));
        let store = from_topic
            .as_ref()
            .or_else(|| self.stores.get(&ev.store_id));
        if store.is_some_and(|s| !s.is_live) {
            return Decision {
                topics: vec![self.quarantine.clone()],
                facts: false,
            };
        }
        for (_, m, to) in &self.rules {
            if m.matches(ev, store) {
                let mut topics: Vec<String> = to.iter().map(|d| self.topics[d].clone()).collect();
                topics.dedup();
                return Decision {
                    topics,
                    facts: true,
                };
            }
        }
        Decision {
            topics: vec![self.sessions.clone()],
            facts: true,
        }
    }
}

impl Matcher {
    fn matches(&self, ev: &TillEvent, store: Option<&StoreConfig>) -> bool {
        (self.body.is_empty() || self.body.contains(&ev.body_kind()))
            && (self.channel.is_empty() || self.channel.contains(&ev.channel))
            && self.store.as_ref().is_none_or(|g| g.matches(&ev.store_id))
            && self
                .region
                .as_ref()
                .is_none_or(|r| store.and_then(|s| s.region.as_ref()) == Some(r))
            && self
                .channel_type
                .as_ref()
                .is_none_or(|c| store.and_then(|s| s.channel_type.as_ref()) == Some(c))
    }
}
