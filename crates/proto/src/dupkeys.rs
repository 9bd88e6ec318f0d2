//! Refuses JSON documents with a key repeated in one object, also a field given in both proto3
//! JSON spellings (`storeId` and `store_id`). A JSON reader keeps one of the values and drops the
//! other silently; another reader may keep the other one, so two readers could see two events.
//! (The contract has no `map` fields, so every key is a field name.)

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The first key found twice in one object, when there is one (the name is not returned when it
/// looks like card data).
pub(crate) fn duplicate_key(payload: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Checked>(payload) {
        Ok(Checked) => None,
        Err(e) => {
            let msg = e.to_string();
            msg.starts_with(PREFIX).then_some(msg)
        }
    }
}

const PREFIX: &str = "duplicate key";

struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Check).map(|()| Checked)
    }
}

struct Check;

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(Check)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            // One field, whichever spelling: `storeId`, `store_id`.
            let field: String = key
                .chars()
                .filter(|c| *c != '_')
                .flat_map(char::to_lowercase)
                .collect();
            if !seen.insert(field) {
                let name = if tillbridge_domain::pan::contains(&key) {
                    "(a key that looks like card data)".to_owned()
                } else {
                    format!("{key:?}")
                };
                return Err(de::Error::custom(format!("{PREFIX} {name} in one object")));
            }
            map.next_value_seed(Check)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Check)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_key_repeated_at_any_depth() {
        assert_eq!(duplicate_key(br#"{"a":1,"b":[{"c":1}]}"#), None);
        assert!(duplicate_key(br#"{"a":1,"a":2}"#)
            .unwrap()
            .contains("\"a\""));
        assert!(duplicate_key(br#"{"s":{"l":[{"k":"x","k":"4111111111111111"}]}}"#).is_some());
        let msg = duplicate_key(br#"{"4111111111111111":1,"4111111111111111":2}"#).unwrap();
        assert!(!tillbridge_domain::pan::contains(&msg), "{msg}");
        // Not JSON at all is for the decoder to say.
        assert_eq!(duplicate_key(b"{nope"), None);
    }
}
