"""Invokes functions through the AWS SDK for Python (boto3), as a user of Lambda would, and
prints what boto3 made of the answers: the driver of worker/tests/lambda_invoke.rs.

Usage: python lambda_client.py ENDPOINT < calls.json > results.json

calls.json is a list; each item is a call, or {"parallel": [call, ...]} (run at once, in
threads). A call: {"function": NAME, "payload": TEXT, "type": "RequestResponse"|"Event"|
"DryRun", "tail": bool, "qualifier": Q, "client_context": B64, "key": ID, "secret": S,
"unsigned": bool} (all but "function" optional). Each result is boto3's answer
{"StatusCode", "FunctionError", "LogResult" (decoded), "ExecutedVersion", "Payload" (text),
"RequestId"}, or for a ClientError {"error": {"Code", "Message", "HTTPStatusCode", "Type",
"Reason", "RequestId"}}; a parallel group gives a list.
"""

import base64
import json
import sys
import threading

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError


def client(endpoint, call):
    config = Config(
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=120,
        signature_version=botocore.UNSIGNED if call.get("unsigned") else "v4",
    )
    return boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=call.get("key", "AKIDKILNTEST"),
        aws_secret_access_key=call.get("secret", "kiln-test-secret"),
        config=config,
    )


def invoke(endpoint, call):
    args = {"FunctionName": call["function"]}
    if "payload" in call:
        args["Payload"] = call["payload"].encode()
    for key, arg in (("type", "InvocationType"), ("qualifier", "Qualifier"),
                     ("client_context", "ClientContext")):
        if key in call:
            args[arg] = call[key]
    if call.get("tail"):
        args["LogType"] = "Tail"
    try:
        r = client(endpoint, call).invoke(**args)
    except ClientError as e:
        err = e.response.get("Error", {})
        meta = e.response.get("ResponseMetadata", {})
        return {"error": {
            "Code": err.get("Code"),
            "Message": err.get("Message"),
            "HTTPStatusCode": meta.get("HTTPStatusCode"),
            "Type": e.response.get("Type"),
            "Reason": e.response.get("Reason"),
            "RequestId": meta.get("RequestId"),
        }}
    log = r.get("LogResult")
    return {
        "StatusCode": r.get("StatusCode"),
        "FunctionError": r.get("FunctionError"),
        "LogResult": base64.b64decode(log).decode("utf-8", "replace") if log else None,
        "ExecutedVersion": r.get("ExecutedVersion"),
        "Payload": r["Payload"].read().decode("utf-8", "replace"),
        "RequestId": r.get("ResponseMetadata", {}).get("RequestId"),
    }


def parallel(endpoint, calls):
    results = [None] * len(calls)

    def run(i, call):
        results[i] = invoke(endpoint, call)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main():
    endpoint = sys.argv[1]
    calls = json.load(sys.stdin)
    out = []
    for c in calls:
        out.append(parallel(endpoint, c["parallel"]) if "parallel" in c else invoke(endpoint, c))
    json.dump({"boto3": boto3.__version__, "botocore": botocore.__version__, "results": out},
              sys.stdout)


if __name__ == "__main__":
    main()
