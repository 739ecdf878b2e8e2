//! Obfuscation of selected event fields before they are sent to Devo.
//!
//! A user names fields as dotted paths (`target_user.email, client.ip_address`)
//! and picks a mode: `Hash` replaces a value by its keyed HMAC-SHA-256 (equal
//! values stay equal, so events can still be joined on them), `Mask` replaces
//! it by asterisks.
//!
//! Events travel as raw JSON text and everything that is not selected must
//! reach Devo exactly as 1Password sent it. So an event is never turned into a
//! `serde_json::Value` (whose map would sort the keys). Instead the text is
//! scanned once with a path-guided visitor: only objects and arrays on a
//! selected path are looked into, every other value is skipped, and a selected
//! value is captured as a borrowed `RawValue`, i.e. a slice of the event text.
//! The result is the event text with just those slices replaced: key order,
//! duplicate keys, escapes and layout of everything else stay byte-for-byte.

use crate::json;
use hmac::{Hmac, Mac};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use sha2::Sha256;
use std::borrow::Cow;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// What a masked value that is not a string (or a whole object/array) becomes.
const MASK: &str = "****";

/// How a selected field's value is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Lowercase hex HMAC-SHA-256 of the value under the configured key.
    Hash,
    /// Strings become as many `*` as they have characters; other values
    /// become `"****"`.
    Mask,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObfuscateError {
    /// A path in the field list is malformed (holds the offending path,
    /// shown cut when long).
    #[error(
        "obfuscate_fields: {} is not a valid field path; use key names separated \
         by single dots with no empty parts or surrounding spaces, e.g. client.ip_address",
        crate::error::quoted(.0)
    )]
    BadPath(String),
    /// Hash mode was chosen without a (non-empty) key.
    #[error("obfuscation in hash mode needs a non-empty key; set the key or use mask mode")]
    MissingKey,
    /// The event text is not a single valid JSON value.
    #[error("event cannot be obfuscated because it is not valid JSON: {0}")]
    NotJson(String),
}

/// One level of the selected paths: the keys that continue a path here.
#[derive(Clone, Debug, Default)]
struct PathNode {
    /// A path ends here: the whole value is replaced (deeper paths are moot).
    terminal: bool,
    children: Vec<(String, PathNode)>,
}

impl PathNode {
    fn child(&self, key: &str) -> Option<&PathNode> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }

    fn insert(&mut self, segments: &[&str]) {
        let Some((first, rest)) = segments.split_first() else {
            self.terminal = true;
            return;
        };
        let index = match self.children.iter().position(|(k, _)| k == first) {
            Some(i) => i,
            None => {
                self.children.push((first.to_string(), PathNode::default()));
                self.children.len() - 1
            }
        };
        self.children[index].1.insert(rest);
    }
}

/// A parsed `obfuscate_fields` list plus mode and key.
#[derive(Clone)]
pub struct Obfuscator {
    /// The paths as configured (trimmed), for `Debug`.
    paths: Vec<String>,
    root: PathNode,
    mode: Mode,
    /// HMAC state already keyed (Hash mode only); cloned for every value.
    mac: Option<HmacSha256>,
}

impl fmt::Debug for Obfuscator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Obfuscator")
            .field("paths", &self.paths)
            .field("mode", &self.mode)
            .field("key", &self.mac.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Obfuscator {
    /// `fields`: comma-separated dotted paths, e.g.
    /// `"target_user.email, client.ip_address, actor_details.email"`.
    ///
    /// A segment walks into an object by key; when a segment reaches an
    /// array, the rest of the path applies to every element (so `items.email`
    /// selects the `email` of each object in `items`). A path that ends at an
    /// object or array replaces it whole. Whitespace around paths and empty
    /// list entries (`"a,,b"`, a trailing comma) are ignored; empty segments
    /// (`"a..b"`, `".a"`, `"a."`) or spaces around a segment are errors. Keys
    /// containing a dot cannot be selected.
    ///
    /// `key`: the secret for Hash mode (required and non-empty for Hash,
    /// ignored for Mask).
    pub fn new(fields: &str, mode: Mode, key: Option<&[u8]>) -> Result<Obfuscator, ObfuscateError> {
        let mut paths = Vec::new();
        let mut root = PathNode::default();
        for path in fields.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let segments: Vec<&str> = path.split('.').collect();
            if segments.iter().any(|s| s.is_empty() || s.trim() != *s) {
                return Err(ObfuscateError::BadPath(path.to_string()));
            }
            root.insert(&segments);
            paths.push(path.to_string());
        }
        let mac = match mode {
            Mode::Mask => None,
            Mode::Hash => match key {
                Some(key) if !key.is_empty() => {
                    Some(<HmacSha256 as Mac>::new_from_slice(key).map_err(|_| ObfuscateError::MissingKey)?)
                }
                _ => return Err(ObfuscateError::MissingKey),
            },
        };
        Ok(Obfuscator { paths, root, mode, mac })
    }

    /// True when no field is selected: `apply` then never changes anything.
    pub fn is_empty(&self) -> bool {
        self.root.children.is_empty()
    }

    /// Applies to one event's raw JSON text.
    ///
    /// Returns the input itself (`Cow::Borrowed`) when no selected path holds
    /// a value to hide in this event (absent paths are skipped silently, and
    /// `null` is kept as it hides nothing). Otherwise returns the event text
    /// with only the selected values replaced; every other byte (key order,
    /// duplicate keys, escapes, whitespace) is kept, so a compact event stays
    /// compact. With no fields selected the text is not even parsed.
    pub fn apply<'a>(&self, raw: &'a str) -> Result<Cow<'a, str>, ObfuscateError> {
        if self.is_empty() {
            return Ok(Cow::Borrowed(raw));
        }
        let not_json = |e: serde_json::Error| ObfuscateError::NotJson(e.to_string());
        let mut found: Vec<&'a RawValue> = Vec::new();
        let mut de = serde_json::Deserializer::from_str(raw);
        Walk { node: &self.root, found: &mut found }.deserialize(&mut de).map_err(not_json)?;
        de.end().map_err(not_json)?;
        if found.is_empty() {
            return Ok(Cow::Borrowed(raw));
        }

        let mut out = String::with_capacity(raw.len() + 64 * found.len());
        let mut copied = 0;
        for value in found {
            let text = value.get();
            // A borrowed RawValue is a slice of `raw`; its position there is
            // the distance between the two pointers. Values come in document
            // order and never overlap (a selected value is not looked into).
            let start = (text.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
            let end = start.checked_add(text.len());
            match end {
                Some(end) if start >= copied && raw.get(start..end) == Some(text) => {
                    out.push_str(&raw[copied..start]);
                    out.push_str(&self.replacement(text)?);
                    copied = end;
                }
                _ => {
                    return Err(ObfuscateError::NotJson("selected value could not be located in the event text".into()))
                }
            }
        }
        out.push_str(&raw[copied..]);
        Ok(Cow::Owned(out))
    }

    /// The JSON text that replaces one selected (non-null) value.
    fn replacement(&self, text: &str) -> Result<String, ObfuscateError> {
        let is_string = text.starts_with('"');
        let decoded = if is_string {
            Some(serde_json::from_str::<String>(text).map_err(|e| ObfuscateError::NotJson(e.to_string()))?)
        } else {
            None
        };
        let replaced = match &self.mac {
            Some(mac) => {
                // The canonical text: a string's content, a number's or bool's
                // JSON text, an object's or array's JSON text without layout.
                let canonical: Cow<'_, str> = match &decoded {
                    Some(s) => Cow::Borrowed(s.as_str()),
                    None if text.starts_with(['{', '[']) => Cow::Owned(json::compact(text)),
                    None => Cow::Borrowed(text),
                };
                let mut mac = mac.clone();
                mac.update(canonical.as_bytes());
                hex(&mac.finalize().into_bytes())
            }
            None => match &decoded {
                Some(s) => "*".repeat(s.chars().count()),
                None => MASK.to_string(),
            },
        };
        // Both replacements are plain ASCII without quotes or backslashes.
        Ok(format!("\"{replaced}\""))
    }
}

/// Walks one value guided by the path node that applies to it, collecting
/// the selected values as slices of the input.
struct Walk<'w, 'de> {
    node: &'w PathNode,
    found: &'w mut Vec<&'de RawValue>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    // Scalars on a path that goes deeper hold nothing to select.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    /// The rest of the path applies to every element.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Walk { node: self.node, found: &mut *self.found })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match self.node.child(&key) {
                Some(child) if child.terminal => {
                    let value: &'de RawValue = map.next_value()?;
                    if value.get() != "null" {
                        self.found.push(value);
                    }
                }
                Some(child) => map.next_value_seed(Walk { node: child, found: &mut *self.found })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// An object key, borrowed from the input unless it had escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"hunter2-obfuscation-key";

    fn hasher(fields: &str) -> Obfuscator {
        Obfuscator::new(fields, Mode::Hash, Some(KEY)).unwrap()
    }

    fn masker(fields: &str) -> Obfuscator {
        Obfuscator::new(fields, Mode::Mask, None).unwrap()
    }

    /// HMAC-SHA-256 computed here directly with the hmac crate, as lowercase hex.
    fn expected_hmac(key: &[u8], data: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `input` with each `old` (which must occur exactly once) replaced by `new`.
    fn substitute(input: &str, pairs: &[(&str, String)]) -> String {
        let mut out = input.to_string();
        for (old, new) in pairs {
            assert_eq!(out.matches(old).count(), 1, "{old} must occur once");
            out = out.replace(old, new);
        }
        out
    }

    fn owned(result: Cow<'_, str>) -> String {
        match result {
            Cow::Owned(s) => s,
            Cow::Borrowed(s) => panic!("expected a changed event, got the input back: {s}"),
        }
    }

    /// The top-level keys of an object in document order.
    fn top_keys(json: &str) -> Vec<String> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(keys)
            }
        }
        serde_json::Deserializer::from_str(json).deserialize_map(Keys).unwrap()
    }

    const AUDIT_V2: &str = concat!(
        r#"{"uuid":"56YE2TYN2VFYRLNSHKPW5NVT5E","timestamp":"2024-10-01T16:32:50-03:00","#,
        r#""actor_uuid":"GLF6WUEKS5CSNDJ2OG6TCZD3M4","#,
        r#""actor_details":{"uuid":"GLF6WUEKS5CSNDJ2OG6TCZD3M4","name":"Jack O'Neill","email":"jack@example.com"},"#,
        r#""action":"join","object_type":"gm","object_uuid":"pf8soyakgngrphytsyjed4ae3u","#,
        r#""object_details":{"uuid":"pf8soyakgngrphytsyjed4ae3u","name":"Owners"},"#,
        r#""aux_id":9277034,"aux_uuid":"K6VFYDCJKHGGDI7QFAXX65LCDY","#,
        r#""aux_details":{"uuid":"K6VFYDCJKHGGDI7QFAXX65LCDY","name":"Wendy Appleseed","email":"wendy@example.com"},"#,
        r#""aux_info":"A","#,
        r#""session":{"uuid":"ODOHXUYQCJBUJKRGZNNPBJURPE","login_time":"2024-10-01T16:30:11-03:00","device_uuid":"rqtd557fn2husnstp5nc66w2xa","ip":"192.0.2.254"},"#,
        r#""location":{"country":"Canada","region":"Ontario","city":"Toronto","latitude":43.64,"longitude":-79.433},"#,
        r#""account_uuid":"VZSYVT2LGHTBWBQGUJAIZVRABM"}"#
    );

    const ITEM_USAGE_V2: &str = concat!(
        r#"{"uuid":"MCQODZZOUJ6SJZXMDPTJWGR4YE","timestamp":"2024-11-20T09:12:01Z","used_version":3,"#,
        r#""vault_uuid":"jaqxqf5qylslqiitnduawrndc5","item_uuid":"fwjnoh7vxw7xlndz6omwu3uqja","action":"secure-copy","#,
        r#""user":{"uuid":"4HCGRGYCTRQFBMGVEGTABYDU2V","name":"Ada Lovelace","email":"ada@example.org","user_account_uuid":"NYBHHU3NOBTDFDBYPJRLVAXSZE","user_type":"member"},"#,
        r#""client":{"app_name":"1Password Browser Extension","app_version":"81124","platform_name":"Firefox","platform_version":"132.0","os_name":"Windows","os_version":"10.0","ip_address":"198.51.100.7"},"#,
        r#""location":{"country":"GB","region":"England","city":"London","latitude":51.5072,"longitude":-0.1276},"#,
        r#""account_uuid":"VZSYVT2LGHTBWBQGUJAIZVRABM"}"#
    );

    const SIGN_IN_V2: &str = concat!(
        r#"{"uuid":"56YE2TYN2VFYRLNSHKPW5NVT5E","session_uuid":"A5K6COGVRVEJXJW3XQZGS7VAMM","#,
        r#""timestamp":"2024-11-21T16:32:50-03:00","category":"firewall_failed","type":"continent_blocked","#,
        r#""country":"France","details":{"value":"Europe"},"#,
        r#""target_user":{"uuid":"IR7VJHJ36JHINBFAD7V2T5MP3E","name":"Jack O'Neill","email":"jack@example.com","user_account_uuid":"OXAUNW2CRBFEBGVM4NQPSKBZKE","type":"user"},"#,
        r#""client":{"app_name":"1Password Extension","app_version":"20127","platform_name":"Chrome","platform_version":"85.0","os_name":"MacOSX","os_version":"10.15.6","ip_address":"13.227.95.22"},"#,
        r#""location":{"country":"CA","region":"Ontario","city":"Toronto","latitude":43.64,"longitude":-79.433},"#,
        r#""account_uuid":"VZSYVT2LGHTBWBQGUJAIZVRABM"}"#
    );

    #[test]
    fn samples_are_valid_json() {
        for sample in [AUDIT_V2, ITEM_USAGE_V2, SIGN_IN_V2] {
            serde_json::from_str::<serde_json::Value>(sample).unwrap();
        }
    }

    #[test]
    fn audit_event_hashed_in_place() {
        let ob = hasher("actor_details.email, session.ip, location.latitude, aux_details");
        let out = owned(ob.apply(AUDIT_V2).unwrap());
        let h = |s: &str| expected_hmac(KEY, s.as_bytes());
        let aux = r#"{"uuid":"K6VFYDCJKHGGDI7QFAXX65LCDY","name":"Wendy Appleseed","email":"wendy@example.com"}"#;
        let expected = substitute(
            AUDIT_V2,
            &[
                (r#""email":"jack@example.com""#, format!(r#""email":"{}""#, h("jack@example.com"))),
                (r#""ip":"192.0.2.254""#, format!(r#""ip":"{}""#, h("192.0.2.254"))),
                (r#""latitude":43.64"#, format!(r#""latitude":"{}""#, h("43.64"))),
                (aux, format!(r#""{}""#, h(aux))),
            ],
        );
        assert_eq!(out, expected);
        assert_eq!(top_keys(&out), top_keys(AUDIT_V2));
    }

    #[test]
    fn item_usage_masked_in_place() {
        let ob = masker("user.email,client.ip_address,user.name,location");
        let out = owned(ob.apply(ITEM_USAGE_V2).unwrap());
        let loc = r#"{"country":"GB","region":"England","city":"London","latitude":51.5072,"longitude":-0.1276}"#;
        let expected = substitute(
            ITEM_USAGE_V2,
            &[
                (r#""email":"ada@example.org""#, format!(r#""email":"{}""#, "*".repeat(15))),
                (r#""name":"Ada Lovelace""#, r#""name":"************""#.to_string()),
                (r#""ip_address":"198.51.100.7""#, r#""ip_address":"************""#.to_string()),
                (loc, r#""****""#.to_string()),
            ],
        );
        assert_eq!(out, expected);
        assert_eq!(top_keys(&out), top_keys(ITEM_USAGE_V2));
    }

    #[test]
    fn sign_in_attempt_hashed_in_place() {
        let ob = hasher(" target_user.email , client.ip_address,target_user.user_account_uuid,location.city ");
        let out = owned(ob.apply(SIGN_IN_V2).unwrap());
        let h = |s: &str| expected_hmac(KEY, s.as_bytes());
        let expected = substitute(
            SIGN_IN_V2,
            &[
                (r#""email":"jack@example.com""#, format!(r#""email":"{}""#, h("jack@example.com"))),
                (
                    r#""user_account_uuid":"OXAUNW2CRBFEBGVM4NQPSKBZKE""#,
                    format!(r#""user_account_uuid":"{}""#, h("OXAUNW2CRBFEBGVM4NQPSKBZKE")),
                ),
                (r#""ip_address":"13.227.95.22""#, format!(r#""ip_address":"{}""#, h("13.227.95.22"))),
                (r#""city":"Toronto""#, format!(r#""city":"{}""#, h("Toronto"))),
            ],
        );
        assert_eq!(out, expected);
        assert_eq!(top_keys(&out), top_keys(SIGN_IN_V2));
    }

    #[test]
    fn same_fields_across_event_shapes() {
        // One configured list serves all services; absent paths are skipped.
        let ob = masker("target_user.email, actor_details.email, aux_details.email, user.email");
        for sample in [AUDIT_V2, ITEM_USAGE_V2, SIGN_IN_V2] {
            let out = owned(ob.apply(sample).unwrap());
            assert_eq!(out.len(), sample.len());
            assert!(!out.contains("@example"));
        }
    }

    #[test]
    fn whole_value_wins_over_deeper_path() {
        let ob = masker("client.ip_address, client");
        let out = owned(ob.apply(SIGN_IN_V2).unwrap());
        assert!(out.contains(r#""client":"****","location""#), "{out}");
    }

    #[test]
    fn path_through_array_of_objects() {
        let raw = r#"{"items":[{"email":"a@x.io","n":1},{"n":2,"email":"bob@x.io"},{"other":"a@x.io"},"str",7,null,[{"email":"c@x.io"}]],"email":"top@x.io"}"#;
        let out = owned(masker("items.email").apply(raw).unwrap());
        assert_eq!(
            out,
            r#"{"items":[{"email":"******","n":1},{"n":2,"email":"********"},{"other":"a@x.io"},"str",7,null,[{"email":"******"}]],"email":"top@x.io"}"#
        );
        // A top-level array works the same way.
        let out = owned(masker("email").apply(r#"[{"email":"ab"},{"x":1}]"#).unwrap());
        assert_eq!(out, r#"[{"email":"**"},{"x":1}]"#);
    }

    #[test]
    fn path_ending_at_an_array() {
        let raw = r#"{"tags":["a",1,{"b":null}],"x":[1]}"#;
        assert_eq!(owned(masker("tags").apply(raw).unwrap()), r#"{"tags":"****","x":[1]}"#);
        let hashed = owned(hasher("tags").apply(raw).unwrap());
        let h = expected_hmac(KEY, br#"["a",1,{"b":null}]"#);
        assert_eq!(hashed, format!(r#"{{"tags":"{h}","x":[1]}}"#));
        // The hash covers the compact text: layout does not change it.
        let spaced = "{\"tags\": [ \"a\" ,\n 1, {\"b\" : null} ],\"x\":[1]}";
        let out = owned(hasher("tags").apply(spaced).unwrap());
        assert_eq!(out, format!("{{\"tags\": \"{h}\",\"x\":[1]}}"));
    }

    #[test]
    fn hash_known_answer_rfc4231() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let ob = Obfuscator::new("q", Mode::Hash, Some(b"Jefe")).unwrap();
        let out = owned(ob.apply(r#"{"q":"what do ya want for nothing?"}"#).unwrap());
        assert_eq!(out, r#"{"q":"5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"}"#);
    }

    #[test]
    fn hash_of_scalars_uses_their_json_text() {
        let raw = r#"{"a":"x","n":-12.5e3,"t":true,"f":false,"o":{ "k" : "v" }}"#;
        let out = owned(hasher("n,t,f,o").apply(raw).unwrap());
        let h = |s: &str| expected_hmac(KEY, s.as_bytes());
        assert_eq!(
            out,
            format!(
                r#"{{"a":"x","n":"{}","t":"{}","f":"{}","o":"{}"}}"#,
                h("-12.5e3"),
                h("true"),
                h("false"),
                h(r#"{"k":"v"}"#)
            )
        );
    }

    #[test]
    fn equal_values_hash_equal_and_keys_matter() {
        let a = hasher("target_user.email").apply(SIGN_IN_V2).unwrap();
        let b = hasher("actor_details.email").apply(AUDIT_V2).unwrap();
        let hash = expected_hmac(KEY, b"jack@example.com");
        assert_eq!(hash.len(), 64);
        assert!(a.contains(&hash) && b.contains(&hash));
        // The same value written with escapes is the same value.
        let c = hasher("e").apply(r#"{"e":"jack\u0040example.com"}"#).unwrap();
        assert_eq!(c, format!(r#"{{"e":"{hash}"}}"#));

        let other =
            Obfuscator::new("target_user.email", Mode::Hash, Some(b"another key")).unwrap().apply(SIGN_IN_V2).unwrap();
        assert!(!other.contains(&hash));
        assert_ne!(other, a);
        assert!(other.contains(&expected_hmac(b"another key", b"jack@example.com")));
    }

    #[test]
    fn mask_lengths_non_strings_and_null() {
        let raw = r#"{"s":"hello","u":"\u00e9t\u00e9 \ud83d\ude00","e":"","n":42,"b":false,"o":{"a":1},"a":[],"z":null,"keep":"x"}"#;
        let out = owned(masker("s,u,e,n,b,o,a,z").apply(raw).unwrap());
        assert_eq!(
            out,
            r#"{"s":"*****","u":"*****","e":"","n":"****","b":"****","o":"****","a":"****","z":null,"keep":"x"}"#
        );
        // null is left alone in hash mode too.
        let out = owned(hasher("z,s").apply(raw).unwrap());
        assert!(out.contains(r#""z":null"#));
    }

    #[test]
    fn nothing_selected_present_borrows_input() {
        for ob in [masker("target_user.phone, nope"), hasher("client.ip_address.deeper"), masker("")] {
            for sample in [AUDIT_V2, ITEM_USAGE_V2] {
                match ob.apply(sample).unwrap() {
                    Cow::Borrowed(s) => assert!(std::ptr::eq(s, sample)),
                    Cow::Owned(_) => panic!("nothing should have changed"),
                }
            }
        }
        // A selected null hides nothing either.
        let raw = r#"{"a":null,"b":1}"#;
        assert!(matches!(masker("a").apply(raw).unwrap(), Cow::Borrowed(_)));
        assert!(masker("").is_empty());
        assert!(masker(" , ").is_empty());
        assert!(!masker("a").is_empty());
    }

    #[test]
    fn awkward_strings_selected_and_neighbours() {
        // The selected value decodes to: Jack "J" O'Neill\ \n é ü ☃ (newline escaped in JSON).
        let raw = concat!(
            r#"{"before":"q\"uo\\te\n\/\u00e9ü","#,
            r#""n\u0061me":"Jack \"J\" O\u0027Neill\\ \n \u00e9 ü \u2603","#,
            r#""after":"tab\there \"x\" \\\\ \ud83d\ude00","d\u00e9j\u00e0":{"k\"":"\\"}}"#
        );
        let decoded = "Jack \"J\" O'Neill\\ \n é ü ☃";
        let selected = r#""Jack \"J\" O\u0027Neill\\ \n \u00e9 ü \u2603""#;
        assert_eq!(serde_json::from_str::<String>(selected).unwrap(), decoded);

        // The key is matched on its decoded text ("n\u0061me" is "name").
        let out = owned(hasher("name").apply(raw).unwrap());
        let h = expected_hmac(KEY, decoded.as_bytes());
        assert_eq!(out, raw.replace(selected, &format!("\"{h}\"")));

        let out = owned(masker("name").apply(raw).unwrap());
        let stars = "*".repeat(decoded.chars().count());
        assert_eq!(out, raw.replace(selected, &format!("\"{stars}\"")));

        // Non-ASCII keys and keys with escaped quotes are selectable too.
        let out = owned(masker("déjà.k\"").apply(raw).unwrap());
        assert_eq!(out, raw.replace(r#"{"k\"":"\\"}"#, r#"{"k\"":"*"}"#));
    }

    #[test]
    fn duplicate_keys_all_replaced_in_order() {
        let raw = r#"{"a":"x","b":1,"a":"yyy"}"#;
        assert_eq!(owned(masker("a").apply(raw).unwrap()), r#"{"a":"*","b":1,"a":"***"}"#);
    }

    #[test]
    fn layout_outside_replaced_values_is_kept() {
        let raw = "{ \"a\" : \"secret\" ,\n \"b\" : [ 1, 2 ] }\n";
        assert_eq!(owned(masker("a").apply(raw).unwrap()), "{ \"a\" : \"******\" ,\n \"b\" : [ 1, 2 ] }\n");
    }

    #[test]
    fn bad_paths_are_rejected() {
        for fields in ["a..b", ".a", "a.", "client.ip_address, .x", ".", "a. b", "a .b"] {
            let err = Obfuscator::new(fields, Mode::Mask, None).unwrap_err();
            assert!(matches!(err, ObfuscateError::BadPath(_)), "{fields}: {err:?}");
            assert!(err.to_string().contains("obfuscate_fields"));
        }
        assert_eq!(
            Obfuscator::new("ok.path, a..b", Mode::Mask, None).unwrap_err(),
            ObfuscateError::BadPath("a..b".into())
        );
    }

    #[test]
    fn hash_needs_a_key_mask_ignores_it() {
        assert_eq!(Obfuscator::new("a", Mode::Hash, None).unwrap_err(), ObfuscateError::MissingKey);
        assert_eq!(Obfuscator::new("a", Mode::Hash, Some(b"")).unwrap_err(), ObfuscateError::MissingKey);
        let ob = Obfuscator::new("a", Mode::Mask, Some(KEY)).unwrap();
        assert_eq!(ob.apply(r#"{"a":"xy"}"#).unwrap(), r#"{"a":"**"}"#);
    }

    #[test]
    fn non_json_is_an_error() {
        let ob = hasher("a");
        for raw in ["", "not json", r#"{"a":"x""#, r#"{"a":1} trailing"#, r#"{"a":tru}"#] {
            let err = ob.apply(raw).unwrap_err();
            assert!(matches!(err, ObfuscateError::NotJson(_)), "{raw}: {err:?}");
        }
        // Invalid text after the selected value is still caught.
        assert!(ob.apply(r#"{"a":"x","b":[1,}"#).is_err());
    }

    #[test]
    fn key_never_printed() {
        let ob = hasher("target_user.email");
        let debug = format!("{ob:?}");
        assert!(debug.contains("target_user.email") && debug.contains("Hash"), "{debug}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains("hunter2"), "{debug}");

        let errors = [
            Obfuscator::new("a..b", Mode::Hash, Some(KEY)).unwrap_err(),
            Obfuscator::new("a", Mode::Hash, None).unwrap_err(),
            ob.apply("{oops").unwrap_err(),
        ];
        for err in errors {
            let text = format!("{err} {err:?}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }
}
