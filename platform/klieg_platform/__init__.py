"""Klieg platform: gateway, broker, scheduler, registry, packager, storage and workers."""
