//! The HTTP delivery stage: every record of a destination topic (`promo.sessions` by default)
//! becomes one request to the promotion core's API, sent through a durable, rate-limited outbox
//! with retries, so consumption goes on while the core is slow or down.
//!
//! - [`HttpConfig`]: the `[delivery]` section (URL template, method, headers, rate limit,
//!   retries, outbox budget).
//! - [`outbox`]: the [`Delivery`] processor (appends requests to the outbox) and the
//!   [`Drainer`] (sends them).
//!
//! It imports core and proto, and no routing: which topic it reads is decided by the caller.

mod error;
mod http;
pub mod outbox;

pub use error::Error;
pub use http::{HttpConfig, HttpMethod};
pub use outbox::{Delivery, DeliveryStats, Drainer, Outbox};
