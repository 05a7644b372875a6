"""The group-commit writer: one transaction per batch, and only then the answers.

WriterMixin, a part of ShardWorker: commits each WriteSet the batcher (ledger/batcher.py)
hands it, marks it committed in memory, answers the batch's callers and passes its outbox
to the relay. A failed write stops the process (fail-stop). Split out of ledger/worker.py
(issue 18, a pure move).
"""

from __future__ import annotations

import logging
import os
import time

from . import pg
from .worker_base import WorkerBase

__all__ = ["WriterMixin"]

log = logging.getLogger("quickpay.shard")


class WriterMixin(WorkerBase):
    # ---- writer: one transaction per batch -----------------------------------
    async def _writer(self) -> None:
        assert self.write_conn is not None
        while True:
            ws, replies, commands, started, decided = await self.write_queue.get()
            writing = time.monotonic()
            if not ws.is_empty():
                try:
                    await pg.write_batch(self.write_conn, ws)
                except BaseException:
                    log.exception("batch write failed; stopping so that the restart reloads the truth")
                    logging.shutdown()
                    os._exit(70)
                for transfer in ws.transfers:
                    transfer.committed = True
                accounts = self.state.accounts
                for account_id, delta_minor in ws.deltas.items():
                    accounts[account_id].committed_balance_minor += delta_minor
                self.committed_batches += 1
                self.committed_transfers += len(ws.transfers)
            written = time.monotonic()
            self.pipeline_slots.release()
            for reply, (ok, result) in replies:
                reply(ok, result)
            self.batch_timings.append(
                (commands, decided - started, writing - decided, written - writing, time.monotonic() - started)
            )
            if ws.outbox and self.relay is not None:
                self.relay.enqueue([(leg, ws.targets[leg.transfer_id]) for leg in ws.outbox])
