"""The leases a lease holder (a worker, a workflow executor) holds: one renewal loop for all of
them, one script call per round.

A job's handler ``hold``s its lease while it works and ``drop``s it when done; every third of
``lease_s`` the loop extends every held lease by ``lease_s`` (``Queue.renew_many``), so a job
costs no task or timer of its own. A lease the holder no longer holds (requeued after a stall,
completed elsewhere) is simply not renewed; its completion is then refused. While Redis is out
of reach the loop keeps trying; a holder whose Redis comes back calls ``renew`` before it requeues
expired leases, so its own (expired during the outage, still its) are not among them.
"""

from __future__ import annotations

import asyncio
import logging

from klieg_platform.broker.outage import UNAVAILABLE, Outage
from klieg_platform.broker.queue import Queue

log = logging.getLogger("klieg.broker")


class Leases:
    def __init__(self, queue: Queue, holder_id: str, lease_s: float) -> None:
        self.queue = queue
        self.holder_id = holder_id
        self.lease_s = lease_s
        self._held: set[str] = set()

    def hold(self, request_id: str) -> None:
        self._held.add(request_id)

    def drop(self, request_id: str) -> None:
        self._held.discard(request_id)

    async def renew(self) -> int:
        """Renew every held lease now; how many are still held."""
        return await self.queue.renew_many(list(self._held), self.holder_id, self.lease_s)

    async def keep(self, outage: Outage | None = None) -> None:
        """Renew every held lease each third of ``lease_s``, until cancelled."""
        outage = outage or Outage(self.holder_id)
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew()
            except UNAVAILABLE as exc:
                outage.lost(exc)
            except Exception:
                log.exception("could not renew %d leases", len(self._held))
            else:
                outage.back()
