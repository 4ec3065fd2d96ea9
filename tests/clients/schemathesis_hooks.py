"""Schemathesis hooks for sluice's API document (SCHEMATHESIS_HOOKS).

NDJSON batches are described as an array of events; on the wire they are
one JSON event per line, which this serializer writes. Anything else the
generator makes (negative cases) is written as one line of JSON."""
import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, list):
        return "\n".join(json.dumps(event) for event in value).encode()
    return json.dumps(value).encode()


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    """The run authenticates with X-CS-API-Key (--header). An Authorization
    the generator adds for the Bearer or Basic scheme would be a second,
    different credential beside it, which sluice refuses on purpose (400
    ambiguous_credentials, tests/hardening2.rs): send one credential."""
    if case.headers:
        for name in [name for name in case.headers if name.lower() == "authorization"]:
            del case.headers[name]
