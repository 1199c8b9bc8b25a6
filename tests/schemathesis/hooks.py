"""Schemathesis checks of RedisGate's own rules, loaded by the run in
crates/redisgate-server/tests/it/schema.rs (`hooks = "hooks"` in its config).

Besides schemathesis' `not_a_server_error`, every answer that is not 2xx must be
JSON with a non-empty string `error` (the README's promise for the management API).
"""

import json

import schemathesis


@schemathesis.check
def json_error_body(ctx, response, case):
    if 200 <= response.status_code < 300:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(
            f"{response.status_code} answer is not JSON: {response.content[:200]!r}"
        )
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, str) or not error:
        raise AssertionError(
            f"{response.status_code} answer has no `error` string: {response.content[:200]!r}"
        )
    return None
