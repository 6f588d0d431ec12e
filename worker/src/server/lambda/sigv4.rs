//! AWS Signature Version 4 on the Invoke API: the `Authorization` header is parsed, and when
//! the worker has credentials (`--credentials`), the signature is recomputed with the secret
//! of the access key it names and compared (in constant time), as AWS does:
//!
//! 1. the canonical request: method, the path URI-encoded once more (AWS's rule for every
//!    service but S3: the path as sent is encoded again), the query's pairs decoded, encoded
//!    and sorted, the signed headers (`name:value`, values trimmed and inner spaces folded),
//!    their names, and the body's SHA-256 (or `X-Amz-Content-SHA256`);
//! 2. the string to sign: `AWS4-HMAC-SHA256`, `X-Amz-Date`, the credential scope, the
//!    canonical request's SHA-256;
//! 3. the signing key: HMAC-SHA256 chained over `AWS4<secret>`, date, region, service,
//!    `aws4_request`; the signature is the HMAC of the string to sign under it.
//!
//! The request's time must be within 15 minutes of the worker's. The region and service in
//! the scope are taken as the client signed them (a local endpoint has no region of its own
//! to insist on). Without credentials, any request is accepted: a well-formed signature's
//! access key is reported, and the server warns that nothing is verified.

use super::credentials::Credentials;
use hmac::{Hmac, Mac};
use kiln_http::Request;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The only algorithm AWS SigV4 headers name.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Largest difference between the request's time and the worker's.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Why a request's signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error("the request is not signed: no Authorization header (the worker verifies signatures: --credentials)")]
    Missing,
    #[error("the Authorization header is not an AWS Signature Version 4 header: {0}")]
    Malformed(String),
    #[error("the request has no valid X-Amz-Date header: {0}")]
    BadDate(String),
    #[error("signature expired: the request was signed at {signed} (X-Amz-Date), more than 15 minutes from the worker's time")]
    Expired { signed: String },
    #[error("the access key {0:?} is not one the worker knows (--credentials)")]
    UnknownKey(String),
    #[error("the request signature does not match the one the worker computed with the secret of access key {0:?}: check the secret access key and the signing method")]
    Mismatch(String),
}

/// The fields of an `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
/// Signature=...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    /// `YYYYMMDD`.
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lower-case header names, in the order signed.
    pub signed_headers: Vec<String>,
    /// Hex.
    pub signature: String,
}

/// What signature checking concluded about an accepted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// Verified with the secret of this access key.
    Verified(String),
    /// Not verified (no credentials configured): the access key it names, if it is signed.
    Unverified(Option<String>),
}

/// Parses the value of an `Authorization` header.
pub fn parse_authorization(value: &str) -> Result<Authorization, SigV4Error> {
    let bad = |m: &str| SigV4Error::Malformed(m.to_string());
    let rest = value
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| bad("it does not start with AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            return Err(bad("a component is not key=value"));
        };
        let slot = match k.trim() {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => return Err(bad("an unknown component")),
        };
        *slot = Some(v.trim());
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(bad(
            "Credential, SignedHeaders and Signature are all required",
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key, date, region, service, terminator] = scope.as_slice() else {
        return Err(bad(
            "Credential is not ACCESS_KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    if *terminator != "aws4_request" || key.is_empty() || date.len() != 8 {
        return Err(bad(
            "Credential is not ACCESS_KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("Signature is not 64 hex digits"));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_ascii_lowercase).collect();
    if signed_headers.iter().any(String::is_empty) {
        return Err(bad("SignedHeaders has an empty name"));
    }
    Ok(Authorization {
        access_key_id: key.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

/// Checks `req`'s signature against `credentials` at time `now` (see the module's text).
pub fn check(
    req: &Request,
    credentials: Option<&Credentials>,
    now: SystemTime,
) -> Result<Signer, SigV4Error> {
    let Some(credentials) = credentials else {
        let key = req
            .header("authorization")
            .and_then(|v| parse_authorization(v).ok())
            .map(|a| a.access_key_id);
        return Ok(Signer::Unverified(key));
    };
    let auth = parse_authorization(req.header("authorization").ok_or(SigV4Error::Missing)?)?;
    let amz_date = req
        .header("x-amz-date")
        .ok_or_else(|| SigV4Error::BadDate("no X-Amz-Date header".into()))?;
    let signed_at = parse_amz_date(amz_date)?;
    let skew = match now.duration_since(signed_at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > MAX_SKEW {
        return Err(SigV4Error::Expired {
            signed: amz_date.to_string(),
        });
    }
    if amz_date.get(..8) != Some(auth.date.as_str()) {
        return Err(SigV4Error::Malformed(
            "the Credential's date is not the date of X-Amz-Date".into(),
        ));
    }
    let secret = credentials
        .secret(&auth.access_key_id)
        .ok_or_else(|| SigV4Error::UnknownKey(auth.access_key_id.clone()))?;
    let given = hex_decode(&auth.signature)
        .ok_or_else(|| SigV4Error::Malformed("Signature is not hex".into()))?;
    // The MAC's own comparison, in constant time.
    let verified = signing_key(secret, &auth)
        .and_then(|key| hmac_new(&key))
        .is_some_and(|mut mac| {
            mac.update(string_to_sign(req, &auth, amz_date).as_bytes());
            mac.verify_slice(&given).is_ok()
        });
    if !verified {
        return Err(SigV4Error::Mismatch(auth.access_key_id));
    }
    Ok(Signer::Verified(auth.access_key_id))
}

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 under `key` (HMAC takes keys of any length: `None` never happens).
fn hmac_new(key: &[u8]) -> Option<HmacSha256> {
    <HmacSha256 as Mac>::new_from_slice(key).ok()
}

fn hmac(key: &[u8], data: &str) -> Option<Vec<u8>> {
    let mut mac = hmac_new(key)?;
    mac.update(data.as_bytes());
    Some(mac.finalize().into_bytes().to_vec())
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The signing key of `auth`'s scope.
fn signing_key(secret: &str, auth: &Authorization) -> Option<Vec<u8>> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), &auth.date)?;
    let k_region = hmac(&k_date, &auth.region)?;
    let k_service = hmac(&k_region, &auth.service)?;
    hmac(&k_service, "aws4_request")
}

fn string_to_sign(req: &Request, auth: &Authorization, amz_date: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{}/{}/{}/aws4_request\n{}",
        auth.date,
        auth.region,
        auth.service,
        sha256_hex(canonical_request(req, &auth.signed_headers).as_bytes())
    )
}

/// The canonical request of step 1.
pub fn canonical_request(req: &Request, signed_headers: &[String]) -> String {
    let headers: String = signed_headers
        .iter()
        .map(|name| {
            let values: Vec<String> = req.header_values(name).map(fold_spaces).collect();
            format!("{name}:{}\n", values.join(","))
        })
        .collect();
    let payload = match req.header("x-amz-content-sha256") {
        Some(h) => h.to_string(),
        None => sha256_hex(req.body.as_deref().unwrap_or_default()),
    };
    format!(
        "{}\n{}\n{}\n{headers}\n{}\n{payload}",
        req.method.as_str(),
        uri_encode(&req.path, false),
        canonical_query(&req.query),
        signed_headers.join(";"),
    )
}

fn fold_spaces(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// AWS's URI encoding: every byte but `A-Za-z0-9-_.~` (and `/` unless `encode_slash`) as
/// `%XX`.
pub fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else if b == b'/' && !encode_slash {
            out.push('/');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `%XX` sequences decoded (anything else, `+` included, as is); `None` when the result is
/// not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The query's `key=value` pairs decoded, re-encoded the AWS way and sorted.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let enc = |x: &str| uri_encode(&percent_decode(x).unwrap_or_else(|| x.into()), true);
            (enc(k), enc(v))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `YYYYMMDDTHHMMSSZ` as a time.
fn parse_amz_date(s: &str) -> Result<SystemTime, SigV4Error> {
    let bad = || SigV4Error::BadDate(format!("{s:?} is not YYYYMMDDTHHMMSSZ"));
    let b = s.as_bytes();
    if b.len() != 16 || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u64, SigV4Error> {
        s.get(r)
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return Err(bad());
    }
    let days = days_from_civil(y, mo, d);
    Ok(UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + mi * 60 + sec))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (year >= 1970).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_http::Method;
    use std::path::Path;

    const DATE: &str = "20261206T021141Z";
    /// What botocore 1.44.18 (`SigV4Auth(creds, "lambda", "us-east-1")`) sent for this
    /// request, with access key AKIDKILNTEST and secret `kiln/secret+key`.
    const SIGNATURE: &str = "2a8ac0a2b91c0a28ed1b32d9b258c61f4a96318af692df8f0121f7c62740c31a";

    fn request(signature: &str) -> Request {
        let auth = format!("AWS4-HMAC-SHA256 Credential=AKIDKILNTEST/20261206/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date;x-amz-invocation-type;x-amz-log-type, Signature={signature}");
        Request {
            method: Method::Other("POST".into()),
            path: "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Aecho/invocations".into(),
            query: "Qualifier=%24LATEST".into(),
            headers: [
                ("Host", "127.0.0.1:3001"),
                ("X-Amz-Invocation-Type", "RequestResponse"),
                ("X-Amz-Log-Type", "Tail"),
                ("User-Agent", "x"),
                ("X-Amz-Date", DATE),
                ("Authorization", auth.as_str()),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            body: Some(br#"{"hello": "world"}"#.to_vec()),
            keep_alive: true,
        }
    }

    fn creds() -> Credentials {
        Credentials::parse(
            "[default]\naws_access_key_id = AKIDKILNTEST\naws_secret_access_key = kiln/secret+key\n",
            Path::new("/c"),
        )
        .unwrap()
    }

    fn at(date: &str) -> SystemTime {
        parse_amz_date(date).unwrap()
    }

    #[test]
    fn a_botocore_signature_verifies() {
        let r = request(SIGNATURE);
        assert_eq!(
            check(&r, Some(&creds()), at(DATE)),
            Ok(Signer::Verified("AKIDKILNTEST".into()))
        );
        // Fourteen minutes later is still fine; sixteen is not.
        let later = at(DATE) + Duration::from_secs(14 * 60);
        assert!(check(&r, Some(&creds()), later).is_ok());
        let late = at(DATE) + Duration::from_secs(16 * 60);
        assert!(matches!(
            check(&r, Some(&creds()), late),
            Err(SigV4Error::Expired { .. })
        ));
        let early = at(DATE) - Duration::from_secs(16 * 60);
        assert!(matches!(
            check(&r, Some(&creds()), early),
            Err(SigV4Error::Expired { .. })
        ));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let now = at(DATE);
        let mut body = request(SIGNATURE);
        body.body = Some(br#"{"hello": "World"}"#.to_vec());
        let mut header = request(SIGNATURE);
        header.headers[2].1 = "None".into();
        let mut path = request(SIGNATURE);
        path.path = path.path.replace("echo", "hash");
        let mut query = request(SIGNATURE);
        query.query = "Qualifier=1".into();
        let sig = request(&SIGNATURE.replace('2', "3"));
        for r in [body, header, path, query, sig] {
            assert_eq!(
                check(&r, Some(&creds()), now),
                Err(SigV4Error::Mismatch("AKIDKILNTEST".into()))
            );
        }
        let other = Credentials::parse(
            "[x]\naws_access_key_id = OTHER\naws_secret_access_key = s\n",
            Path::new("/c"),
        )
        .unwrap();
        assert_eq!(
            check(&request(SIGNATURE), Some(&other), now),
            Err(SigV4Error::UnknownKey("AKIDKILNTEST".into()))
        );
        let mut unsigned = request(SIGNATURE);
        unsigned.headers.retain(|(k, _)| k != "Authorization");
        assert_eq!(
            check(&unsigned, Some(&creds()), now),
            Err(SigV4Error::Missing)
        );
        // Without credentials everything passes, and the key is reported.
        assert_eq!(check(&unsigned, None, now), Ok(Signer::Unverified(None)));
        assert_eq!(
            check(&request(SIGNATURE), None, now),
            Ok(Signer::Unverified(Some("AKIDKILNTEST".into())))
        );
    }

    #[test]
    fn malformed_headers_are_refused_by_name() {
        for (value, needle) in [
            ("Basic abc", "does not start with AWS4-HMAC-SHA256"),
            ("AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request", "all required"),
            (
                "AWS4-HMAC-SHA256 Credential=K/20240101/r/s/x, SignedHeaders=host, Signature=00",
                "Credential is not",
            ),
            (
                "AWS4-HMAC-SHA256 Credential=K/20240101/r/s/aws4_request, SignedHeaders=host, Signature=zz",
                "64 hex digits",
            ),
            (
                "AWS4-HMAC-SHA256 Credential=K/20240101/r/s/aws4_request, SignedHeaders=host;;x, Signature=0000000000000000000000000000000000000000000000000000000000000000",
                "empty name",
            ),
            ("AWS4-HMAC-SHA256 Foo=1", "unknown component"),
        ] {
            let e = parse_authorization(value).unwrap_err().to_string();
            assert!(e.contains(needle), "{value}: {e}");
        }
        let mut r = request(SIGNATURE);
        r.headers[4].1 = "2024-05-06".into();
        assert!(matches!(
            check(&r, Some(&creds()), at(DATE)),
            Err(SigV4Error::BadDate(_))
        ));
    }

    #[test]
    fn encodings_follow_aws() {
        assert_eq!(uri_encode("/a b/%3A~.-_", false), "/a%20b/%253A~.-_");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
        assert_eq!(
            percent_decode("arn%3Aaws%3alambda+x%").as_deref(),
            Some("arn:aws:lambda+x%")
        );
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(
            canonical_query("b=2&a=%24LATEST&a=1&c"),
            "a=%24LATEST&a=1&b=2&c="
        );
        assert_eq!(parse_amz_date("19700101T000000Z").unwrap(), UNIX_EPOCH);
        assert_eq!(
            parse_amz_date("20000301T000001Z")
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            951_868_801
        );
        for bad in [
            "2000-03-01",
            "20001301T000000Z",
            "20000101T250000Z",
            "2000010aT000000Z",
        ] {
            assert!(parse_amz_date(bad).is_err(), "{bad}");
        }
    }
}
