"""The leases a worker holds: one renewal loop for all of them, one script call per round.

An execution ``hold``s its job's lease while it works and ``drop``s it when done; every third of
``lease_s`` the loop extends every held lease by ``lease_s`` (``Queue.renew_many``), so a
request costs no task or timer of its own. A lease the worker no longer holds (requeued after a
stall, completed elsewhere) is simply not renewed; its completion is then refused.
"""

from __future__ import annotations

import asyncio
import logging

from klieg_platform.broker import Broker

log = logging.getLogger("klieg.worker")


class Leases:
    def __init__(self, broker: Broker, worker_id: str, lease_s: float) -> None:
        self.broker = broker
        self.worker_id = worker_id
        self.lease_s = lease_s
        self._held: set[str] = set()

    def hold(self, request_id: str) -> None:
        self._held.add(request_id)

    def drop(self, request_id: str) -> None:
        self._held.discard(request_id)

    async def keep(self) -> None:
        """Renew every held lease each third of ``lease_s``, until cancelled."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.broker.queue.renew_many(list(self._held), self.worker_id, self.lease_s)
            except Exception:
                log.exception("could not renew %d leases", len(self._held))
