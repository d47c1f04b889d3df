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

from klieg.app import App, endpoint
from klieg.calls import call, call_async
from klieg.client import AsyncClient, Client, RequestHandle
from klieg.exceptions import (
    AppError,
    AuthenticationError,
    DeployError,
    KliegError,
    NotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
    SetupError,
    ValidationError,
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
    "KliegError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RequestHandle",
    "RequestTimeoutError",
    "SetupError",
    "ValidationError",
    "Video",
    "Workflow",
    "call",
    "call_async",
    "endpoint",
    "load_workflow",
]
