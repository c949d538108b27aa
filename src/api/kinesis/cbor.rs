//! CBOR 1.1 (`application/x-amz-cbor-1.1`), the Java SDKs' and the KCL's default format.
//!
//! The format work stays at the edge: a CBOR request becomes the same [`Body`] a JSON request
//! gives (byte strings become base64 text, timestamps epoch seconds) and a JSON reply is encoded
//! back member for member (`Data` as a byte string, timestamps as CBOR tag 1 over an integer of
//! epoch milliseconds, as the AWS Java SDK writes and reads them, not the RFC 8949 seconds).
//!
//! Behaviour: decoding is bounded in nesting ([`DEPTH_MAX`]) and in items ([`ITEMS_MAX`]); the
//! body itself is capped by the router before it gets here.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ciborium::Value as Cbor;
use serde_json::{Map, Number, Value};

use super::KinesisError;
use super::parse::Body;

/// The content type the Java SDKs send and expect back.
pub const CONTENT_TYPE_CBOR: &str = "application/x-amz-cbor-1.1";
/// Deepest nesting of arrays and maps accepted (Kinesis shapes nest at most four deep).
pub const DEPTH_MAX: usize = 16;
/// Most data items (map entries, array elements, scalars) in one request: 500 PutRecords
/// entries with a handful of members each fit many times over.
pub const ITEMS_MAX: usize = 100_000;
/// The CBOR tag for an epoch-based date/time.
const TAG_EPOCH: u64 = 1;
/// Members holding blobs: byte strings in CBOR, base64 in JSON.
const BLOB_MEMBERS: &[&str] = &["Data"];
/// Members holding timestamps: epoch milliseconds in CBOR, epoch seconds in JSON.
const TIMESTAMP_MEMBERS: &[&str] = &[
    "Timestamp",
    "ApproximateArrivalTimestamp",
    "StreamCreationTimestamp",
    "ConsumerCreationTimestamp",
];

fn malformed(why: &str) -> KinesisError {
    KinesisError::new(
        "SerializationException",
        format!("The request body is not a valid CBOR object: {why}."),
    )
}

/// Decodes a CBOR request into the members the operations read.
pub fn decode(bytes: &[u8]) -> Result<Body, KinesisError> {
    if bytes.is_empty() {
        return Ok(Body::default());
    }
    let value: Cbor = ciborium::de::from_reader_with_recursion_limit(bytes, DEPTH_MAX)
        .map_err(|e| malformed(&e.to_string()))?;
    let mut items = 0usize;
    match to_json(value, false, &mut items)? {
        Value::Object(map) => Ok(Body(map)),
        _ => Err(malformed("the top level is not a map")),
    }
}

fn to_json(value: Cbor, timestamp: bool, items: &mut usize) -> Result<Value, KinesisError> {
    *items += 1;
    if *items > ITEMS_MAX {
        return Err(malformed("too many items"));
    }
    Ok(match value {
        Cbor::Null => Value::Null,
        Cbor::Bool(b) => Value::Bool(b),
        Cbor::Text(s) => Value::String(s),
        Cbor::Bytes(b) => Value::String(STANDARD.encode(b)),
        Cbor::Integer(i) if timestamp => millis_to_seconds(i128::from(i))?,
        Cbor::Integer(i) => integer(i128::from(i))?,
        Cbor::Float(f) => Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| malformed("a number is not finite"))?,
        // Tag 1 over an integer: the Java SDK's epoch milliseconds.
        Cbor::Tag(TAG_EPOCH, inner) if matches!(*inner, Cbor::Integer(_)) => {
            to_json(*inner, true, items)?
        }
        Cbor::Tag(_, inner) => to_json(*inner, false, items)?,
        Cbor::Array(list) => Value::Array(
            list.into_iter()
                .map(|v| to_json(v, false, items))
                .collect::<Result<_, _>>()?,
        ),
        Cbor::Map(entries) => Value::Object(map_to_json(entries, items)?),
        _ => return Err(malformed("unsupported data item")),
    })
}

fn map_to_json(
    entries: Vec<(Cbor, Cbor)>,
    items: &mut usize,
) -> Result<Map<String, Value>, KinesisError> {
    let mut map = Map::new();
    for (key, value) in entries {
        let Cbor::Text(key) = key else {
            return Err(malformed("a map key is not text"));
        };
        let timestamp = TIMESTAMP_MEMBERS.contains(&key.as_str());
        map.insert(key, to_json(value, timestamp, items)?);
    }
    Ok(map)
}

fn integer(i: i128) -> Result<Value, KinesisError> {
    if let Ok(n) = i64::try_from(i) {
        return Ok(Value::from(n));
    }
    u64::try_from(i)
        .map(Value::from)
        .map_err(|_| malformed("an integer is out of range"))
}

fn millis_to_seconds(ms: i128) -> Result<Value, KinesisError> {
    let ms = i64::try_from(ms).map_err(|_| malformed("a timestamp is out of range"))?;
    Number::from_f64(ms as f64 / 1000.0)
        .map(Value::Number)
        .ok_or_else(|| malformed("a timestamp is out of range"))
}

/// Encodes a JSON reply (or error body) as CBOR, member for member.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec fails only on allocation failure, which aborts anyway.
    if ciborium::ser::into_writer(&to_cbor(value, None), &mut out).is_err() {
        out.clear();
    }
    out
}

fn to_cbor(value: &Value, member: Option<&str>) -> Cbor {
    let blob = member.is_some_and(|m| BLOB_MEMBERS.contains(&m));
    let timestamp = member.is_some_and(|m| TIMESTAMP_MEMBERS.contains(&m));
    match value {
        Value::Null => Cbor::Null,
        Value::Bool(b) => Cbor::Bool(*b),
        Value::String(s) if blob => match STANDARD.decode(s) {
            Ok(bytes) => Cbor::Bytes(bytes),
            Err(_) => Cbor::Text(s.clone()),
        },
        Value::String(s) => Cbor::Text(s.clone()),
        Value::Number(n) if timestamp => {
            let ms = (n.as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
            Cbor::Tag(TAG_EPOCH, Box::new(Cbor::Integer(ms.into())))
        }
        Value::Number(n) => number(n),
        Value::Array(list) => Cbor::Array(list.iter().map(|v| to_cbor(v, member)).collect()),
        Value::Object(map) => Cbor::Map(
            map.iter()
                .map(|(k, v)| (Cbor::Text(k.clone()), to_cbor(v, Some(k))))
                .collect(),
        ),
    }
}

fn number(n: &Number) -> Cbor {
    if let Some(i) = n.as_i64() {
        Cbor::Integer(i.into())
    } else if let Some(u) = n.as_u64() {
        Cbor::Integer(u.into())
    } else {
        Cbor::Float(n.as_f64().unwrap_or(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cbor_bytes(value: &Cbor) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(value, &mut out).expect("encode");
        out
    }

    fn member<'a>(map: &'a Cbor, name: &str) -> &'a Cbor {
        let Cbor::Map(entries) = map else {
            panic!("a map")
        };
        entries
            .iter()
            .find(|(k, _)| k == &text(name))
            .map(|(_, v)| v)
            .expect("member present")
    }

    fn text(s: &str) -> Cbor {
        Cbor::Text(s.to_owned())
    }

    #[test]
    fn request_blobs_and_tagged_millis_become_json_members() {
        let request = Cbor::Map(vec![
            (text("StreamName"), text("s")),
            (text("Data"), Cbor::Bytes(vec![0, 1, 255])),
            (
                text("Timestamp"),
                Cbor::Tag(1, Box::new(Cbor::Integer(1_700_000_000_123i64.into()))),
            ),
            (text("Limit"), Cbor::Integer(25.into())),
        ]);
        let body = decode(&cbor_bytes(&request)).expect("decodes");
        assert_eq!(body.blob("Data", 10).expect("blob"), vec![0, 1, 255]);
        let ts = body.timestamp("Timestamp").expect("ok").expect("present");
        assert_eq!(ts.0, 1_700_000_000_123);
        assert_eq!(body.integer("Limit", 1, 100).expect("ok"), Some(25));
    }

    #[test]
    fn reply_round_trips_with_byte_strings_and_tag_one_millis() {
        let reply = json!({
            "Records": [{
                "Data": STANDARD.encode(b"hello"),
                "ApproximateArrivalTimestamp": 1_700_000_000.5,
                "SequenceNumber": "4955",
                "PartitionKey": "k"
            }],
            "MillisBehindLatest": 0
        });
        let bytes = encode(&reply);
        let value: Cbor = ciborium::de::from_reader(&bytes[..]).expect("valid CBOR");
        let Cbor::Array(records) = member(&value, "Records") else {
            panic!("records")
        };
        assert_eq!(member(&records[0], "Data"), &Cbor::Bytes(b"hello".to_vec()));
        assert_eq!(
            member(&records[0], "ApproximateArrivalTimestamp"),
            &Cbor::Tag(1, Box::new(Cbor::Integer(1_700_000_000_500i64.into())))
        );
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back.0["Records"][0]["SequenceNumber"], json!("4955"));
        assert_eq!(back.0["MillisBehindLatest"], json!(0));
    }

    #[test]
    fn deep_nesting_and_garbage_are_serialization_errors() {
        let mut deep = Cbor::Null;
        for _ in 0..(DEPTH_MAX + 4) {
            deep = Cbor::Array(vec![deep]);
        }
        let nested = Cbor::Map(vec![(text("A"), deep)]);
        let error = decode(&cbor_bytes(&nested)).expect_err("too deep");
        assert_eq!(error.code, "SerializationException");
        let error = decode(&[0xff, 0x00, 0x13]).expect_err("garbage");
        assert_eq!(error.code, "SerializationException");
        let error = decode(&cbor_bytes(&Cbor::Array(vec![]))).expect_err("not a map");
        assert_eq!(error.code, "SerializationException");
    }

    #[test]
    fn too_many_items_are_refused() {
        let list = Cbor::Array(vec![Cbor::Integer(1.into()); ITEMS_MAX + 1]);
        let request = Cbor::Map(vec![(text("Records"), list)]);
        let error = decode(&cbor_bytes(&request)).expect_err("too many");
        assert_eq!(error.code, "SerializationException");
    }
}
