"""Notifications: events produced from the shards' committed journals, signed webhook
deliveries with retries, the event feed's storage.

- `events`: journal rows -> events (pure)
- `delivery`: the retry schedule and the signature header (pure)
- `ssrf`: which webhook URLs and addresses may be called
- `store`: the SQL (events, positions, endpoints, deliveries in shard 0's database)
- `service`: the `quickpay notifier` process: produce, then deliver
"""
