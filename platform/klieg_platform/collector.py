"""Revision collection: retired revisions go once nothing needs them, with their code and envs.

A revision is retired when its app is deleted (``klieg apps delete``), when it is pruned
(``klieg revisions prune``), or when a dev revision (``klieg run``) expires or its session
ends. Retired, no new request resolves to it, but the requests already queued or running
still run on it. Every ``COLLECT_EVERY_S`` one gateway of the cluster (the one that takes
``keys.COLLECT_CLAIM`` for the period):

1. retires the dev revisions whose expiry passed (their session died without removing them)
   and tells every gateway and worker that their apps' routes changed;
2. for each retired revision that no request needs any more (``Queue.revisions_busy``: none
   queued, reserved or running), deletes its row, then its code archive and its env when no
   remaining revision uses them (the env under the packager's lock, marker first:
   ``EnvStore.remove``), and deletes the apps left with no revision.

A deploy that reuses a code archive or an env as it is being collected stores or builds it
again after writing its revision (``deploy.py``), so the race costs a rebuild, never a broken
revision. Envs are per machine: this collects the store of the gateway's machine (on one
machine, ``klieg up``, the store every process shares).
"""

from __future__ import annotations

import asyncio
import logging

from klieg_platform import keys
from klieg_platform.broker import Broker
from klieg_platform.broker.claims import EachPeriod
from klieg_platform.packager import Packager
from klieg_platform.registry import Registry
from klieg_platform.registry_lifecycle import Dropped
from klieg_platform.storage import BlobStore, code_key

log = logging.getLogger("klieg.collector")

COLLECT_EVERY_S = 5.0


class Collector(EachPeriod):
    name = "revision collector"

    def __init__(
        self,
        broker: Broker,
        registry: Registry,
        store: BlobStore,
        packager: Packager,
        *,
        every_s: float = COLLECT_EVERY_S,
    ) -> None:
        super().__init__(broker.claims, keys.COLLECT_CLAIM, every_s)
        self.broker = broker
        self.registry = registry
        self.store = store
        self.packager = packager

    async def step(self) -> None:
        dropped = await self.collect()
        if dropped.revisions:
            log.info(
                "collected %d revision(s), %d code archive(s), %d env(s), %d app(s)",
                len(dropped.revisions), len(dropped.code_hashes), len(dropped.env_keys),
                dropped.apps,
            )  # fmt: skip

    async def collect(self) -> Dropped:
        """One round (see the module's contract): what was dropped."""
        for app_key in await asyncio.to_thread(self.registry.retire_expired):
            log.info("%s: ended a dev session that stopped renewing its revision", app_key)
            await self.broker.streams.publish(keys.ALIAS_CHANNEL, app_key)  # routes changed
        retired = await asyncio.to_thread(self.registry.retired_revisions)
        by_app: dict[str, list[str]] = {}
        for rev in retired:
            by_app.setdefault(f"{rev.owner}/{rev.app}", []).append(rev.id)
        free: list[str] = []
        for app_key, ids in by_app.items():
            busy = await self.broker.queue.revisions_busy(app_key)
            free += [rid for rid in ids if rid not in busy]
        dropped = await asyncio.to_thread(self.registry.drop_revisions, free)
        for code_hash in dropped.code_hashes:
            await asyncio.to_thread(self.store.delete, code_key(code_hash))
        for env in dropped.env_keys:
            if not await asyncio.to_thread(self.packager.remove, env):
                log.info("env %s left in place (being built, or not on this machine)", env[:12])
        return dropped
