"""Fixtures: one moto S3 server per session; ``store``, a fresh blob store of each backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from klieg_platform.storage import BlobStore
from klieg_platform.storage.local import LocalBlobStore
from tests.klieg_platform.storage.s3server import make_s3_store, moto_server


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto S3 server process that lives for the whole session."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    """An empty store: the local backend, then S3 (a new bucket on the moto server)."""
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
        return
    s3 = make_s3_store(request.getfixturevalue("s3_endpoint"))
    s3.ensure_bucket()
    yield s3
    s3.close()
