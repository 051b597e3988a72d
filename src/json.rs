//! The one definition of "is this JSON" for everything volley accepts or sends: what
//! `serde_json::Value` would accept (RFC 8259, strings unescaped, so a lone UTF-16
//! surrogate escape such as `"\ud800"` is refused, nested at most 128 deep), checked
//! without building anything. serde_json's `RawValue` and `IgnoredAny` skip strings
//! without unescaping them and would let such text through to clients whose parsers
//! refuse it.
//!
//! Sans-IO. Called by `api` (published bodies, batch entries) and the client codecs
//! (`protocol::native` for `data`).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::envelope::PayloadKind;

/// Whether `text` is one JSON value that every conforming parser accepts.
pub fn is_strict(text: &str) -> Result<(), serde_json::Error> {
    serde_json::from_str::<Strict>(text).map(|_| ())
}

/// What a published body is: strict JSON, other UTF-8 text, or bytes.
pub fn classify(body: &[u8]) -> PayloadKind {
    match std::str::from_utf8(body) {
        Ok(text) if is_strict(text).is_ok() => PayloadKind::Json,
        Ok(_) => PayloadKind::Text,
        Err(_) => PayloadKind::Binary,
    }
}

struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Strict, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        while map.next_entry::<Strict, Strict>()?.is_some() {}
        Ok(Strict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_classified_strictly() {
        assert_eq!(classify(br#"{"a":[1,2]}"#), PayloadKind::Json);
        assert_eq!(classify(b"42"), PayloadKind::Json);
        assert_eq!(classify(b" true "), PayloadKind::Json);
        assert_eq!(classify(b"hello"), PayloadKind::Text);
        assert_eq!(
            classify(br#""\ud800""#),
            PayloadKind::Text,
            "lone surrogate"
        );
        assert_eq!(
            classify(br#"{"a":1}{"b":2}"#),
            PayloadKind::Text,
            "two values"
        );
        assert_eq!(classify(&[0xff]), PayloadKind::Binary);
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(
            classify(deep.as_bytes()),
            PayloadKind::Text,
            "past 128 deep"
        );
    }
}
