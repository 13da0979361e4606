"""The studio's HTTP API: :func:`create_app` builds the FastAPI application for one :class:`Studio`.

- ``/api/...``: Atelier's native JSON API (asynchronous jobs, uploads, models, events); see ``native.py``.
- ``/sdapi/v1/...``: the AUTOMATIC1111-compatible API; see ``a1111.py``.
- ``/metrics``: Prometheus metrics; ``/docs``: interactive OpenAPI documentation.
"""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from atelier import __version__
from atelier.service.api.a1111 import build_a1111_router
from atelier.service.api.a1111_extras import build_a1111_extras_router, build_internal_router
from atelier.service.api.a1111_interrogate import build_a1111_interrogate_router
from atelier.service.api.campaign import build_campaign_router
from atelier.service.api.common import (
    DOCS_ASSETS,
    ERROR_RESPONSES,
    JobWaiter,
    StudioGate,
    install_error_handlers,
)
from atelier.service.api.controlnet import build_controlnet_router
from atelier.service.api.models import build_models_router
from atelier.service.api.native import build_native_router
from atelier.service.api.product import build_product_router
from atelier.service.api.provenance import build_provenance_router
from atelier.service.api.styles import build_styles_router
from atelier.service.metrics import StudioMetrics
from atelier.service.security import AccessPolicy
from atelier.service.studio import Studio
from atelier.service.supervisor import WorkerSupervisor
from atelier.service.watcher import BucketWatcher

DESCRIPTION = """
Atelier's studio service. Generation and training run as jobs in a durable queue, on workers that may run on
other machines.

* **Native API** (`/api`): submit jobs (202 + job id), follow them (`/api/jobs/{id}`, server-sent events on
  `/api/jobs/{id}/events`, or a `webhook_url`), upload training zips and models.
* **A1111-compatible API** (`/sdapi/v1`): for tools written for AUTOMATIC1111's web UI. Requests are queued,
  never dropped.

Send an API key as `Authorization: Bearer <key>` once keys exist (`atelier keys create NAME`).
"""


def create_app(
    studio: Studio,
    *,
    always_require_keys: bool = False,
    supervisor: WorkerSupervisor | None = None,
    watcher: BucketWatcher | None = None,
    wait_poll_seconds: float = 0.01,
) -> FastAPI:
    """The FastAPI app serving ``studio``.

    ``always_require_keys`` is set when listening beyond loopback. ``supervisor`` adds local worker counts to
    ``/metrics``; ``watcher`` lets A1111's refresh endpoints scan the buckets at once.
    """
    # Swagger UI and ReDoc with their scripts served from the fastapi-offline package instead of a CDN: an
    # offline studio (or one behind a strict firewall) still has working API docs.
    app = FastAPIOffline(
        title="Atelier",
        version=__version__,
        description=DESCRIPTION,
        static_url=DOCS_ASSETS,
    )
    app.state.studio = studio
    app.state.waiter = JobWaiter(studio.store, poll_seconds=wait_poll_seconds)
    app.state.watcher = watcher
    metrics = StudioMetrics(
        studio.store, worker_counts=supervisor.counts if supervisor else None, board=studio.workers
    )
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(
        StudioGate,
        policy=AccessPolicy(studio.keys, always_required=always_require_keys),
        trusted_hosts=studio.config.trusted_hosts(),
    )
    # Body limits on the routers rather than the app (uploads raise theirs per route): an app-wide limit would
    # answer from outside AuthMiddleware, in plain text instead of the API's JSON error.
    limit = studio.config.max_request_bytes
    app.include_router(build_native_router(studio.config), max_body_size=limit, responses=ERROR_RESPONSES)
    app.include_router(build_models_router(studio.config), max_body_size=limit, responses=ERROR_RESPONSES)
    app.include_router(build_a1111_router(), max_body_size=limit, responses=ERROR_RESPONSES)
    app.include_router(build_a1111_extras_router(), max_body_size=limit, responses=ERROR_RESPONSES)
    app.include_router(build_a1111_interrogate_router(), max_body_size=limit, responses=ERROR_RESPONSES)
    app.include_router(build_internal_router(), responses=ERROR_RESPONSES)
    app.include_router(build_styles_router(), max_body_size=limit, responses=ERROR_RESPONSES)
    app.include_router(build_controlnet_router(), max_body_size=limit, responses=ERROR_RESPONSES)
    app.include_router(build_campaign_router(), max_body_size=limit, responses=ERROR_RESPONSES)
    app.include_router(build_product_router(), max_body_size=limit, responses=ERROR_RESPONSES)
    app.include_router(build_provenance_router(), max_body_size=limit, responses=ERROR_RESPONSES)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics (queue depth, job latency)",
        responses={200: {"content": {"text/plain": {}}}, **ERROR_RESPONSES},
    )
    async def prometheus_metrics() -> Response:
        body, content_type = await run_in_threadpool(metrics.render)
        return Response(body, media_type=content_type)

    return app
