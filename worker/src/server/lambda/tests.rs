use super::*;

fn id() -> Identity {
    Identity {
        region: "eu-west-1".into(),
        account_id: "123456789012".into(),
    }
}

const ARN: &str = "arn:aws:lambda:eu-west-1:123456789012:function:echo";

#[test]
fn function_names_arns_and_qualifiers() {
    let ok = |raw: &str, query: &str| function_of(&id(), raw, query).unwrap();
    assert_eq!(ok("echo", ""), ("echo".into(), ARN.into()));
    assert_eq!(
        ok("echo:%24LATEST", ""),
        ("echo".into(), format!("{ARN}:$LATEST"))
    );
    assert_eq!(
        ok("echo", "Qualifier=%24LATEST"),
        ("echo".into(), format!("{ARN}:$LATEST"))
    );
    assert_eq!(
        ok("123456789012:function:echo", ""),
        ("echo".into(), ARN.into())
    );
    assert_eq!(
        ok(
            "arn%3Aaws%3Alambda%3Aeu-west-1%3A123456789012%3Afunction%3Aecho",
            ""
        ),
        ("echo".into(), ARN.into())
    );
    assert_eq!(
        ok(
            "arn:aws:lambda:eu-west-1:123456789012:function:echo:$LATEST",
            "Qualifier=$LATEST"
        ),
        ("echo".into(), format!("{ARN}:$LATEST"))
    );
    let refused = |raw: &str, query: &str| function_of(&id(), raw, query).unwrap_err();
    for (raw, query, status, needle) in [
        (
            "echo:1",
            "",
            404,
            "Function not found: arn:aws:lambda:eu-west-1:123456789012:function:echo:1",
        ),
        ("echo", "Qualifier=prod", 404, "function:echo:prod"),
        (
            "arn:aws:lambda:us-east-1:123456789012:function:echo",
            "",
            404,
            "us-east-1",
        ),
        ("999999999999:function:echo", "", 404, "999999999999"),
        ("a:b:c:d", "", 404, "Function not found: a:b:c:d"),
        ("..", "", 404, "function:.."),
        ("echo:$LATEST", "Qualifier=1", 400, "does not match"),
    ] {
        let e = refused(raw, query);
        assert_eq!(e.status, status, "{raw} {query}: {e:?}");
        assert!(e.message.contains(needle), "{raw} {query}: {}", e.message);
    }
}

#[test]
fn client_contexts_are_base64_json_objects() {
    let ctx = tail::encode(br#"{"custom":{"a":1}}"#);
    assert_eq!(client_context(&ctx).unwrap(), r#"{"custom":{"a":1}}"#);
    for bad in [
        "not base64!".to_string(),
        tail::encode(b"[1,2]"),
        tail::encode(b"{"),
        tail::encode(format!("{{\"a\":\"{}\"}}", "x".repeat(4000)).as_bytes()),
    ] {
        let e = client_context(&bad).unwrap_err();
        assert_eq!(
            (e.status, e.kind),
            (400, "InvalidRequestContentException"),
            "{bad}"
        );
    }
}

fn parse(answer: &[u8]) -> (u16, Vec<(String, String)>, String) {
    let text = String::from_utf8(answer.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (status, headers, body.to_string())
}

#[test]
fn service_errors_carry_the_exception_header_and_the_request_id() {
    let (status, headers, body) = parse(&service(&ServiceError::not_found(ARN), "r-9", false));
    assert_eq!(status, 404);
    assert!(headers.contains(&(
        "x-amzn-ErrorType".into(),
        "ResourceNotFoundException".into()
    )));
    assert!(headers.contains(&("x-amzn-RequestId".into(), "r-9".into())));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["Type"], "User");
    assert_eq!(v["message"], format!("Function not found: {ARN}"));
    let (status, headers, _) = parse(&service(
        &ServiceError::throttled("R", "Rate Exceeded.".into()),
        "r",
        true,
    ));
    assert_eq!(status, 429);
    assert!(headers.contains(&("Retry-After".into(), "1".into())));
    assert!(headers.contains(&("Connection".into(), "close".into())));
}
