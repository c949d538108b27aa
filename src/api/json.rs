//! Reading request members out of a JSON body with AWS-style validation, and writing the
//! response shapes. Every message names the member at fault, as AWS does.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::fragment::{StreamName, UnixMillis};
use crate::store::{FragmentSummary, StreamInfo, StreamStatus};

use super::error::ApiError;

/// A request body: always a JSON object (an empty body reads as `{}`).
#[derive(Debug, Clone, Default)]
pub struct Members(Map<String, Value>);

/// Bounds and pattern of a string member, from the botocore model.
#[derive(Debug, Clone, Copy)]
pub struct StringRule {
    pub len_min: usize,
    pub len_max: usize,
    pub allowed: fn(&str) -> bool,
}

impl Members {
    /// Parses a body; anything but a JSON object is an invalid argument.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::invalid("The request body must be a JSON object.")),
            Err(e) => Err(ApiError::invalid(format!(
                "The request body is not valid JSON: {e}"
            ))),
        }
    }

    fn get(&self, member: &str) -> Option<&Value> {
        self.0.get(member).filter(|v| !v.is_null())
    }

    pub fn string(&self, member: &str, rule: StringRule) -> Result<Option<String>, ApiError> {
        let Some(value) = self.get(member) else {
            return Ok(None);
        };
        let Value::String(s) = value else {
            return Err(ApiError::invalid(format!("{member} must be a string.")));
        };
        let len = s.chars().count();
        if len < rule.len_min || len > rule.len_max {
            return Err(ApiError::invalid(format!(
                "{member} must be {} to {} characters long; it is {len}.",
                rule.len_min, rule.len_max
            )));
        }
        if !(rule.allowed)(s) {
            return Err(ApiError::invalid(format!(
                "{member} {s:?} does not match the allowed pattern."
            )));
        }
        Ok(Some(s.clone()))
    }

    /// A string member as sent, unvalidated (for checks that leave errors to the handler).
    pub fn raw_string(&self, member: &str) -> Option<String> {
        self.get(member).and_then(Value::as_str).map(str::to_owned)
    }

    pub fn required_string(&self, member: &str, rule: StringRule) -> Result<String, ApiError> {
        self.string(member, rule)?.ok_or_else(|| missing(member))
    }

    /// An integer member within `min..=max`.
    pub fn integer(&self, member: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        let Some(value) = self.get(member) else {
            return Ok(None);
        };
        let n = value
            .as_i64()
            .ok_or_else(|| ApiError::invalid(format!("{member} must be an integer.")))?;
        if n < min || n > max {
            return Err(ApiError::invalid(format!(
                "{member} must be between {min} and {max}; it is {n}."
            )));
        }
        Ok(Some(n))
    }

    /// A timestamp member: epoch seconds as a number, as the rest-json protocol sends it.
    pub fn timestamp(&self, member: &str) -> Result<Option<UnixMillis>, ApiError> {
        let Some(value) = self.get(member) else {
            return Ok(None);
        };
        let secs = value.as_f64().ok_or_else(|| {
            ApiError::invalid(format!("{member} must be a timestamp in epoch seconds."))
        })?;
        UnixMillis::from_secs_f64(secs)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("{member} is not a valid timestamp.")))
    }

    pub fn required_timestamp(&self, member: &str) -> Result<UnixMillis, ApiError> {
        self.timestamp(member)?.ok_or_else(|| missing(member))
    }

    pub fn object(&self, member: &str) -> Result<Option<Members>, ApiError> {
        match self.get(member) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Members(map.clone()))),
            Some(_) => Err(ApiError::invalid(format!("{member} must be a structure."))),
        }
    }

    pub fn required_object(&self, member: &str) -> Result<Members, ApiError> {
        self.object(member)?.ok_or_else(|| missing(member))
    }

    /// A map member of string values with at most `entries_max` entries.
    pub fn string_map(
        &self,
        member: &str,
        entries_max: usize,
    ) -> Result<Option<Vec<(String, String)>>, ApiError> {
        let Some(map) = self.object(member)? else {
            return Ok(None);
        };
        if map.0.is_empty() || map.0.len() > entries_max {
            return Err(ApiError::invalid(format!(
                "{member} must have 1 to {entries_max} entries."
            )));
        }
        map.0
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(v) => Ok((k, v)),
                _ => Err(ApiError::invalid(format!(
                    "{member} values must be strings."
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A tag map (`ResourceTags`): 1 to `entries_max` entries, keys and values as the model's
    /// `TagKey` and `TagValue` patterns say.
    pub fn tags(
        &self,
        member: &str,
        entries_max: usize,
    ) -> Result<Option<BTreeMap<String, String>>, ApiError> {
        let Some(pairs) = self.string_map(member, entries_max)? else {
            return Ok(None);
        };
        for (key, value) in &pairs {
            check_tag_text(member, "key", key, 1, TAG_KEY_CHARS_MAX)?;
            check_tag_text(member, "value", value, 0, TAG_VALUE_CHARS_MAX)?;
        }
        Ok(Some(pairs.into_iter().collect()))
    }

    /// A list of strings with 1 to `entries_max` entries, each following `rule`.
    pub fn string_list(
        &self,
        member: &str,
        rule: StringRule,
        entries_max: usize,
    ) -> Result<Option<Vec<String>>, ApiError> {
        let Some(value) = self.get(member) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(ApiError::invalid(format!("{member} must be a list.")));
        };
        if items.is_empty() || items.len() > entries_max {
            return Err(ApiError::invalid(format!(
                "{member} must have 1 to {entries_max} entries."
            )));
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let mut one = Map::new();
            one.insert(member.to_owned(), item.clone());
            out.push(Members(one).required_string(member, rule)?);
        }
        Ok(Some(out))
    }

    /// An enumeration member: one of `values`.
    pub fn enumeration(
        &self,
        member: &str,
        values: &[&'static str],
    ) -> Result<Option<&'static str>, ApiError> {
        let Some(value) = self.get(member) else {
            return Ok(None);
        };
        let s = value.as_str().unwrap_or_default();
        values
            .iter()
            .copied()
            .find(|v| *v == s)
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(format!("{member} must be one of {}.", values.join(", ")))
            })
    }

    pub fn required_enumeration(
        &self,
        member: &str,
        values: &[&'static str],
    ) -> Result<&'static str, ApiError> {
        self.enumeration(member, values)?
            .ok_or_else(|| missing(member))
    }

    /// The `StreamName` member, validated as the model's pattern says.
    pub fn stream_name(&self, member: &str) -> Result<Option<StreamName>, ApiError> {
        let Some(value) = self.get(member) else {
            return Ok(None);
        };
        let s = value
            .as_str()
            .ok_or_else(|| ApiError::invalid(format!("{member} must be a string.")))?;
        StreamName::new(s)
            .map(Some)
            .map_err(|e| ApiError::invalid(format!("{member}: {e}.")))
    }
}

fn missing(member: &str) -> ApiError {
    ApiError::invalid(format!("The required member {member} is missing."))
}

/// Longest tag key, in characters.
pub const TAG_KEY_CHARS_MAX: usize = 128;
/// Longest tag value, in characters.
pub const TAG_VALUE_CHARS_MAX: usize = 256;

fn check_tag_text(
    member: &str,
    what: &str,
    text: &str,
    len_min: usize,
    len_max: usize,
) -> Result<(), ApiError> {
    let len = text.chars().count();
    if len < len_min || len > len_max {
        return Err(ApiError::invalid(format!(
            "{member}: a tag {what} must be {len_min} to {len_max} characters long; it is {len}."
        )));
    }
    if !is_tag_text(text) {
        return Err(ApiError::invalid(format!(
            "{member}: the tag {what} {text:?} does not match the allowed pattern."
        )));
    }
    Ok(())
}

/// `[\p{L}\p{Z}\p{N}_.:/=+\-@]*`: tag keys and values (letters, separators, numbers and a few
/// symbols).
pub fn is_tag_text(s: &str) -> bool {
    s.chars().all(|c| {
        c.is_alphabetic()
            || c.is_numeric()
            || (c.is_whitespace() && !c.is_control())
            || matches!(c, '_' | '.' | ':' | '/' | '=' | '+' | '-' | '@')
    })
}

/// `[a-zA-Z0-9_.-]+`: stream and device names.
pub fn is_name(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `[a-zA-Z0-9]+`: stream versions.
pub fn is_alphanumeric(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// `[\w\-\.\+]+/[\w\-\.\+]+(,[\w\-\.\+]+/[\w\-\.\+]+)*`: media types such as `video/h264`.
pub fn is_media_type(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'))
    };
    s.split(',')
        .all(|t| t.split_once('/').is_some_and(|(a, b)| part(a) && part(b)))
}

/// `.+`
pub fn is_any(s: &str) -> bool {
    !s.is_empty()
}

/// `[a-zA-Z0-9+/=]*`: opaque paging tokens.
pub fn is_token(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
}

fn status_name(status: StreamStatus) -> &'static str {
    match status {
        StreamStatus::Creating => "CREATING",
        StreamStatus::Active => "ACTIVE",
        StreamStatus::Updating => "UPDATING",
        StreamStatus::Deleting => "DELETING",
    }
}

/// The `StreamInfo` shape; absent optional members are left out, as AWS does.
pub fn stream_info(info: &StreamInfo) -> Value {
    let mut out = Map::new();
    out.insert("StreamName".into(), info.name.as_str().into());
    out.insert("StreamARN".into(), info.arn.clone().into());
    for (key, value) in [
        ("DeviceName", &info.device_name),
        ("MediaType", &info.media_type),
        ("KmsKeyId", &info.kms_key_id),
    ] {
        if let Some(v) = value {
            out.insert(key.into(), v.clone().into());
        }
    }
    out.insert("Version".into(), info.version.clone().into());
    out.insert("Status".into(), status_name(info.status).into());
    out.insert(
        "CreationTime".into(),
        info.creation_time.as_secs_f64().into(),
    );
    out.insert(
        "DataRetentionInHours".into(),
        info.data_retention_hours.into(),
    );
    Value::Object(out)
}

/// The archived-media `Fragment` shape.
pub fn fragment(summary: &FragmentSummary) -> Value {
    serde_json::json!({
        "FragmentNumber": summary.number.to_string(),
        "FragmentSizeInBytes": summary.size_bytes,
        "ProducerTimestamp": summary.producer_timestamp.as_secs_f64(),
        "ServerTimestamp": summary.server_timestamp.as_secs_f64(),
        "FragmentLengthInMilliseconds": summary.duration_ms,
    })
}

/// Hex encoding for opaque paging tokens: hex digits fit every AWS token pattern.
pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION: StringRule = StringRule {
        len_min: 1,
        len_max: 64,
        allowed: is_alphanumeric,
    };

    fn members(json: &str) -> Members {
        Members::parse(json.as_bytes()).expect("valid body")
    }

    #[test]
    fn empty_body_reads_as_an_empty_object() {
        assert!(members("").0.is_empty());
        assert!(Members::parse(b"[1]").is_err());
        assert!(Members::parse(b"{").is_err());
    }

    #[test]
    fn string_rules_name_the_member() {
        let m = members(r#"{"CurrentVersion": "a-b", "Long": "x", "Num": 3}"#);
        let err = m.string("CurrentVersion", VERSION).expect_err("pattern");
        assert!(err.to_string().contains("CurrentVersion"));
        assert!(m.string("Num", VERSION).is_err());
        assert_eq!(m.string("Absent", VERSION), Ok(None));
        let err = m.required_string("Absent", VERSION).expect_err("missing");
        assert!(err.to_string().contains("Absent"));
        let long = members(&format!(r#"{{"V": "{}"}}"#, "a".repeat(65)));
        assert!(long.string("V", VERSION).is_err());
    }

    #[test]
    fn integers_and_timestamps_are_checked() {
        let m = members(r#"{"N": 0, "F": 1.5, "T": 1511852109.126, "Neg": -3}"#);
        assert!(m.integer("N", 1, 10).is_err());
        assert!(m.integer("F", 0, 10).is_err());
        assert_eq!(m.integer("N", 0, 10), Ok(Some(0)));
        assert_eq!(m.timestamp("T"), Ok(Some(UnixMillis(1_511_852_109_126))));
        assert!(m.timestamp("Neg").is_err());
    }

    #[test]
    fn enumerations_and_names() {
        let m = members(r#"{"Op": "BEGINS_WITH", "Bad": "X", "S": "a/b"}"#);
        assert_eq!(
            m.enumeration("Op", &["BEGINS_WITH"]),
            Ok(Some("BEGINS_WITH"))
        );
        assert!(m.enumeration("Bad", &["BEGINS_WITH"]).is_err());
        assert!(m.stream_name("S").is_err());
    }

    #[test]
    fn patterns_follow_the_model() {
        assert!(is_media_type("video/h264"));
        assert!(is_media_type("video/h264,audio/aac"));
        assert!(!is_media_type("video"));
        assert!(!is_media_type("video/"));
        assert!(is_token("ab+/="));
        assert!(!is_token("a b"));
    }

    #[test]
    fn tags_and_lists_follow_the_model() {
        let m = members(
            r#"{"T": {"env": "prod", "k v": "", "ü:1": "a/b@c"}, "Bad": {"a": "x#"}, "L": ["a", "b"], "E": []}"#,
        );
        let tags = m.tags("T", 50).expect("valid").expect("present");
        assert_eq!(tags.get("env").map(String::as_str), Some("prod"));
        assert!(m.tags("Bad", 50).is_err());
        assert!(m.tags("T", 2).is_err());
        let long = members(&format!(r#"{{"T": {{"{}": "v"}}}}"#, "k".repeat(129)));
        assert!(long.tags("T", 50).is_err());
        assert!(members(r#"{"T": {"": "v"}}"#).tags("T", 50).is_err());
        let list = m.string_list("L", VERSION, 50).expect("valid");
        assert_eq!(list, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert!(m.string_list("E", VERSION, 50).is_err());
        assert!(m.string_list("L", VERSION, 1).is_err());
        assert!(is_tag_text("a b\u{a0}c"));
        assert!(!is_tag_text("a\tb"));
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(
            hex_decode(&hex_encode(b"cam\x00\xff")),
            Some(b"cam\x00\xff".to_vec())
        );
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }
}
