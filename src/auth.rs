//! Token authentication: verifies a compact JWS (RFC 7515) signed with HS256 or RS256
//! (RFC 7518 §3.2, §3.3) and turns its claims into what a client may join and publish.
//!
//! Owns: the token format, the algorithm policy, the claim rules (`sub`, `exp`, `nbf`,
//! `rooms`, `publish`), room/user pattern matching, and constant-time API-key comparison.
//! Does not own: where a token comes from (the `Authorization` header or a query
//! parameter: `front::upgrade` and `api` pick it out, [`bearer`] helps), the clock
//! (callers pass `now_unix_s`), reading keys from disk (`config` does, then builds a
//! [`Verifier`] once at start), or the 401 response itself (callers send [`AuthError`]'s
//! `Display` as the body).
//! Called by: the `GET /ws` upgrade (`front::upgrade`: tokens), `api` (API keys) and
//! `config` (building the verifier).
//!
//! Sans-IO: bytes and a time in, a value out; no clock, no I/O. The one static is the
//! verifier [`fuzz_one`] builds once, so the fuzz loop does not re-parse a PEM per input.
//!
//! Algorithm policy (RFC 8725 §3.1, §3.2): the header's `alg` only *selects* among the keys
//! this [`Verifier`] was built with; it never chooses a key type. `none` and every other
//! algorithm are refused, an HS256 secret is never used for RS256 and an RS256 public key is
//! never used as an HMAC secret, so the classic "sign HS256 with the public key" confusion
//! cannot happen. Keys embedded in the header (`jwk`, `jku`, `x5c`, `kid`) are ignored.
//! A header with `crit` is refused: we understand no extension (RFC 7515 §4.1.11).
//!
//! Error messages never contain the token, the secret or a claim's value: they go to the
//! client in the 401 body and into logs. The only echo is a sanitised, truncated `alg`.

use std::fmt;
use std::sync::OnceLock;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature as RsaSignature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts;
use rsa::RsaPublicKey;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Largest token accepted, in bytes of its compact form. Real tokens with a few dozen room
/// patterns are well under 2 KiB; 8 KiB matches common HTTP header limits, and it bounds the
/// work (base64, HMAC, JSON) an unauthenticated client can make us do.
pub const TOKEN_BYTES_MAX: usize = 8192;
/// Clock skew tolerated on `exp` and `nbf`, in seconds (RFC 7519 §4.1.4 allows "some small
/// leeway"); a minute covers NTP-synced hosts without stretching a token's life much.
pub const LEEWAY_S: u64 = 60;
/// Longest `sub` (user id), in bytes: it becomes an index key and a Redis channel name.
pub const SUB_BYTES_MAX: usize = 256;
/// Most entries in `rooms` and in `publish` each: `may_join`/`may_publish` scan the list.
pub const PATTERNS_MAX: usize = 256;
/// Longest single `rooms` or `publish` entry, in bytes (a `publish` entry with its prefix).
pub const PATTERN_BYTES_MAX: usize = 256;
/// Shortest HS256 secret `config` should accept: RFC 7518 §3.2 requires a key at least as
/// long as the hash output (256 bits). [`Verifier::hs256`] does not enforce it (tests use
/// RFC vectors); `config::validate` should.
pub const HS256_SECRET_BYTES_MIN: usize = 32;
/// Smallest RSA modulus accepted, in bits (RFC 7518 §3.3: 2048 or larger MUST be used).
pub const RS256_KEY_BITS_MIN: usize = 2048;
/// Largest RSA modulus accepted, in bits: verification cost grows with the key size, and
/// 4096 is the `rsa` crate's own ceiling for public keys.
pub const RS256_KEY_BITS_MAX: usize = 4096;
/// Largest PEM accepted by [`Verifier::rs256_pem`], in bytes: a 4096-bit SPKI PEM is ~800.
pub const PEM_BYTES_MAX: usize = 16 * 1024;

/// An HMAC-SHA-256 tag is the full hash output.
const HS256_SIGNATURE_BYTES: usize = 32;
/// How much of an unknown `alg` the error message echoes.
const ALG_SHOWN_CHARS_MAX: usize = 24;

/// base64url (RFC 4648 §5). RFC 7515 §2 says no padding, but some encoders pad, so padding
/// is accepted when present. Trailing bits must be zero, so each token has one encoding.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a token was refused. Every variant means "answer 401 and close"; the variant docs
/// say what else to do. `Display` is a short reason safe to send to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No token was sent. Answer 401 with `WWW-Authenticate: Bearer` (RFC 6750 §3) so the
    /// client knows to log in; do not count it as an attack.
    Missing,
    /// The bytes are not a compact JWS (dots, base64url, header JSON). Client bug or probing:
    /// count it; the reason says which part is wrong.
    Malformed(&'static str),
    /// `alg` is `none`, unknown, or one this server holds no key for. Holds a sanitised,
    /// truncated copy of `alg`. A config mismatch between issuer and server, or an attack.
    UnsupportedAlgorithm(String),
    /// The signature does not match: wrong key, tampered token, or a forgery. Count it.
    BadSignature,
    /// `exp` (plus [`LEEWAY_S`]) is before `now`: the client should fetch a fresh token.
    Expired {
        /// The token's `exp`, seconds since 1970.
        exp: u64,
        /// The `now_unix_s` it was checked against.
        now: u64,
    },
    /// `nbf` is more than [`LEEWAY_S`] in the future: issuer clock skew; the client may retry.
    NotYetValid,
    /// Signed by a trusted key but the claims break our rules (missing `sub`, bad `rooms`...):
    /// an issuer bug; log it, the reason names the claim but never its value.
    BadClaims(String),
    /// The token is longer than [`TOKEN_BYTES_MAX`]: refuse without parsing.
    TooLarge,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => f.write_str("no token"),
            AuthError::Malformed(reason) => write!(f, "malformed token: {reason}"),
            AuthError::UnsupportedAlgorithm(alg) => write!(f, "alg {alg} is not accepted"),
            AuthError::BadSignature => f.write_str("bad signature"),
            AuthError::Expired { exp, now } => {
                write!(f, "token expired {} s ago", now.saturating_sub(*exp))
            }
            AuthError::NotYetValid => f.write_str("token not valid yet"),
            AuthError::BadClaims(reason) => write!(f, "bad claims: {reason}"),
            AuthError::TooLarge => write!(f, "token longer than {TOKEN_BYTES_MAX} bytes"),
        }
    }
}

impl std::error::Error for AuthError {}

/// What a verified token lets its holder do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user id: non-empty, at most [`SUB_BYTES_MAX`] bytes. A numeric `sub` becomes its
    /// decimal string, so `42` and `"42"` are the same user.
    pub sub: String,
    /// Expiry, seconds since 1970. A fractional `exp` is rounded down (expires sooner).
    pub exp: u64,
    /// Room patterns the client may join; `None` (claim absent) means any room, `Some(vec![])`
    /// means none. An explicit `null` is refused rather than read as "any".
    pub rooms: Option<Vec<String>>,
    /// Publish targets, each `room:<pattern>` or `user:<pattern>`; absent means none.
    pub publish: Vec<String>,
}

impl Claims {
    /// Whether the holder may join `room`.
    pub fn may_join(&self, room: &str) -> bool {
        match &self.rooms {
            None => true,
            Some(patterns) => patterns.iter().any(|p| pattern_matches(p, room)),
        }
    }

    /// Whether the holder may publish to `name` of kind `target_kind` (`"room"` or `"user"`).
    /// Any other kind is refused.
    pub fn may_publish(&self, target_kind: &str, name: &str) -> bool {
        self.publish
            .iter()
            .any(|entry| match entry.split_once(':') {
                Some((kind, pattern)) => kind == target_kind && pattern_matches(pattern, name),
                None => false,
            })
    }
}

/// Whether `pattern` covers `name`. A pattern is an exact name, or a prefix followed by one
/// trailing `*` (`"game:*"` covers `"game:"` and `"game:7"`), or `"*"` alone (everything).
/// A `*` anywhere else is an ordinary character.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Constant-time equality for API keys: the time taken depends on the lengths only, never on
/// where the contents differ (subtle's slice `ct_eq` returns early only on a length mismatch).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The token from an `Authorization` header value: `Bearer <token>`, scheme matched without
/// regard to case (RFC 7235 §2.1). Empty value or no token: `Missing`; another scheme:
/// `Malformed`. The token itself is checked by [`Verifier::verify`].
pub fn bearer_token(authorization: &str) -> Result<&str, AuthError> {
    let value = authorization.trim();
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed(
            "expected Authorization: Bearer <token>",
        ));
    }
    let token = rest.trim_start();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

/// The `Bearer` credential of a request's Authorization header, if it has one.
pub fn bearer(head: &crate::http::Head) -> Option<&str> {
    bearer_token(head.header("authorization")?).ok()
}

/// Checks tokens against the keys it was built with. Build once at start (from `config`)
/// and clone per shard: it holds no mutable state.
#[derive(Clone)]
pub struct Verifier {
    /// HMAC state already keyed with the secret (cloned per token, so the secret is hashed
    /// into the inner/outer pads once). `None`: HS256 tokens are refused.
    hs256: Option<Hmac<Sha256>>,
    /// The RS256 public key. `None`: RS256 tokens are refused.
    rs256: Option<VerifyingKey<Sha256>>,
}

impl fmt::Debug for Verifier {
    /// Says which algorithms are on, never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.is_some())
            .field(
                "rs256_bits",
                &self.rs256.as_ref().map(|k| k.as_ref().n().bits()),
            )
            .finish()
    }
}

impl Verifier {
    /// A verifier for HS256 tokens signed with `secret`. An empty secret would let anyone
    /// forge tokens, so it enables nothing (every token is then refused); `config` should
    /// require at least [`HS256_SECRET_BYTES_MIN`] bytes.
    pub fn hs256(secret: &[u8]) -> Verifier {
        Verifier::without_keys().with_hs256(secret)
    }

    /// A verifier for RS256 tokens, from an RSA public key PEM: SPKI (`BEGIN PUBLIC KEY`)
    /// or PKCS#1 (`BEGIN RSA PUBLIC KEY`), [`RS256_KEY_BITS_MIN`]..=[`RS256_KEY_BITS_MAX`]
    /// bits. The error is for the operator: what is wrong and what to pass instead.
    pub fn rs256_pem(pem: &str) -> Result<Verifier, String> {
        Verifier::without_keys().with_rs256_pem(pem)
    }

    /// Adds (or replaces) the HS256 secret, for a server that accepts both algorithms.
    pub fn with_hs256(mut self, secret: &[u8]) -> Verifier {
        self.hs256 = if secret.is_empty() {
            None
        } else {
            // HMAC takes keys of any length (RFC 2104 §2 hashes long ones), so this is
            // always `Some`; `.ok()` avoids an unwrap and would fail closed regardless.
            <Hmac<Sha256> as Mac>::new_from_slice(secret).ok()
        };
        self
    }

    /// Adds (or replaces) the RS256 public key, for a server that accepts both algorithms.
    pub fn with_rs256_pem(mut self, pem: &str) -> Result<Verifier, String> {
        let key = rsa_public_key_from_pem(pem)?;
        self.rs256 = Some(VerifyingKey::<Sha256>::new(key));
        Ok(self)
    }

    /// Whether HS256 tokens can pass.
    pub fn accepts_hs256(&self) -> bool {
        self.hs256.is_some()
    }

    /// Whether RS256 tokens can pass.
    pub fn accepts_rs256(&self) -> bool {
        self.rs256.is_some()
    }

    /// Verifies a compact JWS (`header.payload.signature`) and returns its claims.
    /// `now_unix_s` is passed in (sans-IO, testable). Checks, in order: size, shape,
    /// base64url, header and `alg`, signature, then claims (only once the signature holds),
    /// then `exp` and `nbf` with [`LEEWAY_S`].
    pub fn verify(&self, token: &str, now_unix_s: u64) -> Result<Claims, AuthError> {
        let (claims, nbf) = self.authenticate(token)?;
        check_time(claims.exp, nbf, now_unix_s)?;
        Ok(claims)
    }

    fn without_keys() -> Verifier {
        Verifier {
            hs256: None,
            rs256: None,
        }
    }

    /// Everything but the clock: returns the claims and `nbf`, if any.
    fn authenticate(&self, token: &str) -> Result<(Claims, Option<u64>), AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > TOKEN_BYTES_MAX {
            return Err(AuthError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            if token.split('.').count() == 5 {
                return Err(AuthError::Malformed(
                    "encrypted tokens (JWE) are not accepted",
                ));
            }
            return Err(AuthError::Malformed("expected header.payload.signature"));
        };
        // RFC 7515 §5.2 step 8: the signature covers the two encoded parts as sent.
        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];

        let header =
            decode_part(header_b64).ok_or(AuthError::Malformed("header is not base64url"))?;
        let payload =
            decode_part(payload_b64).ok_or(AuthError::Malformed("payload is not base64url"))?;
        let signature =
            decode_part(signature_b64).ok_or(AuthError::Malformed("signature is not base64url"))?;
        // The base64 text is within TOKEN_BYTES_MAX, so the JSON is too; kept as the
        // documented claims limit in case the token limit is ever raised alone.
        if payload.len() > TOKEN_BYTES_MAX {
            return Err(AuthError::TooLarge);
        }

        let alg = parse_header(&header)?;
        match (alg.as_str(), &self.hs256, &self.rs256) {
            ("HS256", Some(mac), _) => verify_hs256(mac, signing_input.as_bytes(), &signature)?,
            ("RS256", _, Some(key)) => verify_rs256(key, signing_input.as_bytes(), &signature)?,
            _ => return Err(AuthError::UnsupportedAlgorithm(shown_alg(&alg))),
        }
        parse_claims(&payload)
    }
}

/// Decodes one base64url part; `None` if it is not base64url.
fn decode_part(part: &str) -> Option<Vec<u8>> {
    BASE64URL.decode(part).ok()
}

fn verify_hs256(mac: &Hmac<Sha256>, input: &[u8], signature: &[u8]) -> Result<(), AuthError> {
    if signature.len() != HS256_SIGNATURE_BYTES {
        return Err(AuthError::BadSignature);
    }
    let mut mac = mac.clone();
    mac.update(input);
    // `verify_slice` compares in constant time (it uses subtle internally).
    mac.verify_slice(signature)
        .map_err(|_| AuthError::BadSignature)
}

fn verify_rs256(
    key: &VerifyingKey<Sha256>,
    input: &[u8],
    signature: &[u8],
) -> Result<(), AuthError> {
    // RFC 8017 §8.2.2 step 1: the signature is exactly as long as the modulus. Checked here
    // so a short or long one never reaches the big-number code.
    if signature.len() != key.as_ref().size() {
        return Err(AuthError::BadSignature);
    }
    let signature = RsaSignature::try_from(signature).map_err(|_| AuthError::BadSignature)?;
    key.verify(input, &signature)
        .map_err(|_| AuthError::BadSignature)
}

fn rsa_public_key_from_pem(pem: &str) -> Result<RsaPublicKey, String> {
    const SPKI: &str = "-----BEGIN PUBLIC KEY-----";
    const PKCS1: &str = "-----BEGIN RSA PUBLIC KEY-----";
    let pem = pem.trim();
    if pem.len() > PEM_BYTES_MAX {
        return Err(format!(
            "RS256 key PEM is {} bytes; at most {PEM_BYTES_MAX} are accepted: pass one public key",
            pem.len()
        ));
    }
    if pem.contains("PRIVATE KEY") {
        return Err(
            "RS256 key PEM holds a private key: pass only the public key \
                    (openssl pkey -in key.pem -pubout)"
                .to_string(),
        );
    }
    let key = if pem.starts_with(SPKI) {
        RsaPublicKey::from_public_key_pem(pem)
            .map_err(|e| format!("RS256 key: not an RSA public key in SPKI PEM ({e})"))?
    } else if pem.starts_with(PKCS1) {
        RsaPublicKey::from_pkcs1_pem(pem)
            .map_err(|e| format!("RS256 key: not an RSA public key in PKCS#1 PEM ({e})"))?
    } else {
        return Err(format!(
            "RS256 key: expected a PEM starting with {SPKI} or {PKCS1}"
        ));
    };
    let bits = key.n().bits();
    if !(RS256_KEY_BITS_MIN..=RS256_KEY_BITS_MAX).contains(&bits) {
        return Err(format!(
            "RS256 key has {bits} bits: must be {RS256_KEY_BITS_MIN}..={RS256_KEY_BITS_MAX}"
        ));
    }
    Ok(key)
}

/// Deserialises a member that is present (even as `null`) into `Some`, so that an explicit
/// `null` is told apart from an absent member and refused, not taken as "absent".
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// The header members we read; others are ignored (RFC 7515 §4), except `crit`.
#[derive(Deserialize)]
struct RawHeader {
    #[serde(default, deserialize_with = "present")]
    alg: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    crit: Option<Value>,
}

/// The claims we read; unknown claims are ignored without being stored.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default, deserialize_with = "present")]
    sub: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    exp: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    rooms: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    publish: Option<Value>,
}

/// Whether the JSON text starts (after whitespace, RFC 8259 §2) with `{`. serde would also
/// read a struct from an array (`["HS256"]`), which no JOSE header or claims set is.
fn is_json_object(json: &[u8]) -> bool {
    json.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'{')
}

/// Returns the header's `alg`.
fn parse_header(json: &[u8]) -> Result<String, AuthError> {
    if !is_json_object(json) {
        return Err(AuthError::Malformed("header is not a JSON object"));
    }
    // serde_json's messages can quote the input, so only the error's category is used.
    // With every field an `Option<Value>`, the one data error left is a duplicate member,
    // which RFC 7515 §4 lets us refuse (parsers disagree on which duplicate wins).
    let raw: RawHeader = serde_json::from_slice(json).map_err(|e| {
        AuthError::Malformed(if e.is_data() {
            "header has a duplicate member"
        } else {
            "header is not valid JSON"
        })
    })?;
    if raw.crit.is_some() {
        return Err(AuthError::Malformed("header crit is not supported"));
    }
    match raw.alg {
        Some(Value::String(alg)) => Ok(alg),
        Some(_) => Err(AuthError::Malformed("header alg is not a string")),
        None => Err(AuthError::Malformed("header has no alg")),
    }
}

/// A printable, bounded copy of an `alg` for the error message: it comes from the client.
fn shown_alg(alg: &str) -> String {
    if alg.eq_ignore_ascii_case("none") {
        return "none".to_string();
    }
    let mut shown: String = alg
        .chars()
        .take(ALG_SHOWN_CHARS_MAX)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+') {
                c
            } else {
                '?'
            }
        })
        .collect();
    if alg.chars().count() > ALG_SHOWN_CHARS_MAX {
        shown.push_str("...");
    }
    if shown.is_empty() {
        shown.push_str("\"\"");
    }
    shown
}

/// Parses and checks the claims JSON; returns the claims and `nbf`, if any.
fn parse_claims(json: &[u8]) -> Result<(Claims, Option<u64>), AuthError> {
    let bad = |reason: &str| AuthError::BadClaims(reason.to_string());
    if json.len() > TOKEN_BYTES_MAX {
        return Err(AuthError::TooLarge);
    }
    if !is_json_object(json) {
        return Err(bad("claims are not a JSON object"));
    }
    // As in `parse_header`: the category only, never serde_json's text (it quotes values).
    let raw: RawClaims = serde_json::from_slice(json).map_err(|e| {
        bad(if e.is_data() {
            "claims have a duplicate member"
        } else {
            "claims are not valid JSON"
        })
    })?;

    let sub = match raw.sub {
        None => return Err(bad("sub is required")),
        Some(Value::String(sub)) => sub,
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        Some(_) => return Err(bad("sub must be a string or an integer")),
    };
    if sub.is_empty() {
        return Err(bad("sub is empty"));
    }
    if sub.len() > SUB_BYTES_MAX {
        return Err(AuthError::BadClaims(format!(
            "sub is {} bytes; at most {SUB_BYTES_MAX} are allowed",
            sub.len()
        )));
    }
    let exp = match raw.exp {
        None => return Err(bad("exp is required")),
        Some(value) => numeric_date("exp", &value, false)?,
    };
    let nbf = match raw.nbf {
        None => None,
        Some(value) => Some(numeric_date("nbf", &value, true)?),
    };
    let rooms = match raw.rooms {
        None => None,
        Some(value) => Some(pattern_list("rooms", value)?),
    };
    let publish = match raw.publish {
        None => Vec::new(),
        Some(value) => pattern_list("publish", value)?,
    };
    for (i, entry) in publish.iter().enumerate() {
        let pattern = entry
            .strip_prefix("room:")
            .or_else(|| entry.strip_prefix("user:"));
        match pattern {
            Some(pattern) if !pattern.is_empty() => {}
            _ => {
                return Err(AuthError::BadClaims(format!(
                    "publish[{i}] must be room:<pattern> or user:<pattern>"
                )))
            }
        }
    }
    debug_assert!(!sub.is_empty() && sub.len() <= SUB_BYTES_MAX);
    Ok((
        Claims {
            sub,
            exp,
            rooms,
            publish,
        },
        nbf,
    ))
}

/// An RFC 7519 §2 NumericDate as whole seconds. Fractions round toward the stricter side:
/// down for `exp`, up for `nbf` (`round_up`).
fn numeric_date(name: &str, value: &Value, round_up: bool) -> Result<u64, AuthError> {
    let seconds = match value {
        Value::Number(n) => match n.as_u64() {
            Some(seconds) => Some(seconds),
            None => n
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                // `as` saturates at u64::MAX; the filter has excluded NaN and negatives.
                .map(|f| if round_up { f.ceil() } else { f.floor() } as u64),
        },
        _ => None,
    };
    seconds.ok_or_else(|| {
        AuthError::BadClaims(format!("{name} must be a non-negative number of seconds"))
    })
}

/// A `rooms` or `publish` list: an array of at most [`PATTERNS_MAX`] non-empty strings of at
/// most [`PATTERN_BYTES_MAX`] bytes each.
fn pattern_list(name: &str, value: Value) -> Result<Vec<String>, AuthError> {
    let Value::Array(items) = value else {
        return Err(AuthError::BadClaims(format!(
            "{name} must be an array of strings"
        )));
    };
    if items.len() > PATTERNS_MAX {
        return Err(AuthError::BadClaims(format!(
            "{name} has {} entries; at most {PATTERNS_MAX} are allowed",
            items.len()
        )));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) if s.is_empty() => {
                Err(AuthError::BadClaims(format!("{name}[{i}] is empty")))
            }
            Value::String(s) if s.len() > PATTERN_BYTES_MAX => Err(AuthError::BadClaims(format!(
                "{name}[{i}] is longer than {PATTERN_BYTES_MAX} bytes"
            ))),
            Value::String(s) => Ok(s),
            _ => Err(AuthError::BadClaims(format!("{name}[{i}] is not a string"))),
        })
        .collect()
}

fn check_time(exp: u64, nbf: Option<u64>, now: u64) -> Result<(), AuthError> {
    if exp.saturating_add(LEEWAY_S) < now {
        return Err(AuthError::Expired { exp, now });
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_S)) {
        return Err(AuthError::NotYetValid);
    }
    Ok(())
}

/// HS256 secret of the verifier [`fuzz_one`] uses; tests (and `tests/fuzz.rs`) sign tokens
/// with it. Public on purpose: it is a fixed test value that no running server ever uses.
pub const FUZZ_HS256_SECRET: &[u8] = b"volley fuzz secret, not used anywhere else: 32+ bytes";

/// Public half of a 2048-bit test key made once with `openssl genpkey` for [`fuzz_one`] and
/// the tests (which embed the private half). It is a public key: no secret lives here.
const FUZZ_RS256_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA0cWEHKvF9vHT5Z975+kX
byamK8zu3jD43LKDhMKF6IYXUQZvV3JwOOCPQL2afGXPqgc9Be3CLoBgLfxStzBq
ivRlWL44UPWmrGT4unjVygMv/Tzbqx3rTsIC7CzPHW4R/hZplk7xX1IH/AlFVljf
Z/mMFtZErHEZZ7qc5BjorfgvUWCTLC1QRklj0b3YK2bL7On0TNfvCCSWExPPV5LJ
K1gtWiP2eo55lWJwW57a3Nej/LhKrJK7yrnerxNrN24pEJ3UnhBu3AEf82ZX73n7
EzWC528ZW3i6ociUte4NHUqAB9YACjmcVJpiaUTBbGnMOgEwWFVQD8rIRrx8fh2v
vQIDAQAB
-----END PUBLIC KEY-----
";

fn fuzz_verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let hs256 = Verifier::hs256(FUZZ_HS256_SECRET);
        // The embedded PEM is valid (a test checks it); on failure fuzz HS256 alone.
        hs256
            .clone()
            .with_rs256_pem(FUZZ_RS256_PUBLIC_PEM)
            .unwrap_or(hs256)
    })
}

/// Checks what must hold for any error: short, and never an echo of the input.
fn check_error(error: &AuthError, input: &str) {
    let message = error.to_string();
    assert!(!message.is_empty() && message.len() <= 128, "{message}");
    // The only echo is a sanitised `alg` of at most ALG_SHOWN_CHARS_MAX chars, far shorter.
    if input.len() > 64 {
        assert!(!message.contains(input), "error message echoes the input");
    }
}

fn check_claims(claims: &Claims, probe: &str) {
    assert!(!claims.sub.is_empty() && claims.sub.len() <= SUB_BYTES_MAX);
    let rooms = claims.rooms.as_deref().unwrap_or_default();
    assert!(rooms.len() <= PATTERNS_MAX && claims.publish.len() <= PATTERNS_MAX);
    assert!(rooms
        .iter()
        .chain(&claims.publish)
        .all(|p| !p.is_empty() && p.len() <= PATTERN_BYTES_MAX));
    let _ = claims.may_join(probe);
    let _ = claims.may_publish("room", probe);
    let _ = claims.may_publish("user", probe);
}

/// Parses arbitrary bytes as a token and verifies it; must never panic (a panic is a bug
/// here: `cargo fuzz` targets and the seeded stable test call this). Also feeds the bytes
/// straight to the header and claims parsers, which a fuzzer could not otherwise reach
/// without forging a signature, and checks the invariants of every result.
pub fn fuzz_one(data: &[u8]) {
    let verifier = fuzz_verifier();
    let text = String::from_utf8_lossy(data);
    let probe = text.get(..text.len().min(32)).unwrap_or("");
    match verifier.authenticate(&text) {
        Ok((claims, nbf)) => {
            check_claims(&claims, probe);
            for now in [
                0,
                claims.exp,
                claims.exp.saturating_add(LEEWAY_S + 1),
                u64::MAX,
            ] {
                if let Err(error) = check_time(claims.exp, nbf, now) {
                    check_error(&error, &text);
                }
            }
        }
        Err(error) => check_error(&error, &text),
    }
    match parse_claims(data) {
        Ok((claims, _)) => check_claims(&claims, probe),
        Err(error) => check_error(&error, &text),
    }
    if let Err(error) = parse_header(data) {
        check_error(&error, &text);
    }
    if let Err(error) = bearer_token(&text) {
        check_error(&error, &text);
    }
    let (a, b) = data.split_at(data.len() / 2);
    assert_eq!(constant_time_eq(a, b), a == b);
    let _ = pattern_matches(&String::from_utf8_lossy(a), &String::from_utf8_lossy(b));
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rsa::pkcs1v15::SigningKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    use rsa::RsaPrivateKey;

    /// Private half of the fuzz/test key (`openssl genpkey -algorithm RSA
    /// -pkeyopt rsa_keygen_bits:2048`); used only to sign test tokens.
    const TEST_RS256_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDRxYQcq8X28dPl
n3vn6RdvJqYrzO7eMPjcsoOEwoXohhdRBm9XcnA44I9AvZp8Zc+qBz0F7cIugGAt
/FK3MGqK9GVYvjhQ9aasZPi6eNXKAy/9PNurHetOwgLsLM8dbhH+FmmWTvFfUgf8
CUVWWN9n+YwW1kSscRlnupzkGOit+C9RYJMsLVBGSWPRvdgrZsvs6fRM1+8IJJYT
E89XkskrWC1aI/Z6jnmVYnBbntrc16P8uEqskrvKud6vE2s3bikQndSeEG7cAR/z
ZlfvefsTNYLnbxlbeLqhyJS17g0dSoAH1gAKOZxUmmJpRMFsacw6ATBYVVAPyshG
vHx+Ha+9AgMBAAECggEADFMhBHg5LN2feAXLR2BkDpVEPR2QyUAyVvEsFgBB0twS
AaIxp38jRcw3znN1YKqwrUo4lSEXgBjtzbXd/EJdeCWM0M54S5VrQgS6smYIFZLj
XmsVcvPSj/GJL2wgjRea+gVCFeE0gEe3DWFUEBMvqRG539ud9E2+0t/deO9XuGTZ
u3VPAhbnXAcJsqErY5nduZfHNQvPsUqZHlX4kpPFFOwJgHy/G+U20FfuXJeOZwdE
6G85IquBk8G4VAouOHUILEkFSmvnMId3lo3ycRKmDCgVd9lfp6N5heUj85R8iQTp
HXa5wdAMqPzHy8D4Dq3rhCLb//PHoYawl6ejbx+HgQKBgQD76nUvFaXpNpoUPZw0
M44xM1lNKyATqzfSe/7JlGflv6lmqCquAycC2GzZuQpPzddKUpSDOWk6AnGhm2u0
SaMwOiocF5uH/GXQ6Ri6Vj+3wR8s8PmeLIF/HRoFPWYq3gpZjMIgQW8JjhST6w4V
3tCKJOK+MUb0VYaLrEJQEzhJfQKBgQDVLCTnEeoAx2OrWZEq6hma3E2dvFxbmwCd
oba4RWN9WoWPgtpLcuUbN8YaxbCRIub1DzimlIczchkYXB+AxI4yOe8LkZR5iykU
dzP8Z5czaRUQdQ5+8GUWhzKLCPCoAYXiTxNC2CEBZ2MEJN+e6T/jtBewS5Iotp8u
HrvJxRXTQQKBgQCb/fUOcPNJ1HvYqMX/NSWJpehYdqnoRA/PEOUW4gTsKaC2Zs/2
7RDNHENbFtAh1q7H4RcBox1bxIOktN8exrJ8fKfyuVOgA1Tw5kZfrGTMXpP1ekq3
/Ys6sUSZlgmb5d620QisfJhLbGWlqtoQBOdRg8G8UDtFtWgZOVPezef+6QKBgQCw
QevRUzKUqkhy6X/qZ937+aQDhDcpVyRPMeMOwfDdOPeuDZfJQprEwnz+re6sUpt8
jLVepviTRQgS6Dj0E5EvXk+U1S5awQGadmV5kX2neH9+OAtgUgyDcA4Of7nccEXv
NUrLvkCsFHv+dS6hCmNVNxdPIW0cVMORMsA6uMavAQKBgF0cLtY5JKeqxeIVx1bb
YY4Jnj/i+dFkRxY0hAyJKPoMbsQ7esRY+x1Ll91hI+HRLY7lWUY0NpPuLfCmNkNz
WCONiTZooBBHIQh75OAS+VzcnWTYVJllLZ+5g+1QRFKwVoO/DQDJhki8OYLu3fZQ
2IJdhcCP0CYOs5AUjVieEW3W
-----END PRIVATE KEY-----
";
    /// The same public key in PKCS#1 form (`openssl rsa -RSAPublicKey_out`).
    const TEST_RS256_PUBLIC_PKCS1_PEM: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEA0cWEHKvF9vHT5Z975+kXbyamK8zu3jD43LKDhMKF6IYXUQZvV3Jw
OOCPQL2afGXPqgc9Be3CLoBgLfxStzBqivRlWL44UPWmrGT4unjVygMv/Tzbqx3r
TsIC7CzPHW4R/hZplk7xX1IH/AlFVljfZ/mMFtZErHEZZ7qc5BjorfgvUWCTLC1Q
Rklj0b3YK2bL7On0TNfvCCSWExPPV5LJK1gtWiP2eo55lWJwW57a3Nej/LhKrJK7
yrnerxNrN24pEJ3UnhBu3AEf82ZX73n7EzWC528ZW3i6ociUte4NHUqAB9YACjmc
VJpiaUTBbGnMOgEwWFVQD8rIRrx8fh2vvQIDAQAB
-----END RSA PUBLIC KEY-----
";
    /// An unrelated 2048-bit public key.
    const OTHER_RS256_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAq56AOtybGVM4bjjCCgGo
TYqoGs1azOdcVXQTLr1OQWHAoyavzyFmAi2tHIVYs9WWyaJAHexYL3VhJmecyBbC
8l5H1DOArsqZnBJBQ0sINwqj+h3a7Zhraw6VmJEbMq//MYdeddF0sQIWYVUTydgF
wWLNPClKgysCYzNmc44r+76qdtouUK/Gk77y8s0xtmY6hc1dTePtJZmossKJwzHy
TnK6Rac1Ju+9BWztzY3Ub/GSpKz5I4MGMVFvNnHArBjWvLp8hMSHRKBIZzTG6V9F
oEw2VeUBoN5TdtprcFlyA/iat1CqHLB02QIuc8YbPd63Qzot1jiYGVrFhhEzCHki
zQIDAQAB
-----END PUBLIC KEY-----
";
    /// A 1024-bit public key: too small.
    const SMALL_RS256_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCn8O9cHOgQt3LZoXP9SZtosywO
6Yt1lOGi8b489CfacaCD4sqWe5bEwGnicp6LMBy44EOjSCOzU6kVxU8fgNnqrRqx
A+PonZYqeBdp956SL1yDFtxVpP4f8UV3ta/uo2+8JZzvZ6/8aKvU+a7+S64hNnuJ
Xr0f2vQl/JgtajlKOwIDAQAB
-----END PUBLIC KEY-----
";
    /// Signed by `openssl dgst -sha256 -sign` with the test key: a cross-check of our RS256
    /// against an independent implementation. Claims: sub "openssl", exp 4102444800
    /// (2100-01-01), rooms ["lobby", "game:*"].
    const OPENSSL_RS256_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJvcGVuc3NsIiwiZXhwIjo0MTAyNDQ0ODAwLCJyb29tcyI6WyJsb2JieSIsImdhbWU6KiJdfQ.nykFDRCeaoUF5GSmDZSK6PruZQ7FOOOK9-Ycelhfu1szmuZ9sHQY1N3szF4EIoFdgm9PZD8TinREkuTXRpVlCkGwW0xaabhL8TwQo-5GpYm7qm6SdTbZO1Age6RxEYSVF2bHbBCbc_04woz-GOhv9WXelPR_aMas8O_i7t9gi1uOtmZ03wdkQPjypqgzyy760rIIGDtCaBp0bI1yzJCwUlQECwRZY4hmBrIdrF3xn7ho4xzS2QoshFFH9aNeJgZG7NN1DZZrWlnoqfPFt03fDX1RQAZQ9MHSUGbpJrphSjRiIcatYmkX1CbO5-VaqNlzAtDd57V8Q0zWAkTwFKnlfw";

    const NOW: u64 = 1_700_000_000;
    const SECRET: &[u8] = b"a test secret of thirty-two+ bytes!";
    const HS256_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
    const RS256_HEADER: &str = r#"{"alg":"RS256"}"#;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn hs256_sign(secret: &[u8], input: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
        mac.update(input.as_bytes());
        b64(&mac.finalize().into_bytes())
    }

    fn hs256_token_with(secret: &[u8], header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let signature = hs256_sign(secret, &input);
        format!("{input}.{signature}")
    }

    fn hs256_token(claims: &str) -> String {
        hs256_token_with(SECRET, HS256_HEADER, claims)
    }

    fn rs256_token(header: &str, claims: &str) -> String {
        static KEY: OnceLock<SigningKey<Sha256>> = OnceLock::new();
        let key = KEY.get_or_init(|| {
            let private = RsaPrivateKey::from_pkcs8_pem(TEST_RS256_PRIVATE_PEM).expect("test key");
            SigningKey::<Sha256>::new(private)
        });
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let signature = key.sign(input.as_bytes()).to_vec();
        format!("{input}.{}", b64(&signature))
    }

    fn verifier() -> Verifier {
        Verifier::hs256(SECRET)
    }

    fn claims_ok(claims: &str) -> Claims {
        verifier()
            .verify(&hs256_token(claims), NOW)
            .expect("valid token")
    }

    fn claims_err(claims: &str) -> AuthError {
        verifier()
            .verify(&hs256_token(claims), NOW)
            .expect_err("token must be refused")
    }

    fn bad_claims(claims: &str) -> String {
        match claims_err(claims) {
            AuthError::BadClaims(reason) => reason,
            other => panic!("expected BadClaims, got {other:?}"),
        }
    }

    /// RFC 7515 Appendix A.1: the HS256 example JWS, its key (the JWK `k`, base64url), and
    /// its signature. The payload has no `sub`, so our verify must get past the signature
    /// and stop at the claims; a changed signature character must stop it at the signature.
    #[test]
    fn rfc7515_a1_hs256_example() {
        const KEY_K: &str =
            "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
        const TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9\
            .eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ\
            .dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        const EXP: u64 = 1_300_819_380;
        let key = URL_SAFE_NO_PAD.decode(KEY_K).expect("RFC key is base64url");
        assert_eq!(key.len(), 64);
        let (input, signature) = TOKEN.rsplit_once('.').expect("three parts");
        // Independent of `verify`: our test signer reproduces the RFC's signature.
        assert_eq!(hs256_sign(&key, input), signature);

        let v = Verifier::hs256(&key);
        assert_eq!(
            v.verify(TOKEN, EXP),
            Err(AuthError::BadClaims("sub is required".into()))
        );
        let mut tampered = TOKEN.to_string();
        tampered.pop();
        tampered.push('Y'); // last char 'k' -> 'Y': a different, still canonical, tag
        assert_eq!(v.verify(&tampered, EXP), Err(AuthError::BadSignature));

        // The same claims with a sub added, signed with the RFC key, pass.
        let header = "{\"typ\":\"JWT\",\r\n \"alg\":\"HS256\"}";
        let token = hs256_token_with(
            &key,
            header,
            "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true,\"sub\":\"joe\"}",
        );
        assert_eq!(v.verify(&token, EXP).map(|c| c.sub), Ok("joe".into()));
        assert_eq!(
            v.verify(&token, EXP + LEEWAY_S + 1),
            Err(AuthError::Expired {
                exp: EXP,
                now: EXP + LEEWAY_S + 1
            })
        );
    }

    #[test]
    fn valid_hs256_token() {
        let claims = claims_ok(r#"{"sub":"alice","exp":1700000600,"extra":{"deep":[1,2,{}]}}"#);
        assert_eq!(
            claims,
            Claims {
                sub: "alice".into(),
                exp: 1_700_000_600,
                rooms: None,
                publish: Vec::new(),
            }
        );
        // Padded base64url parts are accepted too (the signature covers them as sent).
        let pad = |p: &str| format!("{p}{}", "=".repeat((4 - p.len() % 4) % 4));
        let header = pad(&b64(HS256_HEADER.as_bytes()));
        let payload = pad(&b64(br#"{"sub":"a","exp":1700000600}"#));
        assert!(header.ends_with('=') || payload.ends_with('='));
        let input = format!("{header}.{payload}");
        let padded = format!("{input}.{}", pad(&hs256_sign(SECRET, &input)));
        assert!(padded.ends_with('='));
        assert!(verifier().verify(&padded, NOW).is_ok());
        // typ is optional.
        let token = hs256_token_with(
            SECRET,
            r#"{"alg":"HS256"}"#,
            r#"{"sub":"a","exp":1700000600}"#,
        );
        assert!(verifier().verify(&token, NOW).is_ok());
    }

    #[test]
    fn expired_with_leeway() {
        let at_edge = format!(r#"{{"sub":"a","exp":{}}}"#, NOW - LEEWAY_S);
        assert!(verifier().verify(&hs256_token(&at_edge), NOW).is_ok());
        let past = format!(r#"{{"sub":"a","exp":{}}}"#, NOW - LEEWAY_S - 60);
        let error = verifier().verify(&hs256_token(&past), NOW).unwrap_err();
        assert_eq!(
            error,
            AuthError::Expired {
                exp: NOW - 120,
                now: NOW
            }
        );
        assert_eq!(error.to_string(), "token expired 120 s ago");
        // Fractional exp rounds down; a huge one never expires but must not overflow.
        assert_eq!(
            claims_ok(r#"{"sub":"a","exp":1700000000.9}"#).exp,
            1_700_000_000
        );
        let max = format!(r#"{{"sub":"a","exp":{}}}"#, u64::MAX);
        assert!(verifier().verify(&hs256_token(&max), u64::MAX).is_ok());
        assert!(claims_ok(r#"{"sub":"a","exp":1e300}"#).exp == u64::MAX);
    }

    #[test]
    fn not_yet_valid_with_leeway() {
        let at_edge = format!(
            r#"{{"sub":"a","exp":{},"nbf":{}}}"#,
            NOW + 600,
            NOW + LEEWAY_S
        );
        assert!(verifier().verify(&hs256_token(&at_edge), NOW).is_ok());
        let future = format!(
            r#"{{"sub":"a","exp":{},"nbf":{}}}"#,
            NOW + 600,
            NOW + LEEWAY_S + 1
        );
        let error = verifier().verify(&hs256_token(&future), NOW).unwrap_err();
        assert_eq!(error, AuthError::NotYetValid);
        assert_eq!(error.to_string(), "token not valid yet");
        // Fractional nbf rounds up (stricter).
        let frac = format!(
            r#"{{"sub":"a","exp":{},"nbf":{}.5}}"#,
            NOW + 600,
            NOW + LEEWAY_S
        );
        assert_eq!(
            verifier().verify(&hs256_token(&frac), NOW),
            Err(AuthError::NotYetValid)
        );
        assert!(bad_claims(r#"{"sub":"a","exp":1700000600,"nbf":"soon"}"#).starts_with("nbf"));
        assert!(bad_claims(r#"{"sub":"a","exp":1700000600,"nbf":null}"#).starts_with("nbf"));
    }

    #[test]
    fn bad_signature() {
        let claims = r#"{"sub":"a","exp":1700000600}"#;
        let other = hs256_token_with(b"another secret, also 32 bytes long", HS256_HEADER, claims);
        assert_eq!(verifier().verify(&other, NOW), Err(AuthError::BadSignature));
        let token = hs256_token(claims);
        let (input, signature) = token.rsplit_once('.').unwrap_or_default();
        for sig in [
            "",
            "AAAA",
            &signature[..signature.len() - 3],
            &format!("{signature}AAAA"),
        ] {
            let forged = format!("{input}.{sig}");
            assert_eq!(
                verifier().verify(&forged, NOW),
                Err(AuthError::BadSignature),
                "{sig}"
            );
        }
        let error = AuthError::BadSignature;
        assert_eq!(error.to_string(), "bad signature");
        // A verifier with an empty secret refuses everything, even tokens "signed" with it.
        let empty = Verifier::hs256(b"");
        assert!(!empty.accepts_hs256());
        let token = hs256_token_with(b"", HS256_HEADER, claims);
        assert!(matches!(
            empty.verify(&token, NOW),
            Err(AuthError::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn tampered_payload() {
        let token = hs256_token(r#"{"sub":"alice","exp":1700000600}"#);
        let parts: Vec<&str> = token.split('.').collect();
        let evil = b64(br#"{"sub":"admin","exp":1700000600}"#);
        let tampered = format!("{}.{evil}.{}", parts[0], parts[2]);
        assert_eq!(
            verifier().verify(&tampered, NOW),
            Err(AuthError::BadSignature)
        );
        // Tampered header (typ changed) also breaks the signature.
        let header = b64(br#"{"alg":"HS256","typ":"jwt"}"#);
        let tampered = format!("{header}.{}.{}", parts[1], parts[2]);
        assert_eq!(
            verifier().verify(&tampered, NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let both = verifier()
            .with_rs256_pem(FUZZ_RS256_PUBLIC_PEM)
            .expect("test key");
        let claims = b64(br#"{"sub":"a","exp":1700000600}"#);
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
            for signature in ["", "c2ln"] {
                let token = format!("{header}.{claims}.{signature}");
                let error = both.verify(&token, NOW).unwrap_err();
                assert_eq!(error, AuthError::UnsupportedAlgorithm("none".into()));
                assert_eq!(error.to_string(), "alg none is not accepted");
            }
        }
    }

    #[test]
    fn wrong_alg_and_confusion() {
        let claims = r#"{"sub":"a","exp":1700000600}"#;
        let hs_only = verifier();
        let rs_only = Verifier::rs256_pem(FUZZ_RS256_PUBLIC_PEM).expect("test key");
        assert!(rs_only.accepts_rs256() && !rs_only.accepts_hs256());
        // HS256 verifier never takes RS256.
        let rs_token = rs256_token(RS256_HEADER, claims);
        assert_eq!(
            hs_only.verify(&rs_token, NOW),
            Err(AuthError::UnsupportedAlgorithm("RS256".into()))
        );
        // The classic confusion: HS256 "signed" with the RS256 public key as HMAC secret.
        for pem in [FUZZ_RS256_PUBLIC_PEM, TEST_RS256_PUBLIC_PKCS1_PEM] {
            let forged = hs256_token_with(pem.as_bytes(), HS256_HEADER, claims);
            assert_eq!(
                rs_only.verify(&forged, NOW),
                Err(AuthError::UnsupportedAlgorithm("HS256".into()))
            );
            let both = verifier().with_rs256_pem(pem).expect("test key");
            assert_eq!(both.verify(&forged, NOW), Err(AuthError::BadSignature));
            assert!(both.verify(&rs_token, NOW).is_ok());
            assert!(both.verify(&hs256_token(claims), NOW).is_ok());
        }
        // Other algorithms, and odd alg text, which is sanitised and truncated.
        for (alg, shown) in [
            ("HS384", "HS384"),
            ("ES256", "ES256"),
            ("hs256", "hs256"),
            ("", "\"\""),
            ("<script>", "?script?"),
            (
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "AAAAAAAAAAAAAAAAAAAAAAAA...",
            ),
        ] {
            let header = format!(r#"{{"alg":"{alg}"}}"#);
            let token = hs256_token_with(SECRET, &header, claims);
            assert_eq!(
                hs_only.verify(&token, NOW),
                Err(AuthError::UnsupportedAlgorithm(shown.into())),
                "{alg}"
            );
        }
    }

    #[test]
    fn malformed_tokens() {
        let v = verifier();
        let good = hs256_token(r#"{"sub":"a","exp":1700000600}"#);
        let parts: Vec<&str> = good.split('.').collect();
        let cases: Vec<(String, AuthError)> = vec![
            (String::new(), AuthError::Missing),
            (
                "abc".into(),
                AuthError::Malformed("expected header.payload.signature"),
            ),
            (
                format!("{}.{}", parts[0], parts[1]),
                AuthError::Malformed("expected header.payload.signature"),
            ),
            (
                format!("{good}.x"),
                AuthError::Malformed("expected header.payload.signature"),
            ),
            (
                format!("{good}.x.y"),
                AuthError::Malformed("encrypted tokens (JWE) are not accepted"),
            ),
            (
                format!("{}+.{}.{}", parts[0], parts[1], parts[2]),
                AuthError::Malformed("header is not base64url"),
            ),
            (
                format!("{}.{}/.{}", parts[0], parts[1], parts[2]),
                AuthError::Malformed("payload is not base64url"),
            ),
            (
                format!("{}.{}.{}!", parts[0], parts[1], parts[2]),
                AuthError::Malformed("signature is not base64url"),
            ),
            (
                format!("{}.{}.{}==", parts[0], parts[1], parts[2]),
                AuthError::Malformed("signature is not base64url"),
            ),
            (
                format!(" {good}"),
                AuthError::Malformed("header is not base64url"),
            ),
            (
                format!("{good}\n"),
                AuthError::Malformed("signature is not base64url"),
            ),
            // "QQ" is canonical for "A"; "QR" has non-zero trailing bits.
            (
                format!("QR.{}.{}", parts[1], parts[2]),
                AuthError::Malformed("header is not base64url"),
            ),
            (
                format!("{}.{}.{}", b64(b"A"), parts[1], parts[2]),
                AuthError::Malformed("header is not a JSON object"),
            ),
            (
                format!(".{}.{}", parts[1], parts[2]),
                AuthError::Malformed("header is not a JSON object"),
            ),
            ("a".repeat(TOKEN_BYTES_MAX + 1), AuthError::TooLarge),
        ];
        for (token, expected) in cases {
            assert_eq!(v.verify(&token, NOW), Err(expected), "{token:.80}");
        }
        assert_eq!(
            AuthError::TooLarge.to_string(),
            "token longer than 8192 bytes"
        );
        assert_eq!(
            AuthError::Malformed("header is not base64url").to_string(),
            "malformed token: header is not base64url"
        );
        assert_eq!(AuthError::Missing.to_string(), "no token");
        // A payload that is not base64url but correctly signed: still malformed.
        let input = format!("{}.not*base64", parts[0]);
        let token = format!("{input}.{}", hs256_sign(SECRET, &input));
        assert_eq!(
            v.verify(&token, NOW),
            Err(AuthError::Malformed("payload is not base64url"))
        );
    }

    #[test]
    fn bad_headers() {
        let claims = r#"{"sub":"a","exp":1700000600}"#;
        for (header, reason) in [
            (r#"["HS256"]"#, "header is not a JSON object"),
            (r#"{"alg":"HS256""#, "header is not valid JSON"),
            (r#"{"alg":"HS256"} x"#, "header is not valid JSON"),
            (r#"{"typ":"JWT"}"#, "header has no alg"),
            (r#"{"alg":null}"#, "header alg is not a string"),
            (r#"{"alg":256}"#, "header alg is not a string"),
            (
                r#"{"alg":"HS256","alg":"none"}"#,
                "header has a duplicate member",
            ),
            (
                r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
                "header crit is not supported",
            ),
            (
                r#"{"alg":"HS256","b64":false,"crit":["b64"]}"#,
                "header crit is not supported",
            ),
            ("{\"alg\":\"\\ud800\"}", "header is not valid JSON"),
        ] {
            let token = hs256_token_with(SECRET, header, claims);
            assert_eq!(
                verifier().verify(&token, NOW),
                Err(AuthError::Malformed(reason)),
                "{header}"
            );
        }
        // Unknown header members (kid, jwk, x5c) are ignored, never used as keys.
        let header = r#"{"alg":"HS256","kid":"k1","jwk":{"kty":"oct","k":"AA"},"x5c":["AA"]}"#;
        assert!(verifier()
            .verify(&hs256_token_with(SECRET, header, claims), NOW)
            .is_ok());
    }

    #[test]
    fn missing_or_bad_sub_and_exp() {
        assert_eq!(bad_claims(r#"{"exp":1700000600}"#), "sub is required");
        assert_eq!(bad_claims(r#"{"sub":"a"}"#), "exp is required");
        assert_eq!(bad_claims(r#"{"sub":"","exp":1700000600}"#), "sub is empty");
        for sub in ["null", "true", "1.5", "[]", "{}"] {
            let claims = format!(r#"{{"sub":{sub},"exp":1700000600}}"#);
            assert_eq!(
                bad_claims(&claims),
                "sub must be a string or an integer",
                "{sub}"
            );
        }
        let long = format!(
            r#"{{"sub":"{}","exp":1700000600}}"#,
            "u".repeat(SUB_BYTES_MAX + 1)
        );
        let reason = bad_claims(&long);
        assert_eq!(reason, "sub is 257 bytes; at most 256 are allowed");
        let max = format!(
            r#"{{"sub":"{}","exp":1700000600}}"#,
            "u".repeat(SUB_BYTES_MAX)
        );
        assert_eq!(claims_ok(&max).sub.len(), SUB_BYTES_MAX);
        for exp in ["null", "\"1700000600\"", "-1", "-0.5", "true", "[1]"] {
            let claims = format!(r#"{{"sub":"a","exp":{exp}}}"#);
            assert_eq!(
                bad_claims(&claims),
                "exp must be a non-negative number of seconds",
                "{exp}"
            );
        }
        assert_eq!(
            bad_claims(r#"[{"sub":"a","exp":1700000600}]"#),
            "claims are not a JSON object"
        );
        assert_eq!(
            bad_claims(r#"{"sub":"a","exp":1700000600"#),
            "claims are not valid JSON"
        );
        assert_eq!(
            bad_claims(r#"{"sub":"a","exp":1700000600}{}"#),
            "claims are not valid JSON"
        );
        assert_eq!(
            bad_claims(r#"{"sub":"a","sub":"admin","exp":1700000600}"#),
            "claims have a duplicate member"
        );
        assert_eq!(
            AuthError::BadClaims("sub is required".into()).to_string(),
            "bad claims: sub is required"
        );
    }

    #[test]
    fn numeric_sub_becomes_decimal() {
        assert_eq!(claims_ok(r#"{"sub":42,"exp":1700000600}"#).sub, "42");
        assert_eq!(claims_ok(r#"{"sub":-7,"exp":1700000600}"#).sub, "-7");
        assert_eq!(claims_ok(r#"{"sub":0,"exp":1700000600}"#).sub, "0");
        let max = format!(r#"{{"sub":{},"exp":1700000600}}"#, u64::MAX);
        assert_eq!(claims_ok(&max).sub, u64::MAX.to_string());
        // Above u64 it is a float: refused rather than rounded to another user.
        assert!(
            claims_err(r#"{"sub":18446744073709551616,"exp":1700000600}"#)
                .to_string()
                .contains("sub must be")
        );
    }

    #[test]
    fn pattern_matching() {
        for (pattern, name, expected) in [
            ("lobby", "lobby", true),
            ("lobby", "lobby2", false),
            ("lobby", "lobb", false),
            ("game:*", "game:7", true),
            ("game:*", "game:", true),
            ("game:*", "game", false),
            ("game:*", "gam", false),
            ("*", "", true),
            ("*", "anything:at/all", true),
            ("a*b", "a*b", true),
            ("a*b", "axb", false),
            ("**", "*x", true),
            ("**", "x", false),
            ("", "", true),
            ("", "x", false),
            ("é*", "été", true),
        ] {
            assert_eq!(
                pattern_matches(pattern, name),
                expected,
                "{pattern} vs {name}"
            );
        }
    }

    #[test]
    fn rooms_and_publish_claims() {
        let any = claims_ok(r#"{"sub":"a","exp":1700000600}"#);
        assert!(any.rooms.is_none() && any.may_join("whatever"));
        assert!(any.publish.is_empty() && !any.may_publish("room", "lobby"));

        let c = claims_ok(
            r#"{"sub":"a","exp":1700000600,"rooms":["lobby","game:*"],
               "publish":["room:game:*","user:bob","room:lobby:chat"]}"#,
        );
        assert_eq!(
            c.rooms,
            Some(vec!["lobby".to_string(), "game:*".to_string()])
        );
        assert!(c.may_join("lobby") && c.may_join("game:1") && c.may_join("game:"));
        assert!(!c.may_join("lobby2") && !c.may_join("game") && !c.may_join(""));
        assert!(c.may_publish("room", "game:9") && c.may_publish("room", "lobby:chat"));
        assert!(c.may_publish("user", "bob") && !c.may_publish("user", "bobby"));
        assert!(!c.may_publish("room", "lobby") && !c.may_publish("user", "game:9"));
        assert!(!c.may_publish("shard", "bob") && !c.may_publish("", "bob"));

        let none = claims_ok(r#"{"sub":"a","exp":1700000600,"rooms":[],"publish":[]}"#);
        assert_eq!(none.rooms, Some(Vec::new()));
        assert!(!none.may_join("lobby") && !none.may_join(""));

        let all = claims_ok(
            r#"{"sub":"a","exp":1700000600,"rooms":["*"],"publish":["room:*","user:*"]}"#,
        );
        assert!(all.may_join("x") && all.may_publish("room", "x") && all.may_publish("user", "y"));

        assert_eq!(
            bad_claims(r#"{"sub":"a","exp":1700000600,"rooms":null}"#),
            "rooms must be an array of strings"
        );
        assert_eq!(
            bad_claims(r#"{"sub":"a","exp":1700000600,"rooms":"lobby"}"#),
            "rooms must be an array of strings"
        );
        assert_eq!(
            bad_claims(r#"{"sub":"a","exp":1700000600,"rooms":["a",1]}"#),
            "rooms[1] is not a string"
        );
        assert_eq!(
            bad_claims(r#"{"sub":"a","exp":1700000600,"rooms":[""]}"#),
            "rooms[0] is empty"
        );
        assert_eq!(
            bad_claims(r#"{"sub":"a","exp":1700000600,"publish":null}"#),
            "publish must be an array of strings"
        );
        for entry in ["lobby", "room:", "users:x", "ROOM:x", ":x"] {
            let claims =
                format!(r#"{{"sub":"a","exp":1700000600,"publish":["user:ok","{entry}"]}}"#);
            assert_eq!(
                bad_claims(&claims),
                "publish[1] must be room:<pattern> or user:<pattern>"
            );
        }
    }

    #[test]
    fn list_limits() {
        let list = |n: usize, len: usize| {
            let items: Vec<String> = (0..n).map(|i| format!("\"{:0>len$}\"", i)).collect();
            items.join(",")
        };
        let ok = format!(
            r#"{{"sub":"a","exp":1700000600,"rooms":[{}]}}"#,
            list(PATTERNS_MAX, 8)
        );
        assert_eq!(claims_ok(&ok).rooms.map(|r| r.len()), Some(PATTERNS_MAX));
        let many = format!(
            r#"{{"sub":"a","exp":1700000600,"rooms":[{}]}}"#,
            list(PATTERNS_MAX + 1, 1)
        );
        assert_eq!(
            bad_claims(&many),
            "rooms has 257 entries; at most 256 are allowed"
        );
        let long = format!(
            r#"{{"sub":"a","exp":1700000600,"rooms":["{}"]}}"#,
            "r".repeat(257)
        );
        assert_eq!(bad_claims(&long), "rooms[0] is longer than 256 bytes");
        let edge = format!(
            r#"{{"sub":"a","exp":1700000600,"rooms":["{}"]}}"#,
            "r".repeat(256)
        );
        assert!(claims_ok(&edge).may_join(&"r".repeat(256)));
        let publish = format!(
            r#"{{"sub":"a","exp":1700000600,"publish":["room:{}"]}}"#,
            "r".repeat(252)
        );
        assert_eq!(bad_claims(&publish), "publish[0] is longer than 256 bytes");
        // A token past the size limit is refused before any decoding.
        let huge = format!(
            r#"{{"sub":"a","exp":1700000600,"pad":"{}"}}"#,
            "p".repeat(TOKEN_BYTES_MAX)
        );
        assert_eq!(claims_err(&huge), AuthError::TooLarge);
        assert_eq!(
            parse_claims(&vec![b' '; TOKEN_BYTES_MAX + 1]).map(|_| ()),
            Err(AuthError::TooLarge)
        );
    }

    #[test]
    fn unknown_claims_are_ignored() {
        let c = claims_ok(
            r#"{"iss":"me","aud":["x"],"iat":1,"jti":"j","sub":"a","exp":1700000600,"x":{"y":[null,1.5,"z"]}}"#,
        );
        assert_eq!(c.sub, "a");
    }

    /// Messages go to clients and logs: never the token, the secret, or a claim's value.
    #[test]
    fn errors_never_leak() {
        let secret_text = "hunter2-hunter2-hunter2-hunter2-hunter2";
        let v = Verifier::hs256(secret_text.as_bytes());
        let marker = "SECRETVALUE";
        let tokens = [
            hs256_token_with(
                secret_text.as_bytes(),
                HS256_HEADER,
                &format!(r#"{{"sub":["{marker}"],"exp":1}}"#),
            ),
            hs256_token_with(
                secret_text.as_bytes(),
                HS256_HEADER,
                &format!(r#"{{"sub":"a","exp":"{marker}"}}"#),
            ),
            hs256_token_with(
                secret_text.as_bytes(),
                HS256_HEADER,
                &format!(r#"{{"sub":"a","exp":1,"rooms":[{{"{marker}":1}}]}}"#),
            ),
            hs256_token_with(
                secret_text.as_bytes(),
                HS256_HEADER,
                &format!(r#"{{"sub":"{marker}","exp":1}}"#),
            ),
            hs256_token_with(
                secret_text.as_bytes(),
                HS256_HEADER,
                &format!(r#"{{"sub":"a","exp":1,"x":"{marker}"#),
            ),
            hs256_token_with(
                secret_text.as_bytes(),
                &format!(r#"{{"alg":"HS256","x":{marker}}}"#),
                "{}",
            ),
            hs256_token_with(
                b"wrong",
                HS256_HEADER,
                &format!(r#"{{"sub":"{marker}","exp":1}}"#),
            ),
        ];
        let debug = format!("{v:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        for token in &tokens {
            let error = v.verify(token, NOW).unwrap_err();
            let message = error.to_string();
            assert!(!message.contains(marker), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
            assert!(!message.contains(token.as_str()), "{message}");
            assert!(!format!("{error:?}").contains(marker));
        }
    }

    #[test]
    fn constant_time_eq_cases() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"api-key-123", b"api-key-123"));
        assert!(!constant_time_eq(b"api-key-123", b"api-key-124"));
        assert!(!constant_time_eq(b"api-key-123", b"api-key-12"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(!constant_time_eq(b"xapi-key-123", b"api-key-123"));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Ok("abc.def.ghi"));
        assert_eq!(bearer_token("bearer   abc "), Ok("abc"));
        assert_eq!(bearer_token("BEARER abc"), Ok("abc"));
        assert_eq!(bearer_token(""), Err(AuthError::Missing));
        assert_eq!(bearer_token("Bearer"), Err(AuthError::Missing));
        assert_eq!(bearer_token("Bearer    "), Err(AuthError::Missing));
        assert!(matches!(
            bearer_token("Basic dXNlcjpwYXNz"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            bearer_token("Bearerabc"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn rs256_tokens() {
        let spki = Verifier::rs256_pem(FUZZ_RS256_PUBLIC_PEM).expect("SPKI PEM");
        let pkcs1 = Verifier::rs256_pem(TEST_RS256_PUBLIC_PKCS1_PEM).expect("PKCS#1 PEM");
        // Surrounding whitespace and CRLF line ends, as files from other systems have.
        let crlf = format!("\n  {}\r\n", FUZZ_RS256_PUBLIC_PEM.replace('\n', "\r\n"));
        let crlf = Verifier::rs256_pem(&crlf).expect("CRLF PEM");
        assert_eq!(
            format!("{spki:?}"),
            "Verifier { hs256: false, rs256_bits: Some(2048) }"
        );

        // Cross-check: a token signed by openssl, not by us.
        for v in [&spki, &pkcs1, &crlf] {
            let claims = v.verify(OPENSSL_RS256_TOKEN, NOW).expect("openssl token");
            assert_eq!(claims.sub, "openssl");
            assert_eq!(claims.exp, 4_102_444_800);
            assert!(claims.may_join("lobby") && claims.may_join("game:3") && !claims.may_join("x"));
        }

        let token = rs256_token(RS256_HEADER, r#"{"sub":"rs","exp":1700000600}"#);
        assert_eq!(spki.verify(&token, NOW).map(|c| c.sub), Ok("rs".into()));
        assert_eq!(pkcs1.verify(&token, NOW).map(|c| c.sub), Ok("rs".into()));
        assert!(matches!(
            spki.verify(&token, NOW + 10_000),
            Err(AuthError::Expired { .. })
        ));

        let other = Verifier::rs256_pem(OTHER_RS256_PUBLIC_PEM).expect("other key");
        assert_eq!(other.verify(&token, NOW), Err(AuthError::BadSignature));

        let parts: Vec<&str> = token.split('.').collect();
        let evil = b64(br#"{"sub":"admin","exp":1700000600}"#);
        let tampered = format!("{}.{evil}.{}", parts[0], parts[2]);
        assert_eq!(spki.verify(&tampered, NOW), Err(AuthError::BadSignature));
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature");
        for bad in [
            &signature[1..],
            &[&signature[..], &[0]].concat(),
            &[0xff; 256][..],
            &[0; 256][..],
        ] {
            let forged = format!("{}.{}.{}", parts[0], parts[1], b64(bad));
            assert_eq!(spki.verify(&forged, NOW), Err(AuthError::BadSignature));
        }
        assert!(matches!(
            spki.verify(&rs256_token(RS256_HEADER, r#"{"exp":1700000600}"#), NOW),
            Err(AuthError::BadClaims(_))
        ));
    }

    #[test]
    fn rs256_pem_errors() {
        let err = |pem: &str| Verifier::rs256_pem(pem).expect_err("must be refused");
        assert!(err(TEST_RS256_PRIVATE_PEM).contains("private key"));
        assert!(err("").contains("expected a PEM"));
        assert!(err("not a pem").contains("expected a PEM"));
        assert!(err(SMALL_RS256_PUBLIC_PEM).contains("1024 bits"));
        assert!(err(&" ".repeat(PEM_BYTES_MAX + 1).replace(' ', "x")).contains("at most"));
        let broken = FUZZ_RS256_PUBLIC_PEM.replace("MIIB", "MIIC");
        assert!(err(&broken).contains("SPKI"));
        let swapped = TEST_RS256_PUBLIC_PKCS1_PEM.replace("RSA PUBLIC KEY", "PUBLIC KEY");
        assert!(err(&swapped).contains("SPKI"));
        // The fuzz verifier really has both keys (else fuzz_one would skip RS256).
        assert!(fuzz_verifier().accepts_hs256() && fuzz_verifier().accepts_rs256());
    }

    /// xorshift64: a tiny seeded generator, so runs are reproducible without a rand crate.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// A claims object built from fragments that hit every claim rule.
    fn random_claims(rng: &mut XorShift) -> String {
        const VALUES: &[&str] = &[
            "null",
            "true",
            "0",
            "-1",
            "1.5",
            "1e400",
            "18446744073709551615",
            "1700000600",
            "\"\"",
            "\"alice\"",
            "\"\\ud800\"",
            "\"é\"",
            "[]",
            "[\"*\"]",
            "[\"room:*\",\"user:b\"]",
            "[\"game:*\",1]",
            "[\"x\"]",
            "{}",
            "{\"a\":[[[]]]}",
            "\"room:\"",
            "[\"\"]",
        ];
        const KEYS: &[&str] = &["sub", "exp", "nbf", "rooms", "publish", "iat", "x", ""];
        let members: Vec<String> = (0..rng.below(7))
            .map(|_| format!("\"{}\":{}", rng.pick(KEYS), rng.pick(VALUES)))
            .collect();
        let mut json = format!("{{{}}}", members.join(","));
        if rng.below(8) == 0 {
            let mut cut = rng.below(json.len());
            while !json.is_char_boundary(cut) {
                cut -= 1;
            }
            json.truncate(cut);
        }
        json
    }

    fn mutate(rng: &mut XorShift, token: &str) -> Vec<u8> {
        let mut bytes = token.as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(6) {
                0 if !bytes.is_empty() => {
                    let i = at.min(bytes.len() - 1);
                    bytes[i] ^= 1 << rng.below(8);
                }
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                2 => bytes.insert(at, b".=-_A\xff"[rng.below(6)]),
                3 => bytes.truncate(at),
                4 => {
                    let tail = bytes[at..].to_vec();
                    bytes.extend_from_slice(&tail);
                }
                _ => bytes.insert(at, b'.'),
            }
        }
        bytes
    }

    /// ~20k seeded inputs: random bytes, random base64url-ish text, mutated valid HS256 and
    /// RS256 tokens, and correctly signed tokens with random headers and claims (these reach
    /// the claims rules through `verify`, which random bytes never would).
    #[test]
    fn fuzz_one_seeded() {
        const ROUNDS: usize = 20_000;
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let valid_hs = hs256_token_with(
            FUZZ_HS256_SECRET,
            HS256_HEADER,
            r#"{"sub":"f","exp":1700000600,"nbf":1,"rooms":["a*"],"publish":["room:*"]}"#,
        );
        let valid_rs = rs256_token(RS256_HEADER, r#"{"sub":"r","exp":1700000600}"#);
        assert!(fuzz_verifier().verify(&valid_hs, NOW).is_ok());
        assert!(fuzz_verifier().verify(&valid_rs, NOW).is_ok());
        const ALPHABET: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
        const HEADERS: &[&str] = &[
            r#"{"alg":"HS256"}"#,
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"alg":"none"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"HS256","crit":[]}"#,
            r#"{"alg":["HS256"]}"#,
            r#"{"alg":"HS256","alg":"HS256"}"#,
            "[]",
            "",
            "{",
        ];
        let mut reached_claims = 0;
        for round in 0..ROUNDS {
            let input: Vec<u8> = match round % 6 {
                0 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
                1 => (0..rng.below(300))
                    .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                    .collect(),
                2 | 3 => mutate(&mut rng, &valid_hs),
                // RSA verification is slow in debug builds: mutate RS256 tokens less often.
                4 if round % 60 == 4 => mutate(&mut rng, &valid_rs),
                _ => {
                    let header = rng.pick(HEADERS);
                    let claims = random_claims(&mut rng);
                    let token = hs256_token_with(FUZZ_HS256_SECRET, header, &claims);
                    // Correctly signed HS256 tokens must get past the signature.
                    if header.starts_with(r#"{"alg":"HS256"}"#) {
                        let result = fuzz_verifier().verify(&token, NOW);
                        assert!(!matches!(
                            result,
                            Err(AuthError::BadSignature) | Err(AuthError::Malformed(_))
                        ));
                        reached_claims += 1;
                    }
                    token.into_bytes()
                }
            };
            fuzz_one(&input);
        }
        assert!(reached_claims > 500, "{reached_claims}");
        // Edge inputs.
        for input in [
            &b""[..],
            b".",
            b"..",
            b"...",
            b"....",
            &[0xff; 9000],
            &[b'A'; 8192],
        ] {
            fuzz_one(input);
        }
    }
}
