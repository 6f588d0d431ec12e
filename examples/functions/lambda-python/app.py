"""lambda-python: a Python Lambda function, exactly as one is written for AWS Lambda
(`"runtime": "python3.11"`, `"handler": "app.handler"` in kiln.json). In Kiln's Linux guest,
kiln-init serves Lambda's Runtime API and the Python runtime interface client (awslambdaric)
runs this handler against it.

An event E is answered with {"echo": E, "request_id", "function_name", "function_arn",
"remaining_ms", "greeting", "client_custom" (the client context's "custom"), "trace_id"}; {"fail": "why"} raises ValueError("why") (an error object with a stack trace);
{"exit": N} ends the runtime (Runtime.ExitError; Lambda starts it again); {"sleep_ms": N}
sleeps first (to meet the timeout); {"big_kb": N} answers N KiB of "x" (over 6 MB: Lambda's
Function.ResponseSizeTooLarge). Every invocation logs a line.
"""

import logging
import os
import time

logger = logging.getLogger()
logger.setLevel(logging.INFO)

GREETING = os.environ.get("GREETING", "")


def handler(event, context):
    logger.info("invocation %s of %s", context.aws_request_id, context.function_name)
    if isinstance(event, dict):
        if "fail" in event:
            raise ValueError(event["fail"])
        if "exit" in event:
            os._exit(int(event["exit"]))
        if "sleep_ms" in event:
            time.sleep(int(event["sleep_ms"]) / 1000)
        if "big_kb" in event:
            return "x" * (int(event["big_kb"]) * 1024)
    print("handled", flush=True)
    return {
        "echo": event,
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_arn": context.invoked_function_arn,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "greeting": GREETING,
        "client_custom": context.client_context.custom if context.client_context else None,
        "trace_id": os.environ.get("_X_AMZN_TRACE_ID"),
    }
