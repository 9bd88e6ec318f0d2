//! Routing rules: where an accepted event's session record goes.
//!
//! Rules are tried in order and the first that matches decides the destinations; an event no
//! rule matches goes to `sessions` (the `promo.sessions` topic). Events of a store the store
//! table marks as not live go to the quarantine destination, whatever the rules say, and yield
//! no redemption or loyalty facts (a test store must not move real ledgers). Every mistake in
//! the rules (an unknown destination, a bad glob, a store listed twice) is a start-up error.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use tillbridge_core::config::Topics;
use tillbridge_core::domain::{BodyKind, Channel, TillEvent};

use crate::http::HttpConfig;

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
    #[error("router.http: {0}")]
    Http(String),
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
    /// An HTTP destination toward the promotion core's API (absent: none).
    pub http: Option<HttpConfig>,
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
            http: None,
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

/// Compiled rules.
#[derive(Clone, Debug)]
pub struct Rules {
    rules: Vec<(String, Matcher, Vec<String>)>,
    stores: BTreeMap<String, StoreConfig>,
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
        if let Some(http) = &cfg.http {
            if !names.contains_key(&http.destination) {
                return Err(RuleError::Http(format!(
                    "destination {:?} is unknown; known: {known}",
                    http.destination
                )));
            }
            http.validate()?;
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
            topics: BTreeMap::from([(SESSIONS.to_owned(), topics.sessions.clone())]),
            quarantine: topics.sessions.clone(),
            sessions: topics.sessions.clone(),
        }
    }

    /// The topic of destination `name`.
    pub fn topic_of(&self, name: &str) -> Option<&str> {
        self.topics.get(name).map(String::as_str)
    }

    /// Every topic a rule can send to (for creating topics).
    pub fn destination_topics(&self) -> Vec<String> {
        self.topics.values().cloned().collect()
    }

    /// Where `ev`'s session record goes.
    pub fn decide(&self, ev: &TillEvent) -> Decision {
        let store = self.stores.get(&ev.store_id);
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
