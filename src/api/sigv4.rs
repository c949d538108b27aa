//! AWS Signature Version 4 verification as a pure core: a request's method, path, query,
//! headers and payload go in with the current time; the authenticated [`Principal`] or an AWS
//! error comes out. No I/O and no clock: the axum shell (`auth`) reads the body and the time.
//!
//! Both forms are verified: the `Authorization: AWS4-HMAC-SHA256 ...` header with `X-Amz-Date`,
//! and the query-string form (`X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`,
//! `X-Amz-Expires`, `X-Amz-SignedHeaders`, `X-Amz-Signature`). The canonical request is rebuilt
//! as AWS does for every service but S3: the path normalised and URI-encoded again (so `%`
//! becomes `%25`), query pairs decoded, re-encoded and sorted, signed headers lowercased with
//! trimmed, whitespace-collapsed values. Signatures are compared in constant time.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::AccessKey;
use crate::fragment::StreamName;

/// The only signing algorithm AWS's SigV4 clients use.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Payload hash a client sends when it does not sign the body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// Header naming the payload hash the client signed.
pub const CONTENT_SHA256_HEADER: &str = "x-amz-content-sha256";
/// Largest difference between the request's time and ours, in seconds (AWS's 5 minutes).
pub const CLOCK_SKEW_S_MAX: i64 = 300;
/// Longest validity of a presigned request, in seconds (AWS's 7 days).
pub const PRESIGNED_EXPIRES_S_MAX: i64 = 604_800;
/// Most headers one signature may cover.
pub const SIGNED_HEADERS_MAX: usize = 64;
/// Most query parameters read from one request.
pub const QUERY_PAIRS_MAX: usize = 256;
/// Longest `Authorization` header read, in bytes.
pub const AUTHORIZATION_BYTES_MAX: usize = 4096;

type HmacSha256 = Hmac<Sha256>;

/// Why a request is not authenticated, in AWS's vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error("{0}")]
    MissingAuthenticationToken(String),
    #[error("{0}")]
    IncompleteSignature(String),
    #[error("{0}")]
    InvalidSignature(String),
    #[error("{0}")]
    UnrecognizedClient(String),
}

impl SigV4Error {
    /// The AWS error code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingAuthenticationToken(_) => "MissingAuthenticationTokenException",
            Self::IncompleteSignature(_) => "IncompleteSignatureException",
            Self::InvalidSignature(_) => "InvalidSignatureException",
            Self::UnrecognizedClient(_) => "UnrecognizedClientException",
        }
    }
}

fn incomplete(message: impl Into<String>) -> SigV4Error {
    SigV4Error::IncompleteSignature(message.into())
}

fn invalid(message: impl Into<String>) -> SigV4Error {
    SigV4Error::InvalidSignature(message.into())
}

/// Who signed a request, and which streams that key may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub access_key_id: String,
    /// `None`: every stream.
    streams: Option<Arc<BTreeSet<StreamName>>>,
}

impl Principal {
    /// The principal of open mode, where nothing is verified: it may use every stream.
    pub fn anyone() -> Self {
        Self {
            access_key_id: String::new(),
            streams: None,
        }
    }

    pub fn may_use(&self, stream: &StreamName) -> bool {
        self.streams.as_ref().is_none_or(|s| s.contains(stream))
    }

    pub fn is_restricted(&self) -> bool {
        self.streams.is_some()
    }
}

#[derive(Debug)]
struct KeyEntry {
    secret: String,
    principal: Principal,
}

/// What requests are verified against: the configured keys, the server's region and the signing
/// names of the services it offers.
#[derive(Debug)]
pub struct Verifier {
    keys: HashMap<String, KeyEntry>,
    region: String,
    services: &'static [&'static str],
}

impl Verifier {
    /// Keys come validated from the config (stream names already checked there); a stream name
    /// that still fails is dropped, which only narrows what the key may use.
    pub fn new(keys: &[AccessKey], region: &str, services: &'static [&'static str]) -> Self {
        let keys = keys
            .iter()
            .map(|k| {
                let streams = (!k.streams.is_empty()).then(|| {
                    Arc::new(
                        k.streams
                            .iter()
                            .filter_map(|s| StreamName::new(s.as_str()).ok())
                            .collect(),
                    )
                });
                let principal = Principal {
                    access_key_id: k.access_key_id.clone(),
                    streams,
                };
                let entry = KeyEntry {
                    secret: k.secret_access_key.clone(),
                    principal,
                };
                (k.access_key_id.clone(), entry)
            })
            .collect();
        Self {
            keys,
            region: region.to_owned(),
            services,
        }
    }

    /// The principal of a configured key.
    pub fn principal(&self, access_key_id: &str) -> Option<Principal> {
        self.keys.get(access_key_id).map(|e| e.principal.clone())
    }

    /// Verifies a request at `now_s` (Unix seconds). `body` is `None` when the shell did not
    /// buffer it, which only a request that signs `UNSIGNED-PAYLOAD` may do.
    pub fn verify(
        &self,
        request: &RequestParts<'_>,
        body: Option<&[u8]>,
        now_s: i64,
    ) -> Result<Principal, SigV4Error> {
        let signed = SignedParts::read(request)?;
        let scope = self.check_scope(&signed)?;
        let entry = self.keys.get(scope.access_key_id).ok_or_else(|| {
            SigV4Error::UnrecognizedClient(
                "The security token included in the request is invalid.".into(),
            )
        })?;
        check_time(&signed, now_s)?;
        let payload_hash = payload_hash(request.headers, body)?;
        let canonical = canonical_request(request, &signed, &payload_hash)?;
        let string_to_sign = format!(
            "{ALGORITHM}\n{}\n{}\n{}",
            signed.amz_date,
            scope.scope(),
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let key = signing_key(&entry.secret, scope.date, scope.region, scope.service);
        let provided = hex_decode(signed.signature).ok_or_else(|| invalid(SIGNATURE_MISMATCH))?;
        let mut mac = hmac_sha256_mac(&key);
        mac.update(string_to_sign.as_bytes());
        mac.verify_slice(&provided)
            .map_err(|_| invalid(SIGNATURE_MISMATCH))?;
        Ok(entry.principal.clone())
    }

    fn check_scope<'s>(&self, signed: &'s SignedParts<'_>) -> Result<Scope<'s>, SigV4Error> {
        let scope = Scope::parse(&signed.credential)?;
        if scope.date != signed.amz_date.get(..8).unwrap_or_default() {
            return Err(invalid(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
                scope.date,
                signed.amz_date.get(..8).unwrap_or_default()
            )));
        }
        if scope.region != self.region {
            return Err(invalid(format!(
                "Credential should be scoped to a valid region, not '{}'; this server answers for '{}'.",
                scope.region, self.region
            )));
        }
        if !self.services.contains(&scope.service) {
            return Err(invalid(format!(
                "Credential should be scoped to correct service: one of {}, not '{}'.",
                self.services.join(", "),
                scope.service
            )));
        }
        Ok(scope)
    }
}

const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/// The parts of an HTTP request that a signature covers, as received.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// The path exactly as sent (still percent-encoded).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The URI's authority, used for `host` when no Host header exists (HTTP/2).
    pub authority: Option<&'a str>,
}

/// The signature's claims, from the header or the query string.
#[derive(Debug)]
struct SignedParts<'a> {
    credential: Cow<'a, str>,
    signed_headers: Vec<String>,
    signature: &'a str,
    amz_date: String,
    /// Validity of a presigned request, in seconds.
    expires_s: Option<i64>,
    /// Whether the signature came in the query string (its own parameter is not signed).
    in_query: bool,
}

impl<'a> SignedParts<'a> {
    fn read(request: &RequestParts<'a>) -> Result<Self, SigV4Error> {
        if let Some(value) = request.headers.get("authorization") {
            let value = value
                .to_str()
                .ok()
                .filter(|v| v.len() <= AUTHORIZATION_BYTES_MAX)
                .ok_or_else(|| incomplete("The Authorization header is not readable."))?;
            return Self::from_header(value, request.headers);
        }
        let query = request.query.unwrap_or_default();
        if query_value(query, "X-Amz-Algorithm").is_some() {
            return Self::from_query(query);
        }
        Err(SigV4Error::MissingAuthenticationToken(
            "Missing Authentication Token".into(),
        ))
    }

    fn from_header(value: &'a str, headers: &HeaderMap) -> Result<Self, SigV4Error> {
        let rest = value
            .strip_prefix(ALGORITHM)
            .filter(|r| r.starts_with(' '))
            .ok_or_else(|| {
                incomplete(format!(
                    "Unsupported Authorization Type; only {ALGORITHM} is accepted."
                ))
            })?;
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in rest.split(',').map(str::trim).take(8) {
            match part.split_once('=') {
                Some(("Credential", v)) => credential = Some(v),
                Some(("SignedHeaders", v)) => signed_headers = Some(v),
                Some(("Signature", v)) => signature = Some(v),
                _ => {}
            }
        }
        let need = |v: Option<&'a str>, name: &str| {
            v.ok_or_else(|| {
                incomplete(format!(
                    "Authorization header requires '{name}' parameter. Authorization={value}"
                ))
            })
        };
        let amz_date = headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                incomplete("Authorization header requires existence of a 'X-Amz-Date' header.")
            })?;
        Ok(Self {
            credential: Cow::Borrowed(need(credential, "Credential")?),
            signed_headers: split_signed_headers(need(signed_headers, "SignedHeaders")?)?,
            signature: need(signature, "Signature")?,
            amz_date: amz_date.to_owned(),
            expires_s: None,
            in_query: false,
        })
    }

    fn from_query(query: &'a str) -> Result<Self, SigV4Error> {
        let need = |name: &str| {
            query_value(query, name)
                .ok_or_else(|| incomplete(format!("The query string requires '{name}'.")))
        };
        if need("X-Amz-Algorithm")? != ALGORITHM {
            return Err(incomplete(format!(
                "Unsupported X-Amz-Algorithm; only {ALGORITHM} is accepted."
            )));
        }
        let expires_s = match query_value(query, "X-Amz-Expires") {
            None => None,
            Some(v) => Some(
                v.parse::<i64>()
                    .ok()
                    .filter(|s| (1..=PRESIGNED_EXPIRES_S_MAX).contains(s))
                    .ok_or_else(|| {
                        incomplete(format!(
                            "X-Amz-Expires must be 1 to {PRESIGNED_EXPIRES_S_MAX} seconds."
                        ))
                    })?,
            ),
        };
        // The signature is hex, so it is used as it stands; the rest is decoded.
        let raw_signature = query_raw_value(query, "X-Amz-Signature")
            .ok_or_else(|| incomplete("The query string requires 'X-Amz-Signature'."))?;
        Ok(Self {
            credential: Cow::Owned(need("X-Amz-Credential")?),
            signed_headers: split_signed_headers(&need("X-Amz-SignedHeaders")?)?,
            signature: raw_signature,
            amz_date: need("X-Amz-Date")?,
            expires_s,
            in_query: true,
        })
    }
}

/// The credential scope `AKID/yyyymmdd/region/service/aws4_request`.
#[derive(Debug)]
struct Scope<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
}

impl<'a> Scope<'a> {
    fn parse(credential: &'a str) -> Result<Self, SigV4Error> {
        let bad = || {
            incomplete(format!(
                "Credential should be 'AKID/yyyymmdd/region/service/aws4_request', not '{}'.",
                credential.chars().take(256).collect::<String>()
            ))
        };
        let parts: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, terminal] = parts.as_slice() else {
            return Err(bad());
        };
        let date_ok = date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit());
        if *terminal != "aws4_request" || access_key_id.is_empty() || !date_ok {
            return Err(bad());
        }
        Ok(Self {
            access_key_id,
            date,
            region,
            service,
        })
    }

    fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

fn split_signed_headers(list: &str) -> Result<Vec<String>, SigV4Error> {
    let mut names: Vec<String> = list
        .split(';')
        .filter(|n| !n.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    if names.is_empty() || names.len() > SIGNED_HEADERS_MAX {
        return Err(incomplete(format!(
            "SignedHeaders must name 1 to {SIGNED_HEADERS_MAX} headers."
        )));
    }
    if !names.iter().any(|n| n == "host") {
        return Err(incomplete(
            "'Host' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Rejects requests signed more than the allowed skew away from `now_s`, and presigned
/// requests past their expiry.
fn check_time(signed: &SignedParts<'_>, now_s: i64) -> Result<(), SigV4Error> {
    let signed_s = parse_amz_date(&signed.amz_date).ok_or_else(|| {
        incomplete(format!(
            "X-Amz-Date must be in the ISO-8601 basic format yyyymmddThhmmssZ, not '{}'.",
            signed.amz_date.chars().take(64).collect::<String>()
        ))
    })?;
    let too_early = signed_s - now_s > CLOCK_SKEW_S_MAX;
    let too_late = match signed.expires_s {
        Some(expires_s) => now_s - signed_s > expires_s,
        None => now_s - signed_s > CLOCK_SKEW_S_MAX,
    };
    if too_early || too_late {
        return Err(invalid(format!(
            "Signature expired: {} is now earlier than the allowed window around the server's time ({CLOCK_SKEW_S_MAX} s of skew{}).",
            signed.amz_date,
            if signed.expires_s.is_some() {
                ", or the presigned request has expired"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// `yyyymmddThhmmssZ` to Unix seconds.
fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The payload hash the signature covers: the signed `x-amz-content-sha256` (checked against
/// the body when it is a hash) or the body's own hash.
fn payload_hash(headers: &HeaderMap, body: Option<&[u8]>) -> Result<String, SigV4Error> {
    let declared = headers
        .get(CONTENT_SHA256_HEADER)
        .map(|v| v.to_str().unwrap_or_default());
    match (declared, body) {
        (Some(UNSIGNED_PAYLOAD), _) => Ok(UNSIGNED_PAYLOAD.to_owned()),
        (Some(declared), Some(body)) if is_sha256_hex(declared) => {
            let actual = hex(&Sha256::digest(body));
            if !actual.eq_ignore_ascii_case(declared) {
                return Err(invalid(
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                ));
            }
            Ok(declared.to_owned())
        }
        (Some(_), _) => Err(incomplete(format!(
            "x-amz-content-sha256 must be a hex SHA-256 or {UNSIGNED_PAYLOAD}; streaming signatures are not supported."
        ))),
        (None, Some(body)) => Ok(hex(&Sha256::digest(body))),
        (None, None) => Err(incomplete(
            "The request body was not read, so it cannot be verified.",
        )),
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn canonical_request(
    request: &RequestParts<'_>,
    signed: &SignedParts<'_>,
    payload_hash: &str,
) -> Result<String, SigV4Error> {
    let headers = canonical_headers(request, &signed.signed_headers)?;
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        canonical_uri(request.path),
        canonical_query(request.query.unwrap_or_default(), signed.in_query)?,
        headers,
        signed.signed_headers.join(";"),
        payload_hash
    ))
}

/// The path normalised (empty and `.` segments dropped, `..` applied, a trailing slash kept)
/// and URI-encoded once more, as AWS does for every service but S3.
fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut normalized = format!("/{}", segments.join("/"));
    if path.ends_with('/') && normalized != "/" {
        normalized.push('/');
    }
    uri_encode(normalized.as_bytes(), false)
}

/// Query pairs decoded, re-encoded strictly and sorted; the query form's own signature is left
/// out.
fn canonical_query(query: &str, in_query: bool) -> Result<String, SigV4Error> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if pairs.len() == QUERY_PAIRS_MAX {
            return Err(incomplete(format!(
                "The query string has more than {QUERY_PAIRS_MAX} parameters."
            )));
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = uri_encode(&percent_decode(key), true);
        if in_query && key == "X-Amz-Signature" {
            continue;
        }
        pairs.push((key, uri_encode(&percent_decode(value), true)));
    }
    pairs.sort();
    Ok(pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&"))
}

/// `name:value\n` per signed header; several values of one header are joined with commas.
fn canonical_headers(request: &RequestParts<'_>, names: &[String]) -> Result<String, SigV4Error> {
    let mut out = String::new();
    for name in names {
        let mut values: Vec<String> = request
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| collapse_whitespace(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        if values.is_empty() && name == "host" {
            values.extend(request.authority.map(str::to_owned));
        }
        if values.is_empty() {
            return Err(invalid(format!(
                "The signed header '{name}' is not in the request."
            )));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    Ok(out)
}

fn collapse_whitespace(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Percent-encodes every byte but the unreserved ones (and `/` unless `encode_slash`).
fn uri_encode(bytes: &[u8], encode_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (b == b'/' && !encode_slash);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; a malformed escape is kept as it stands.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// The raw (still encoded) value of the first query parameter `name`.
fn query_raw_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .take(QUERY_PAIRS_MAX)
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The decoded value of the first query parameter `name`.
fn query_value(query: &str, name: &str) -> Option<String> {
    query_raw_value(query, name).map(|v| String::from_utf8_lossy(&percent_decode(v)).into_owned())
}

fn hmac_sha256_mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of every length, so this never fails.
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = hmac_sha256_mac(key);
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The HMAC chain "AWS4"+secret → date → region → service → "aws4_request".
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, b"aws4_request")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    //! Expected signatures were produced once by botocore's `SigV4Auth` and `SigV4QueryAuth`
    //! (the reference clients) for the requests rebuilt here.
    use super::*;

    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20261126T213226Z";
    /// `DATE` in Unix seconds.
    const SIGNED_AT_S: i64 = 1_795_728_746;
    const SERVICES: &[&str] = &["kinesisvideo", "kinesis"];

    fn verifier(streams: &[&str]) -> Verifier {
        let key = AccessKey {
            access_key_id: AKID.into(),
            secret_access_key: SECRET.into(),
            streams: streams.iter().map(|s| s.to_string()).collect(),
        };
        Verifier::new(&[key], "us-east-1", SERVICES)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        map
    }

    fn auth(service: &str, signed: &str, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={AKID}/20261126/us-east-1/{service}/aws4_request, SignedHeaders={signed}, Signature={signature}"
        )
    }

    const CREATE_SIGNATURE: &str =
        "420d0bae298cf05a8788944c2415d03877ed7fb88b928835865fa3d8ae1cddc1";
    const CREATE_BODY: &[u8] = br#"{"StreamName": "cam"}"#;

    fn create_stream_headers(signature: &str) -> HeaderMap {
        let auth = auth("kinesisvideo", "content-type;host;x-amz-date", signature);
        headers(&[
            ("host", "127.0.0.1:7070"),
            ("content-type", "application/json"),
            ("x-amz-date", DATE),
            ("authorization", &auth),
        ])
    }

    fn post<'a>(path: &'a str, query: Option<&'a str>, headers: &'a HeaderMap) -> RequestParts<'a> {
        RequestParts {
            method: "POST",
            path,
            query,
            headers,
            authority: None,
        }
    }

    #[test]
    fn header_form_matches_botocore_for_kinesis_video() {
        let h = create_stream_headers(CREATE_SIGNATURE);
        let principal = verifier(&[])
            .verify(
                &post("/createStream", None, &h),
                Some(CREATE_BODY),
                SIGNED_AT_S,
            )
            .expect("verified");
        assert_eq!(principal.access_key_id, AKID);
        assert!(!principal.is_restricted());
    }

    #[test]
    fn header_form_matches_botocore_for_kinesis_targets() {
        let auth = auth(
            "kinesis",
            "content-type;host;x-amz-date;x-amz-target",
            "d8294ae62098bb7ceb4ff3174952b62fe49867755186cd5ce277c6aef498cbf4",
        );
        let h = headers(&[
            ("host", "localhost:7070"),
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "Kinesis_20131202.CreateStream"),
            ("x-amz-date", DATE),
            ("authorization", &auth),
        ]);
        let body = br#"{"StreamName":"s","ShardCount":1}"#;
        assert!(
            verifier(&[])
                .verify(&post("/", None, &h), Some(body), SIGNED_AT_S)
                .is_ok()
        );
    }

    #[test]
    fn paths_queries_and_header_whitespace_are_canonicalised_like_botocore() {
        let auth = auth(
            "kinesisvideo",
            "host;x-amz-date;x-custom",
            "0388ffebc988a51770867aa11d28607f164e6f488a6bb9f306272acfaf4de3a3",
        );
        let h = headers(&[
            ("host", "127.0.0.1:7070"),
            ("x-custom", "  two   spaces  here "),
            ("x-amz-date", DATE),
            ("authorization", &auth),
        ]);
        let request = post("/a%20b/c~d", Some("z=1&a=b%2Fc&a=a&e"), &h);
        assert!(
            verifier(&[])
                .verify(&request, Some(b""), SIGNED_AT_S)
                .is_ok()
        );
    }

    #[test]
    fn query_form_matches_botocore_and_expires() {
        let query = "b=2&a=1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20261126%2Fus-east-1%2Fkinesisvideo%2Faws4_request&X-Amz-Date=20261126T213226Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=e5cede666af65336662f97df6cd27b47de1ec21b5e82a484f6cb17ff2c5b97d1";
        let h = headers(&[("host", "127.0.0.1:7070")]);
        let request = RequestParts {
            method: "GET",
            path: "/listStreams",
            query: Some(query),
            headers: &h,
            authority: None,
        };
        let v = verifier(&[]);
        assert!(v.verify(&request, Some(b""), SIGNED_AT_S + 299).is_ok());
        let expired = v.verify(&request, Some(b""), SIGNED_AT_S + 301);
        assert!(matches!(expired, Err(SigV4Error::InvalidSignature(_))));
        let tampered = query.replace("b=2", "b=3");
        let request = RequestParts {
            query: Some(&tampered),
            ..request
        };
        let err = v
            .verify(&request, Some(b""), SIGNED_AT_S)
            .expect_err("tampered");
        assert_eq!(err.code(), "InvalidSignatureException");
    }

    #[test]
    fn clock_skew_of_five_minutes_is_allowed_and_no_more() {
        let h = create_stream_headers(CREATE_SIGNATURE);
        let v = verifier(&[]);
        let at = |now| v.verify(&post("/createStream", None, &h), Some(CREATE_BODY), now);
        assert!(at(SIGNED_AT_S - CLOCK_SKEW_S_MAX).is_ok());
        assert!(at(SIGNED_AT_S + CLOCK_SKEW_S_MAX).is_ok());
        for now in [
            SIGNED_AT_S - CLOCK_SKEW_S_MAX - 1,
            SIGNED_AT_S + CLOCK_SKEW_S_MAX + 1,
        ] {
            let err = at(now).expect_err("skewed");
            assert!(err.to_string().contains("Signature expired"), "{err}");
        }
    }

    #[test]
    fn tampered_bodies_headers_and_signatures_are_refused() {
        let v = verifier(&[]);
        let h = create_stream_headers(CREATE_SIGNATURE);
        let tampered_body = br#"{"StreamName": "cat"}"#;
        let err = v
            .verify(
                &post("/createStream", None, &h),
                Some(tampered_body),
                SIGNED_AT_S,
            )
            .expect_err("body");
        assert_eq!(err.code(), "InvalidSignatureException");
        let err = v
            .verify(
                &post("/deleteStream", None, &h),
                Some(CREATE_BODY),
                SIGNED_AT_S,
            )
            .expect_err("path");
        assert_eq!(err.code(), "InvalidSignatureException");
        let mut h2 = h.clone();
        h2.insert("content-type", "text/plain".parse().expect("value"));
        let err = v
            .verify(
                &post("/createStream", None, &h2),
                Some(CREATE_BODY),
                SIGNED_AT_S,
            )
            .expect_err("header");
        assert_eq!(err.code(), "InvalidSignatureException");
        let h3 = create_stream_headers(&CREATE_SIGNATURE.replace('4', "5"));
        let err = v
            .verify(
                &post("/createStream", None, &h3),
                Some(CREATE_BODY),
                SIGNED_AT_S,
            )
            .expect_err("signature");
        assert_eq!(err.code(), "InvalidSignatureException");
    }

    #[test]
    fn wrong_secret_and_unknown_key_are_told_apart() {
        let h = create_stream_headers(CREATE_SIGNATURE);
        let other_secret = Verifier::new(
            &[AccessKey {
                access_key_id: AKID.into(),
                secret_access_key: "not-the-secret".into(),
                streams: vec![],
            }],
            "us-east-1",
            SERVICES,
        );
        let err = other_secret
            .verify(
                &post("/createStream", None, &h),
                Some(CREATE_BODY),
                SIGNED_AT_S,
            )
            .expect_err("secret");
        assert_eq!(err.code(), "InvalidSignatureException");
        let no_keys = Verifier::new(&[], "us-east-1", SERVICES);
        let err = no_keys
            .verify(
                &post("/createStream", None, &h),
                Some(CREATE_BODY),
                SIGNED_AT_S,
            )
            .expect_err("unknown");
        assert_eq!(err.code(), "UnrecognizedClientException");
    }

    #[test]
    fn scope_must_name_our_region_and_an_offered_service() {
        let h = create_stream_headers(CREATE_SIGNATURE);
        let v = Verifier::new(&[], "eu-west-1", SERVICES);
        let err = v
            .verify(
                &post("/createStream", None, &h),
                Some(CREATE_BODY),
                SIGNED_AT_S,
            )
            .expect_err("region");
        assert!(err.to_string().contains("region"), "{err}");
        let v = Verifier::new(&[], "us-east-1", &["kinesis"]);
        let err = v
            .verify(
                &post("/createStream", None, &h),
                Some(CREATE_BODY),
                SIGNED_AT_S,
            )
            .expect_err("service");
        assert!(err.to_string().contains("service"), "{err}");
    }

    #[test]
    fn missing_and_malformed_signatures_have_their_own_codes() {
        let v = verifier(&[]);
        let none = headers(&[("host", "h")]);
        let err = v
            .verify(&post("/createStream", None, &none), Some(b""), SIGNED_AT_S)
            .expect_err("missing");
        assert_eq!(err.code(), "MissingAuthenticationTokenException");
        for bad in [
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261126/us-east-1/kinesisvideo/aws4_request",
            "AWS4-HMAC-SHA1 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKID/x, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261126/us-east-1/kinesisvideo/aws4_request, SignedHeaders=x-amz-date, Signature=00",
        ] {
            let h = headers(&[("host", "h"), ("x-amz-date", DATE), ("authorization", bad)]);
            let err = v
                .verify(&post("/createStream", None, &h), Some(b""), SIGNED_AT_S)
                .expect_err(bad);
            assert_eq!(err.code(), "IncompleteSignatureException", "{bad}");
        }
        let mut h = create_stream_headers(CREATE_SIGNATURE);
        h.remove("x-amz-date");
        let err = v
            .verify(
                &post("/createStream", None, &h),
                Some(CREATE_BODY),
                SIGNED_AT_S,
            )
            .expect_err("date");
        assert_eq!(err.code(), "IncompleteSignatureException");
    }

    #[test]
    fn declared_payload_hashes_are_checked_against_the_body() {
        let mut h = create_stream_headers(CREATE_SIGNATURE);
        h.insert(
            CONTENT_SHA256_HEADER,
            hex(&Sha256::digest(b"other")).parse().expect("v"),
        );
        assert!(payload_hash(&h, Some(CREATE_BODY)).is_err());
        h.insert(CONTENT_SHA256_HEADER, UNSIGNED_PAYLOAD.parse().expect("v"));
        assert_eq!(payload_hash(&h, None), Ok(UNSIGNED_PAYLOAD.to_owned()));
        h.remove(CONTENT_SHA256_HEADER);
        assert!(payload_hash(&h, None).is_err());
    }

    #[test]
    fn restricted_keys_name_their_streams() {
        let h = create_stream_headers(CREATE_SIGNATURE);
        let principal = verifier(&["cam"])
            .verify(
                &post("/createStream", None, &h),
                Some(CREATE_BODY),
                SIGNED_AT_S,
            )
            .expect("verified");
        assert!(principal.is_restricted());
        assert!(principal.may_use(&StreamName::new("cam").expect("name")));
        assert!(!principal.may_use(&StreamName::new("other").expect("name")));
        assert!(Principal::anyone().may_use(&StreamName::new("other").expect("name")));
    }

    #[test]
    fn dates_and_paths_parse_as_aws_defines_them() {
        assert_eq!(parse_amz_date(DATE), Some(SIGNED_AT_S));
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20261126T213226"), None);
        assert_eq!(parse_amz_date("2026112XT213226Z"), None);
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/a//b/./c/../d/"), "/a/b/d/");
        assert_eq!(canonical_uri("/a%20b"), "/a%2520b");
        assert_eq!(
            canonical_query("b=%7e&a=x+y", false).expect("query"),
            "a=x%2By&b=~"
        );
    }
}
