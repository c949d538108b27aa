//! Reading request members with the model's constraints, with AWS's validation messages.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use super::KinesisError;
use crate::fragment::UnixMillis;

/// The members of a JSON request body.
#[derive(Debug, Clone, Default)]
pub struct Body(pub Map<String, Value>);

fn constraint(member: &str, value: &str, rule: &str) -> KinesisError {
    KinesisError::validation(format!(
        "1 validation error detected: Value '{value}' at '{}' failed to satisfy constraint: {rule}",
        lower_first(member)
    ))
}

fn lower_first(member: &str) -> String {
    let mut chars = member.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
}

fn wrong_type(member: &str) -> KinesisError {
    KinesisError::new(
        "SerializationException",
        format!("Member {member} has the wrong type."),
    )
}

impl Body {
    pub fn parse(bytes: &[u8]) -> Result<Body, KinesisError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Body::default());
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Body(map)),
            _ => Err(KinesisError::new(
                "SerializationException",
                "The request body is not a JSON object.",
            )),
        }
    }

    pub fn get_present(&self, member: &str) -> bool {
        self.get(member).is_some()
    }

    fn get(&self, member: &str) -> Option<&Value> {
        self.0.get(member).filter(|v| !v.is_null())
    }

    /// A string member with length bounds (in characters).
    pub fn string(
        &self,
        member: &str,
        min: usize,
        max: usize,
    ) -> Result<Option<String>, KinesisError> {
        let Some(value) = self.get(member) else {
            return Ok(None);
        };
        let s = value.as_str().ok_or_else(|| wrong_type(member))?;
        let chars = s.chars().count();
        if chars < min {
            return Err(constraint(
                member,
                s,
                &format!("Member must have length greater than or equal to {min}"),
            ));
        }
        if chars > max {
            return Err(constraint(
                member,
                s,
                &format!("Member must have length less than or equal to {max}"),
            ));
        }
        Ok(Some(s.to_owned()))
    }

    pub fn required_string(
        &self,
        member: &str,
        min: usize,
        max: usize,
    ) -> Result<String, KinesisError> {
        self.string(member, min, max)?
            .ok_or_else(|| missing(member))
    }

    pub fn integer(&self, member: &str, min: i64, max: i64) -> Result<Option<i64>, KinesisError> {
        let Some(value) = self.get(member) else {
            return Ok(None);
        };
        let n = value.as_i64().ok_or_else(|| wrong_type(member))?;
        if n < min {
            return Err(constraint(
                member,
                &n.to_string(),
                &format!("Member must have value greater than or equal to {min}"),
            ));
        }
        if n > max {
            return Err(constraint(
                member,
                &n.to_string(),
                &format!("Member must have value less than or equal to {max}"),
            ));
        }
        Ok(Some(n))
    }

    /// Epoch seconds (with a fraction) as a number, or as a numeric string.
    pub fn timestamp(&self, member: &str) -> Result<Option<UnixMillis>, KinesisError> {
        let Some(value) = self.get(member) else {
            return Ok(None);
        };
        let secs = match value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse::<f64>().ok(),
            _ => None,
        }
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| wrong_type(member))?;
        Ok(Some(UnixMillis((secs * 1000.0).round() as u64)))
    }

    pub fn blob(&self, member: &str, max_bytes: usize) -> Result<Vec<u8>, KinesisError> {
        let value = self.get(member).ok_or_else(|| missing(member))?;
        let s = value.as_str().ok_or_else(|| wrong_type(member))?;
        let bytes = STANDARD.decode(s).map_err(|_| {
            KinesisError::new(
                "SerializationException",
                format!("Member {member} is not valid base64."),
            )
        })?;
        if bytes.len() > max_bytes {
            return Err(constraint(
                member,
                "java.nio.HeapByteBuffer",
                &format!("Member must have length less than or equal to {max_bytes}"),
            ));
        }
        Ok(bytes)
    }

    pub fn objects(&self, member: &str) -> Result<Option<Vec<Body>>, KinesisError> {
        let Some(value) = self.get(member) else {
            return Ok(None);
        };
        let items = value.as_array().ok_or_else(|| wrong_type(member))?;
        items
            .iter()
            .map(|v| match v {
                Value::Object(map) => Ok(Body(map.clone())),
                _ => Err(wrong_type(member)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub fn string_map(&self, member: &str) -> Result<Option<Vec<(String, String)>>, KinesisError> {
        let Some(value) = self.get(member) else {
            return Ok(None);
        };
        let map = value.as_object().ok_or_else(|| wrong_type(member))?;
        map.iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    v.as_str().ok_or_else(|| wrong_type(member))?.to_owned(),
                ))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub fn string_list(&self, member: &str) -> Result<Option<Vec<String>>, KinesisError> {
        let Some(value) = self.get(member) else {
            return Ok(None);
        };
        let list = value.as_array().ok_or_else(|| wrong_type(member))?;
        list.iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| wrong_type(member))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

pub fn missing(member: &str) -> KinesisError {
    KinesisError::validation(format!(
        "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
        lower_first(member)
    ))
}

pub fn pattern_error(member: &str, value: &str, pattern: &str) -> KinesisError {
    constraint(
        member,
        value,
        &format!("Member must satisfy regular expression pattern: {pattern}"),
    )
}
