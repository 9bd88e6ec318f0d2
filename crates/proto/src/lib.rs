//! The wire contract v1 (docs/CONTRACT.md).
//!
//! - [`pb`]: the prost types generated from proto/tillbridge/v1.
//! - [`decode_till_event`]: protobuf or proto3-JSON bytes into a [`pb::TillEvent`].
//! - [`validate`]: a [`pb::TillEvent`] into a validated domain [`TillEvent`], or a [`Rejection`]
//!   with the contract's reason code and a detail that names the field.
//! - [`to_json`]: the proto3 JSON form of any contract message, as an outside client writes it.

mod convert;
mod dupkeys;
#[doc(hidden)]
pub mod json_fast;
mod rejection;

/// Generated types of package `tillbridge.v1`.
#[allow(clippy::all, missing_docs, missing_debug_implementations)]
pub mod pb;

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use sha2::{Digest, Sha256};
use tillbridge_domain::RejectReason;
pub use tillbridge_domain::TillEvent;

pub use convert::{coupon_definition, loyalty_balance, validate};
pub use rejection::Rejection;

/// How a payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// The encoding of a payload: JSON when the `content-type` header says `application/json` or the
/// payload (after leading white space) starts with `{`; protobuf otherwise.
pub fn detect_encoding(payload: &[u8], content_type: Option<&[u8]>) -> Encoding {
    if let Some(ct) = content_type {
        let ct = String::from_utf8_lossy(ct).to_ascii_lowercase();
        if ct.starts_with("application/json") {
            return Encoding::Json;
        }
    }
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Encoding::Json,
        _ => Encoding::Protobuf,
    }
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        #[allow(clippy::expect_used)]
        DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"))[..])
            .expect("the descriptor set compiled by build.rs is valid")
    })
}

/// Decodes a message of type `M` (full name `name`) from proto3 JSON. Both field-name forms are
/// accepted, enums by name or number, 64-bit integers as numbers or strings, timestamps in RFC
/// 3339. Unknown fields and unknown enum names are rejected (the proto3 JSON default), so a typo
/// never silently becomes a default value.
pub fn from_json<M: Message + Default>(name: &str, payload: &[u8]) -> Result<M, Rejection> {
    let desc = pool().get_message_by_name(name).ok_or_else(|| {
        Rejection::new(RejectReason::DecodeError, format!("unknown message {name}"))
    })?;
    if let Some(dup) = dupkeys::duplicate_key(payload) {
        return Err(Rejection::new(
            RejectReason::DecodeError,
            format!("invalid JSON: {dup}"),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    let opts = DeserializeOptions::new().deny_unknown_fields(true);
    let dynamic = DynamicMessage::deserialize_with_options(desc, &mut de, &opts)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| {
            Rejection::new(
                RejectReason::DecodeError,
                format!("invalid JSON: {}", json_error(&e)),
            )
        })?;
    dynamic
        .transcode_to::<M>()
        .map_err(|e| Rejection::new(RejectReason::DecodeError, e.to_string()))
}

/// serde_json's message without echoing input values (which may hold card digits).
fn json_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if tillbridge_domain::pan::contains(&msg) {
        format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        )
    } else {
        msg
    }
}

/// Decodes a till event from protobuf or JSON (see [`detect_encoding`]). JSON in its common
/// forms takes a fast path ([`json_fast`]); any other form is judged by [`from_json`].
pub fn decode_till_event(
    payload: &[u8],
    content_type: Option<&[u8]>,
) -> Result<pb::TillEvent, Rejection> {
    if detect_encoding(payload, content_type) == Encoding::Json {
        if let Some(event) = json_fast::till_event(payload) {
            return Ok(event);
        }
    }
    decode_message(payload, content_type)
}

/// Decodes any contract message from protobuf or JSON (see [`detect_encoding`]).
pub fn decode_message<M: Message + Default + ReflectMessageName>(
    payload: &[u8],
    content_type: Option<&[u8]>,
) -> Result<M, Rejection> {
    match detect_encoding(payload, content_type) {
        Encoding::Json => from_json(M::FULL_NAME, payload),
        Encoding::Protobuf => M::decode(payload).map_err(|e| {
            Rejection::new(RejectReason::DecodeError, format!("invalid protobuf: {e}"))
        }),
    }
}

/// The proto3 JSON form of a message, as an outside client would write it (lowerCamelCase
/// field names, enums by name, 64-bit integers as strings).
pub fn to_json<M: Message + Default + ReflectMessageName>(msg: &M) -> String {
    let desc = pool().get_message_by_name(M::FULL_NAME);
    let Some(desc) = desc else {
        return String::from("{}");
    };
    let mut dynamic = DynamicMessage::new(desc);
    if dynamic.merge(msg.encode_to_vec().as_slice()).is_err() {
        return String::from("{}");
    }
    let mut ser = serde_json::Serializer::new(Vec::new());
    let opts = SerializeOptions::new();
    if dynamic.serialize_with_options(&mut ser, &opts).is_err() {
        return String::from("{}");
    }
    String::from_utf8(ser.into_inner()).unwrap_or_default()
}

/// The `content-type` header of tillbridge's own protobuf records.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";

/// A UTC time as a protobuf timestamp.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf timestamp as a UTC time; `None` when out of range or with negative nanos.
pub fn datetime(ts: &prost_types::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

/// The full protobuf name of a generated type, for [`to_json`].
pub trait ReflectMessageName {
    const FULL_NAME: &'static str;
}

macro_rules! names {
    ($($t:ident),*) => {$(
        impl ReflectMessageName for pb::$t {
            const FULL_NAME: &'static str = concat!("tillbridge.v1.", stringify!($t));
        }
    )*};
}
names!(
    TillEvent,
    CouponDefinition,
    LoyaltyBalance,
    RedemptionFact,
    LoyaltyFact,
    CompensatingAction,
    FraudAlert,
    DeadLetter,
    Store
);

/// The content fingerprint used for deduplication: SHA-256 of the canonical protobuf encoding,
/// so the same event sent once as JSON and once as protobuf has the same fingerprint.
pub fn content_hash(event: &pb::TillEvent) -> [u8; 32] {
    // The id in its canonical form: the same UUID written upper case, braced, as a URN or
    // without dashes is the same event.
    match uuid::Uuid::parse_str(event.event_id.trim()) {
        Ok(id) if id.to_string() != event.event_id => {
            let mut canonical = event.clone();
            canonical.event_id = id.to_string();
            Sha256::digest(canonical.encode_to_vec()).into()
        }
        _ => Sha256::digest(event.encode_to_vec()).into(),
    }
}
