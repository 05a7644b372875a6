"""A node: one process that serves the HTTP API and owns one shard (`quickpay up --topology node`).

Shard-per-core, as ScyllaDB/Seastar do (and TigerBeetle, whose one thread runs network,
state machine and storage): the node's gateway calls its own shard's ShardWorker in the same
event loop (ledger.local_client) and reaches the other shards over the batched shard protocol,
as the separate gateway tier does. The worker keeps its socket server, so other nodes, the
relays, the monitor and the CLI reach it as before, and its advisory lock still makes it the
shard's single writer. A SIGKILL takes the node's HTTP connections and its shard down
together; the supervisor restarts it and the partners' retries (same idempotency key)
converge, as with a killed shard worker.
"""

from __future__ import annotations

import logging

from gateway.app import GatewayConfig, create_app
from gateway.server import serve_app
from ledger.local_client import LocalShardClient
from ledger.worker import ShardWorker, WorkerConfig

__all__ = ["run_node"]

log = logging.getLogger("quickpay.node")


async def run_node(worker_config: WorkerConfig, gateway_config: GatewayConfig, host: str, port: int) -> None:
    worker = ShardWorker(worker_config)
    await worker.start()
    try:
        shard = worker_config.shard
        gateway_config.local_clients = {
            shard: LocalShardClient(worker, shard, call_timeout_s=gateway_config.call_timeout_s)
        }
        log.info("node of shard %s serving HTTP on %s:%s", shard, host, port)
        await serve_app(create_app(gateway_config), host, port)
    finally:
        await worker.close()
