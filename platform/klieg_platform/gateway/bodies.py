"""The platform API's JSON documents: what the management routes take (``Body`` models, which
validate them: ``contract.accepts``) and what every route answers (``Reply`` models, which
describe the answers in ``GET /openapi.json``: ``contract.answers``).

Names take the registry's patterns (``registry.TENANT_NAME`` ...), numbers their bounds, so a
request the document calls invalid is refused with a 422 naming the field before anything runs.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel, WithJsonSchema

from klieg.types import AppSpec
from klieg_platform.broker.limits import MAX_BURST, MAX_RATE_PER_S, MIN_RATE_PER_S
from klieg_platform.gateway.contract import Body
from klieg_platform.registry import (
    ALIAS,
    MAX_INFLIGHT,
    MAX_LABEL,
    REVISION_ID,
    SCOPES,
    TENANT_NAME,
    TIER,
    VISIBILITIES,
)
from klieg_platform.scaling import MAX_KEEP_ALIVE_S, MAX_RUNNERS, SETTINGS


def _whole(pattern: Any) -> str:
    return f"^(?:{pattern.pattern})$"


TenantName = Annotated[str, Field(pattern=_whole(TENANT_NAME))]
TierName = Annotated[str, Field(pattern=_whole(TIER), description="a tier of this platform")]
AliasName = Annotated[str, Field(pattern=_whole(ALIAS))]
Ref = Annotated[str, Field(pattern=_whole(REVISION_ID), description="a revision id or an alias")]
Label = Annotated[str, Field(max_length=MAX_LABEL, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]
Limit = Annotated[int, Field(ge=0, le=MAX_INFLIGHT, description="0: no cap")]
Scope = Literal["call", "deploy", "admin"]
Visibility = Literal["private", "shared", "public"]
assert set(get_args(Scope)) == set(SCOPES) and set(get_args(Visibility)) == VISIBILITIES

MAX_KEY_LIFETIME_S = 10 * 365 * 24 * 3600
MAX_SHARES = 1000


def _rate(value: float) -> float:
    if 0 < value < MIN_RATE_PER_S:
        raise ValueError(f"a rate is 0 (none) or from {MIN_RATE_PER_S:g} to {MAX_RATE_PER_S:g}")
    return value


Rate = Annotated[
    float,
    Field(ge=0, le=MAX_RATE_PER_S),
    AfterValidator(_rate),
    WithJsonSchema({"anyOf": [
        {"type": "number", "const": 0},
        {"type": "number", "minimum": MIN_RATE_PER_S, "maximum": MAX_RATE_PER_S},
    ], "description": "requests a second (0: no limit)"}),
]  # fmt: skip


# ---- what the routes take -------------------------------------------------------------------


class NewKey(Body):
    """``POST /keys``: a key of the caller's tenant, or of ``tenant`` (an admin tenant may make
    other tenants, of ``tier``); on an empty platform, the first tenant's."""

    tenant: TenantName | None = None
    tier: TierName | None = None
    label: Label | None = None
    scope: Scope = "admin"
    expires_in_s: Annotated[float, Field(gt=0, le=MAX_KEY_LIFETIME_S)] | None = None
    rate_per_s: Rate = 0.0
    burst: Annotated[int, Field(ge=1, le=MAX_BURST)] | None = Field(
        default=None, description="tokens held at most (default: one second's worth)"
    )

    def rate_terms(self) -> tuple[float, int]:
        """(rate_per_s, burst): burst defaults to one second's worth, at least 1; 0 without a
        rate."""
        if self.burst is not None:
            return self.rate_per_s, self.burst
        return self.rate_per_s, max(1, math.ceil(self.rate_per_s)) if self.rate_per_s else 0


class Deploy(Body):
    spec: AppSpec
    archive: str = Field(pattern=r"^[A-Za-z0-9+/]*={0,2}$", description="the code archive, base64")


class AliasTarget(Body):
    revision: Ref


class Sharing(Body):
    visibility: Visibility
    tenants: Annotated[list[TenantName], Field(max_length=MAX_SHARES)] | None = None


class AppVisibility(Body):
    """Who may call the app and/or whether its callers see its logs and full errors."""

    visibility: Visibility | None = None
    tenants: Annotated[list[TenantName], Field(max_length=MAX_SHARES)] | None = None
    caller_logs: bool | None = None


class AppLimit(Body):
    max_inflight: Limit


class TenantChange(Body):
    tier: TierName | None = None
    max_inflight: Limit | None = None


class SecretValue(Body):
    value: Annotated[str, Field(min_length=1)]


class WorkflowPut(Body):
    document: dict[str, Any] | str = Field(description="a workflow document, or its YAML/JSON text")
    alias: AliasName | None = None


class WorkflowAlias(Body):
    alias: AliasName | None = None


RunnerCount = Annotated[int, Field(ge=0, le=MAX_RUNNERS)]


class ScaleChange(Body):
    """``PUT /apps/{name}/scale``: settings to override for the app or one ``function`` (a
    null value stops overriding it), or ``reset`` (drop the overrides); no other field."""

    model_config = ConfigDict(extra="forbid")

    function: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="a function of the app (none: the whole app)"
    )
    keep_alive: Annotated[float, Field(ge=0, le=MAX_KEEP_ALIVE_S)] | None = None
    min_concurrency: RunnerCount | None = None
    max_concurrency: Annotated[int, Field(ge=1, le=MAX_RUNNERS)] | None = None
    concurrency_buffer: RunnerCount | None = None
    reset: bool = False

    def settings(self) -> dict[str, float | int | None]:
        """The settings the body names, None where it stops overriding one."""
        return {name: getattr(self, name) for name in SETTINGS if name in self.model_fields_set}


# ---- what the routes answer ------------------------------------------------------------------


class Reply(BaseModel):
    """An answer's document; fields it does not name may be added later."""


class Health(Reply):
    status: Literal["ok"]
    instance: str


class KeyView(Reply):
    key_id: str
    label: str | None
    scope: Scope
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    rate_per_s: float
    burst: int
    active: bool


class KeyCreated(KeyView):
    secret: str
    key: str = Field(description="key_id:secret, for the Authorization header")
    tenant: str


class Keys(Reply):
    keys: list[KeyView]


class KeyRevoked(Reply):
    key_id: str
    revoked: bool


class AppView(Reply):
    owner: str
    name: str
    created_at: float
    aliases: dict[str, str]


class Apps(RootModel[list[AppView]]):
    """The caller's apps, by name."""


class Hardware(Reply):
    function: str | None
    gpu: str | None
    num_gpus: int


class RevisionView(Reply):
    id: str
    app: str
    owner: str
    created_at: float
    code_hash: str
    env_key: str
    python: str
    aliases: list[str]
    hardware: list[Hardware]
    preload: list[str]
    """What the env's zygote imports before forking this revision's runners."""
    preload_code: bool
    """Whether the revision has a zygote of its own that imports its code too."""


class Revisions(RootModel[list[RevisionView]]):
    """An app's revisions, newest first."""


class AliasMoved(Reply):
    app: str
    alias: str
    revision: str
    previous: str | None


class VisibilitySet(Reply):
    app: str
    visibility: Visibility
    shared_with: list[str]
    caller_logs: bool


class LimitSet(Reply):
    app: str
    max_inflight: int


class TenantSet(Reply):
    tenant: str
    tier: str
    max_inflight: int


class SecretView(Reply):
    name: str
    updated_at: float


class Secrets(Reply):
    secrets: list[SecretView]


class SecretDeleted(Reply):
    name: str
    deleted: bool


class Uploaded(Reply):
    url: str
    access_url: str = Field(description="the same URL, as fal_client reads it")
    content_type: str
    file_name: str
    file_size: int


class UploadToken(Reply):
    """A token for ``POST /files/upload`` at ``base_url`` (fal_client's upload step)."""

    token: str
    token_type: Literal["Bearer"]
    base_url: str
    expires_at: str = Field(description="ISO 8601")


class WorkerView(Reply):
    id: str
    pools: list[str]
    slots: int
    slots_held: int
    gpu_ids: list[Any]
    draining: bool
    cold_starts: int
    seen_s_ago: float
    runners: list[dict[str, Any]]


class Workers(Reply):
    workers: list[WorkerView]


class TierQueue(Reply):
    tier: str
    queued: int
    oldest_wait_s: float | None


class PoolView(Reply):
    pool: str
    workers: int
    slots: dict[str, int]
    runners: dict[str, int]
    queued: int
    queue: list[TierQueue]


class Pools(Reply):
    pools: list[PoolView]


class RunnerView(Reply):
    worker: str
    pools: list[str]
    app: str
    revision: str
    function: str
    state: str
    idle_s: float
    gpus: list[Any]
    slots: int


class Runners(Reply):
    runners: list[RunnerView]


class WorkflowSummary(Reply):
    name: str
    owner: str
    aliases: dict[str, str]
    revisions: int
    visibility: Visibility
    created_at: float


class Workflows(Reply):
    workflows: list[WorkflowSummary]


class WorkflowRevision(Reply):
    id: str
    created_at: float
    aliases: list[str]
    document: dict[str, Any] | None


class WorkflowView(Reply):
    name: str
    owner: str
    visibility: Visibility
    shared_with: list[str]
    aliases: dict[str, str]
    revisions: list[WorkflowRevision]


class WorkflowStored(Reply):
    name: str
    owner: str
    revision: str
    alias: str
    created: bool
    previous: str | None


class WorkflowAliasMoved(Reply):
    name: str
    alias: str
    revision: str
    previous: str | None


class WorkflowShared(Reply):
    name: str
    visibility: Visibility
    shared_with: list[str]


class ScaleOverrideView(Reply):
    function: str | None = Field(description="null: the whole app")
    keep_alive: float | None
    min_concurrency: int | None
    max_concurrency: int | None
    concurrency_buffer: int | None
    updated_at: float


class FunctionScaling(Reply):
    function: str
    keep_alive: float
    min_concurrency: int
    max_concurrency: int
    concurrency_buffer: int


class ScaleView(Reply):
    """The app's scale overrides and each function's effective scaling (of the revision
    ``latest`` names, else the newest)."""

    app: str
    revision: str | None
    overrides: list[ScaleOverrideView]
    functions: list[FunctionScaling]


class AppDeleted(Reply):
    app: str
    deleted: bool
    retired: list[str] = Field(description="the revisions retired")


class Pruned(Reply):
    app: str
    retired: list[str]
    kept: list[str]


class DevRenewed(Reply):
    session: str
    revision: str
    expires_at: float
    ttl_s: float
    """Seconds the revision lives unrenewed: renew well within it (the CLI, every third)."""


class DevEnded(Reply):
    session: str
    retired: list[str]


Status = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]


class RequestRow(Reply):
    request_id: str
    app: str
    endpoint: str
    revision: str
    tier: str
    status: Status
    outcome: Literal["ok", "error", "cancelled"] | None
    error_type: str | None
    attempts: int
    created_at: float
    queue_s: float | None
    cold_start_s: float | None
    setup_s: float | None
    run_s: float | None


class RequestPage(Reply):
    requests: list[RequestRow]
    next: str | None = Field(description="the cursor of the next page (?after=)")


class RequestUrls(Reply):
    response_url: str
    status_url: str
    cancel_url: str


class RequestDetail(RequestRow, RequestUrls):
    input: Any = Field(description="the JSON accepted; null when it went to the blob store")
    input_stored: bool
    error: Any
    logs: list[dict[str, Any]]
    queue_position: int | None


class Submitted(RequestUrls):
    request_id: str
    status: Literal["IN_QUEUE"]
    queue_position: int | None


class Webhook(Reply):
    url: str
    status: str
    attempts: int
    last_error: str | None


class RunMetrics(Reply):
    inference_time: float


class RequestStatus(RequestUrls):
    """A request's status; ``queue_position`` and ``queue_eta_s`` while it is queued, ``error``
    and ``error_type`` once it failed, ``logs`` null unless asked for."""

    request_id: str
    status: Status
    logs: list[dict[str, Any]] | None
    queue_position: int | None = None
    queue_eta_s: float | None = None
    metrics: RunMetrics | None = None
    error: Any = None
    error_type: str | None = None
    cancel_requested: bool | None = None
    webhook: Webhook | None = None


class CancelRequested(Reply):
    status: Literal["CANCELLATION_REQUESTED"]


class Output(RootModel[Any]):
    """The endpoint's (a workflow's) output: its own document (``GET /{owner}/{app}/openapi.json``)
    gives the schema."""


class Document(RootModel[dict[str, Any]]):
    """An OpenAPI 3.1 document."""


INPUT = {"description": "any JSON value (an empty body is {})"}
"""An app's or a workflow's input, as the platform document takes it: the app's own document
(and the check before anything is queued) gives its schema."""
FILE = {"type": "string", "format": "binary"}
