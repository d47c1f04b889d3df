"""Klieg SDK: define serverless media apps and call them over HTTP.

Example::

    import klieg

    app = klieg.App("echo")

    @app.function()
    @klieg.endpoint("/")
    def echo(req: EchoIn) -> EchoOut:
        return EchoOut(text=req.text)
"""

from __future__ import annotations

from klieg import weights
from klieg.app import App, endpoint
from klieg.calls import call, call_async
from klieg.client import AsyncClient, Client, RequestHandle
from klieg.exceptions import (
    AppError,
    AuthenticationError,
    DeployError,
    InvalidRequestError,
    KliegError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    QueueFullError,
    RateLimitedError,
    RequestCancelledError,
    RequestTimeoutError,
    RunnerCrashedError,
    SetupError,
    UnavailableError,
    ValidationError,
    WorkerLostError,
)
from klieg.media import Audio, File, Image, Video
from klieg.workflow import Workflow, load_workflow

__all__ = [
    "App",
    "AppError",
    "AsyncClient",
    "Audio",
    "AuthenticationError",
    "Client",
    "DeployError",
    "File",
    "Image",
    "InvalidRequestError",
    "KliegError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "QueueFullError",
    "RateLimitedError",
    "RequestCancelledError",
    "RequestHandle",
    "RequestTimeoutError",
    "RunnerCrashedError",
    "SetupError",
    "UnavailableError",
    "ValidationError",
    "Video",
    "WorkerLostError",
    "Workflow",
    "call",
    "call_async",
    "endpoint",
    "load_workflow",
    "weights",
]
