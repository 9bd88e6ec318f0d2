//! The HTTP destination's configuration and one request to the promotion core.
//!
//! A request is built from an outbox entry: the method and URL template of [`HttpConfig`]
//! (placeholders `{session_id}`, `{event_id}`, `{store_id}`, `{till_id}`, each percent-encoded
//! as one path segment), the configured headers, `Idempotency-Key: <output id>`, and the event
//! in the contract's JSON form as the body. Its outcome is classified into what the outbox does
//! next: delivered, try again later (429, 408, 5xx, timeouts, connection failures), or rejected
//! for good (every other status; dead-lettered with the status and the body).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The `[delivery]` section (formerly `[router.http]`): one HTTP destination toward a promotion
/// core.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The routing destination whose records are sent (its topic is the delivery stage's input).
    #[serde(default = "default_destination")]
    pub destination: String,
    /// URL template; `{session_id}`, `{event_id}`, `{store_id}` and `{till_id}` are replaced by
    /// the event's values, percent-encoded.
    pub url: String,
    /// `PUT` (session updates keyed by session id) or `POST`.
    #[serde(default)]
    pub method: HttpMethod,
    /// Extra request headers (for example `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Most requests per second, sustained (retries count too).
    #[serde(default = "default_rate")]
    pub rate_limit_per_second: u32,
    /// Most requests sent at once after an idle spell (the token bucket's size). The bucket
    /// is per process and starts full, so a restart may send one more burst.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// A request without a complete response by then is a timeout, and is retried.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First pause before a retry; it doubles with each failed attempt of the same request.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest pause between two attempts (a `Retry-After` header is honoured up to this).
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Requests in flight at once (to different sessions; one session has at most one).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Bytes of waiting requests the outbox may hold; past it the delivery stage stops
    /// consuming until requests drain. sled may use about twice this on disk.
    #[serde(default = "default_disk_budget")]
    pub disk_budget_bytes: u64,
}

/// The request method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Put,
    Post,
}

/// The routing destination of `promo.sessions` (the router's built-in name).
const SESSIONS: &str = "sessions";

fn default_destination() -> String {
    SESSIONS.to_owned()
}
fn default_rate() -> u32 {
    10
}
fn default_burst() -> u32 {
    10
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(200)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
fn default_max_in_flight() -> usize {
    8
}
fn default_disk_budget() -> u64 {
    256 * 1024 * 1024
}

/// The placeholders a URL template may use.
const PLACEHOLDERS: [&str; 4] = ["session_id", "event_id", "store_id", "till_id"];

/// Bytes of a rejecting response's body kept in its dead letter.
pub(crate) const MAX_BODY_KEPT: usize = 4096;

/// The values a request's URL is built from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UrlValues<'a> {
    pub session_id: &'a str,
    pub event_id: &'a str,
    pub store_id: &'a str,
    pub till_id: &'a str,
}

impl HttpConfig {
    /// A destination with defaults, sending to `url`.
    pub fn new(url: impl Into<String>) -> Self {
        HttpConfig {
            destination: default_destination(),
            url: url.into(),
            method: HttpMethod::default(),
            headers: BTreeMap::new(),
            rate_limit_per_second: default_rate(),
            burst: default_burst(),
            timeout: default_timeout(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            max_in_flight: default_max_in_flight(),
            disk_budget_bytes: default_disk_budget(),
        }
    }

    /// Checks every field; each mistake is a start-up error.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::Config(why));
        if self.rate_limit_per_second == 0 || self.burst == 0 {
            return bad("rate_limit_per_second and burst must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1".into());
        }
        if self.timeout.is_zero() || self.backoff_initial.is_zero() {
            return bad("timeout and backoff_initial must be positive".into());
        }
        if self.backoff_max < self.backoff_initial {
            return bad("backoff_max must not be shorter than backoff_initial".into());
        }
        if self.disk_budget_bytes == 0 {
            return bad("disk_budget_bytes must be positive".into());
        }
        // Every `{...}` must be a known placeholder.
        let mut rest = self.url.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                return bad(format!("url {:?} has an unclosed '{{'", self.url));
            };
            let name = &rest[open + 1..open + close];
            if !PLACEHOLDERS.contains(&name) {
                return bad(format!(
                    "url placeholder {{{name}}} is unknown; known: {}",
                    PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                ));
            }
            rest = &rest[open + close + 1..];
        }
        let sample = UrlValues {
            session_id: "s",
            event_id: "e",
            store_id: "st",
            till_id: "t",
        };
        match reqwest::Url::parse(&self.url_for(sample)) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(u) => return bad(format!("url scheme {:?} is not http or https", u.scheme())),
            Err(e) => return bad(format!("url {:?} is not a URL: {e}", self.url)),
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return bad(format!("header name {name:?} is not valid"));
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return bad(format!("header {name} has a value that is not valid"));
            }
            if name.eq_ignore_ascii_case("idempotency-key") {
                return bad("the Idempotency-Key header is set by tillbridge".into());
            }
        }
        Ok(())
    }

    /// The URL of one request.
    pub(crate) fn url_for(&self, v: UrlValues<'_>) -> String {
        use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
        let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        self.url
            .replace("{session_id}", &enc(v.session_id))
            .replace("{event_id}", &enc(v.event_id))
            .replace("{store_id}", &enc(v.store_id))
            .replace("{till_id}", &enc(v.till_id))
    }

    /// The pause before attempt `attempt + 1` (attempt counts from 1): exponential, capped,
    /// with "equal jitter" (half fixed, half random) so that retries of many sessions spread out
    /// yet never come back at once.
    pub(crate) fn backoff(&self, attempt: u32, rng: &mut impl rand::Rng) -> Duration {
        let exp = self
            .backoff_initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let base = exp.min(self.backoff_max);
        let half = base / 2;
        half + half.mul_f64(rng.gen::<f64>())
    }
}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 2xx: the core has it.
    Delivered(u16),
    /// Worth another attempt; `retry_after` is the server's own hint.
    Retry {
        cause: String,
        retry_after: Option<Duration>,
    },
    /// Any other status: the core will not take it. Kept: the status and the start of the body.
    Rejected { status: u16, body: String },
}

/// Classifies a response status (with its `Retry-After`, when present, in seconds).
pub(crate) fn classify(status: u16, retry_after: Option<&str>, body: String) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered(status),
        408 | 429 | 500..=599 => Outcome::Retry {
            cause: if status >= 500 {
                "5xx".into()
            } else {
                status.to_string()
            },
            retry_after: retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        },
        _ => Outcome::Rejected { status, body },
    }
}

/// The failure of a request that got no response.
pub(crate) fn transport_cause(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "io"
    }
}

/// Reads at most [`MAX_BODY_KEPT`] bytes of a body, as text with card numbers masked.
pub(crate) async fn body_start(mut resp: reqwest::Response) -> String {
    let mut kept = Vec::new();
    while kept.len() < MAX_BODY_KEPT {
        match resp.chunk().await {
            Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
            _ => break,
        }
    }
    kept.truncate(MAX_BODY_KEPT);
    String::from_utf8_lossy(&tillbridge_core::pan::redact(&kept)).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify(200, None, String::new()), Outcome::Delivered(200));
        assert_eq!(classify(204, None, String::new()), Outcome::Delivered(204));
        assert!(matches!(
            classify(429, Some("3"), String::new()),
            Outcome::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify(503, Some("soon"), String::new()),
            Outcome::Retry {
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            classify(408, None, String::new()),
            Outcome::Retry { .. }
        ));
        for s in [301, 400, 401, 404, 409, 422] {
            assert!(matches!(
                classify(s, None, "x".into()),
                Outcome::Rejected { status, .. } if status == s
            ));
        }
    }

    #[test]
    fn urls_are_built_and_checked() {
        let c = HttpConfig::new("http://core.test/v2/sessions/{session_id}?store={store_id}");
        c.validate().unwrap();
        let url = c.url_for(UrlValues {
            session_id: "R 1/2",
            event_id: "e",
            store_id: "S1",
            till_id: "T",
        });
        assert_eq!(url, "http://core.test/v2/sessions/R%201%2F2?store=S1");
        for bad in [
            "http://core.test/{session}",
            "http://core.test/{session_id",
            "ftp://core.test/x",
            "not a url",
        ] {
            assert!(
                matches!(HttpConfig::new(bad).validate(), Err(Error::Config(_))),
                "{bad}"
            );
        }
        let mut c = HttpConfig::new("http://core.test/x");
        c.rate_limit_per_second = 0;
        assert!(c.validate().is_err());
        let mut c = HttpConfig::new("http://core.test/x");
        c.headers.insert("Idempotency-Key".into(), "x".into());
        assert!(c.validate().is_err());
        let mut c = HttpConfig::new("http://core.test/x");
        c.headers.insert("bad header".into(), "x".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let mut c = HttpConfig::new("http://core.test/x");
        c.backoff_initial = Duration::from_millis(100);
        c.backoff_max = Duration::from_secs(2);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        for attempt in 1..40 {
            let base = (Duration::from_millis(100) * 2u32.pow((attempt - 1).min(20)))
                .min(Duration::from_secs(2));
            for _ in 0..20 {
                let d = c.backoff(attempt, &mut rng);
                assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?}");
            }
        }
        let spread: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| c.backoff(3, &mut rng)).collect();
        assert!(spread.len() > 10, "jitter spreads retries");
    }
}
