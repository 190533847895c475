"""Schemathesis hooks for flow's API test (tests/e2e/schemathesis.rs).

`no_secret_in_response` fails any response whose body or headers hold one of the values in
FLOW_ST_SECRETS (newline-separated): secrets tasks see, and the tokens of the test itself.
"""

import os

import schemathesis

SECRETS = [s for s in os.environ.get("FLOW_ST_SECRETS", "").split("\n") if s]


@schemathesis.check
def no_secret_in_response(ctx, response, case):
    text = response.text or ""
    headers = " ".join(f"{k}: {v}" for k, v in response.headers.items())
    for secret in SECRETS:
        if secret in text or secret in headers:
            raise AssertionError(
                f"the response to {case.method} {case.path} holds a secret ({secret[:6]}...)"
            )
