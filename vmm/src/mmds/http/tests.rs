use super::*;
use kiln_http::{parse_request, Parsed};
use serde_json::json;

fn req(raw: &str) -> Request {
    match parse_request(raw.as_bytes(), 1024) {
        Ok(Parsed::Complete { request, .. }) => request,
        other => panic!("{raw:?}: {other:?}"),
    }
}

/// (status, the whole response as text).
fn call(store: &mut MmdsStore, raw: &str) -> (u16, String) {
    let out = String::from_utf8(respond(store, &req(raw), false)).unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out)
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").unwrap().1
}

fn store(version: MmdsVersion) -> MmdsStore {
    let mut s = MmdsStore::new(4096);
    s.put(json!({"latest": {"meta-data": {"ami-id": "ami-1", "n": 7}}}))
        .unwrap();
    s.configure(version, false);
    s
}

#[test]
fn v1_serves_json_and_text() {
    let mut s = store(MmdsVersion::V1);
    let (st, r) = call(&mut s, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n");
    assert_eq!((st, body(&r)), (200, "ami-1"), "{r}");
    assert!(r.contains("Content-Type: text/plain"), "{r}");
    let (st, r) = call(
        &mut s,
        "GET //latest//meta-data/ HTTP/1.1\r\nAccept: application/json\r\n\r\n",
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body(&r)).unwrap(),
        json!({"ami-id": "ami-1", "n": 7})
    );
    assert!(r.contains("Content-Type: application/json"), "{r}");
    let (st, r) = call(&mut s, "GET /latest/ HTTP/1.1\r\n\r\n");
    assert_eq!((st, body(&r)), (200, "meta-data/"));
    let (st, _) = call(&mut s, "GET /latest/meta-data/n HTTP/1.1\r\n\r\n");
    assert_eq!(st, 501);
    let (st, _) = call(&mut s, "GET /nope HTTP/1.1\r\n\r\n");
    assert_eq!(st, 404);
    // V1 takes a token if given, valid or not.
    let (st, _) = call(
        &mut s,
        "GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: junk\r\n\r\n",
    );
    assert_eq!(st, 200);
    let (st, r) = call(&mut s, "POST /latest HTTP/1.1\r\n\r\n");
    assert_eq!(st, 405);
    assert!(r.contains("Allow: GET, PUT"), "{r}");
}

#[test]
fn v2_needs_a_token_from_put() {
    let mut s = store(MmdsVersion::V2);
    let get = "GET /latest/meta-data/ami-id HTTP/1.1\r\n";
    let (st, _) = call(&mut s, &format!("{get}\r\n"));
    assert_eq!(st, 401);
    let (st, _) = call(
        &mut s,
        &format!("{get}X-metadata-token: {}\r\n\r\n", "0".repeat(48)),
    );
    assert_eq!(st, 401);
    let (st, r) = call(
        &mut s,
        "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
    );
    assert_eq!(st, 200, "{r}");
    assert!(r.contains("X-metadata-token-ttl-seconds: 60"), "{r}");
    let token = body(&r).to_string();
    for header in ["X-metadata-token", "X-aws-ec2-metadata-token"] {
        let (st, r) = call(&mut s, &format!("{get}{header}: {token}\r\n\r\n"));
        assert_eq!((st, body(&r)), (200, "ami-1"), "{header}");
    }
    for (raw, want) in [
        ("PUT /latest/api/token HTTP/1.1\r\n\r\n", 400),
        ("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 0\r\n\r\n", 400),
        ("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 21601\r\n\r\n", 400),
        ("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: -1\r\n\r\n", 400),
        ("PUT /latest/api/tokens HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n", 404),
        (
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
            400,
        ),
        (
            "PUT //latest/api//token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n",
            200,
        ),
    ] {
        assert_eq!(call(&mut s, raw).0, want, "{raw}");
    }
}

#[test]
fn imds_compat_always_answers_text() {
    let mut s = store(MmdsVersion::V1);
    s.configure(MmdsVersion::V1, true);
    let (st, r) = call(
        &mut s,
        "GET /latest/meta-data HTTP/1.1\r\nAccept: application/json\r\n\r\n",
    );
    assert_eq!((st, body(&r)), (200, "ami-id\nn"));
    assert!(r.contains("Content-Type: text/plain"), "{r}");
}
