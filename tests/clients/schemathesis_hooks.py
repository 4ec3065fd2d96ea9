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
