"""Segment's Python SDK (segment-analytics-python), unchanged but for its
host, sends one call of each type to sluice, gzipped as the SDK can.

    segment_python.py HOST WRITE_KEY TAG

User ids and event names carry TAG so the test finds them in Kafka. Exits 1
if the SDK reports any error (it retries, then calls on_error)."""
import sys

from segment.analytics import Client

host, write_key, tag = sys.argv[1:4]
errors = []
client = Client(
    write_key,
    host=host,
    gzip=True,
    on_error=lambda error, batch: errors.append(repr(error)),
    max_retries=2,
    upload_size=100,
)
user = f"{tag}_user"
client.track(user, f"{tag} Order Completed", {"total": 42.5, "items": [1, 2]}, context={"app": {"name": "py"}})
client.identify(user, {"plan": "pro", "email": "a@example.com"})
client.page(user, "Docs", "Getting started", {"path": "/start"})
client.screen(user, "App", "Home", {"tab": 2})
client.group(user, f"{tag}_group", {"seats": 5})
client.alias(f"{tag}_previous", user)
client.track(anonymous_id=f"{tag}_anonymous", event=f"{tag} Anonymous Visit")
client.flush()
client.join()
if errors:
    print("errors:", errors)
    sys.exit(1)
print("sent 7 calls")
