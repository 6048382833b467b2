"""build_app(): the FastAPI application, its routers, error handlers and lifespan state."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from ember.config import Settings
from ember.engine.protocol import EngineLoader

if TYPE_CHECKING:
    from ember.runtime.store import ModelStore


def build_app(settings: Settings | None = None) -> FastAPI:
    # Imported here so `import ember` stays light for the CLI.
    from ember import __version__
    from ember.agents.approvals import ApprovalService
    from ember.agents.config import load_agents_config
    from ember.agents.runner import RunDeps
    from ember.agents.service import AgentService
    from ember.agents.toolbox import Toolbox
    from ember.agents.tools.builtin import builtin_tools
    from ember.api.admin import router as admin_router
    from ember.api.admin_audit import router as admin_audit_router
    from ember.api.admin_fleet import router as admin_fleet_router
    from ember.api.admin_keys import router as admin_keys_router
    from ember.api.admin_stats import router as admin_stats_router
    from ember.api.anthropic.routes import router as anthropic_router
    from ember.api.approvals_routes import router as approvals_router
    from ember.api.deps import Services
    from ember.api.errors import install_error_handlers
    from ember.api.json_body import JsonBodyMiddleware
    from ember.api.metrics import router as metrics_router
    from ember.api.ollama.routes import router as ollama_router
    from ember.api.openai.batches_routes import router as batches_router
    from ember.api.openai.files_routes import router as files_router
    from ember.api.openai.routes import router as openai_router
    from ember.api.openai.schedules_routes import router as schedules_router
    from ember.api.protocols import ProtocolMiddleware, error_body_for, protocol_name
    from ember.api.responses.routes import router as responses_router
    from ember.api.responses.store import ResponseStore
    from ember.cache import build_cache
    from ember.dashboard.router import router as dashboard_router
    from ember.fleet.config import load_fleet_config
    from ember.gateway import Gateway, UsageLog, load_gateway_config
    from ember.guard import GuardMiddleware, build_guard
    from ember.guard.audit import AuditLog
    from ember.guard.audit import check_settings as check_audit_settings
    from ember.jobs.metrics import BatchMetrics
    from ember.jobs.schedules import start_schedules
    from ember.jobs.service import build_jobs
    from ember.recent_stats import RecentStats
    from ember.runtime.scheduler import Scheduler
    from ember.runtime.store import ModelStore
    from ember.services.embeddings import EmbeddingService
    from ember.services.generation import GenerationService
    from ember.services.models import ModelService
    from ember.telemetry import Telemetry

    settings = settings or Settings()
    # Read now, so a bad ember.toml stops `ember serve` before it binds, with file and line.
    gateway_config = load_gateway_config(settings.config)
    agents_config = load_agents_config(settings.config)
    fleet_config = load_fleet_config(settings)
    # Built now: a "${VAR}" an MCP server's env or headers name but the environment lacks fails here.
    mcp_sources = []
    if agents_config.mcp_servers:  # the mcp SDK costs ~0.9 s to import: only where it is used
        from ember.agents.tools.mcp import McpSource

        mcp_sources = [McpSource(server) for server in agents_config.mcp_servers]
    check_audit_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _configure_logging(settings.log_level)
        settings.home.mkdir(parents=True, exist_ok=True)
        store = ModelStore(settings.home, hf_endpoint=settings.hf_endpoint)
        scheduler = Scheduler(store, _engine_loader(settings, store), settings)
        generation = GenerationService(scheduler)
        embeddings = EmbeddingService(scheduler)
        models = ModelService(store, scheduler)
        gateway = Gateway(gateway_config, generation, embeddings, models)
        telemetry = Telemetry(settings)
        usage = UsageLog(settings.state_dir / "usage.db")
        guard = build_guard(settings, telemetry)
        audit = AuditLog(settings)
        cache = build_cache(settings, telemetry)
        responses = ResponseStore(settings.state_dir / "responses.db")
        recent = RecentStats()
        gateway.cache = cache
        # Every request's usage record reaches each of these once, when it ends.
        gateway.observers += [usage.add, guard.observe, audit.observe, telemetry.observe, recent.observe]
        # Agents run their steps through the gateway (gateway.agents hands agent requests over).
        toolbox = Toolbox(builtin_tools(agents_config.tools, settings.home), mcp_sources)
        await toolbox.start()
        approvals = ApprovalService(settings.state_dir / "approvals.db", audit)
        agents = AgentService(agents_config, RunDeps(gateway, toolbox, audit, agents_config.specs(), approvals))
        gateway.agents = agents
        services = Services(
            settings=settings,
            scheduler=scheduler,
            models=models,
            gateway=gateway,
            usage=usage,
            guard=guard,
            audit=audit,
            telemetry=telemetry,
            responses=responses,
            recent=recent,
            cache=cache,
            agents=agents,
            approvals=approvals,
        )
        if fleet_config.active:  # redis and the fleet's modules only for a node in a fleet
            from ember.fleet.service import start_fleet

            services.fleet = await start_fleet(settings, fleet_config, scheduler, models, recent)
            gateway.fleet = services.fleet.registry
        telemetry.bind(services)
        app.state.services = services
        # Batch lines run through this app itself (jobs/runner.py), so the runner starts last.
        services.jobs = await build_jobs(settings, app, scheduler, guard)
        services.schedules = start_schedules(settings, services.jobs.batches, services.jobs.runner.wake)
        batch_metrics = BatchMetrics(services.jobs)
        telemetry.add_collector(batch_metrics, batch_metrics.refresh)
        try:
            yield
        finally:
            if services.fleet is not None:  # first: gateways stop sending here while it still serves
                await services.fleet.aclose()
            await services.schedules.aclose()  # before jobs: a schedule firing creates a batch
            await services.jobs.aclose()  # first: its lines need everything below
            await toolbox.aclose()
            approvals.close()
            await gateway.aclose()
            await scheduler.shutdown()
            await guard.aclose()
            usage.close()
            audit.close()
            responses.close()
            telemetry.close()
            if cache is not None:
                await cache.aclose()

    app = FastAPI(
        title="ember",
        version=__version__,
        description="Local language models behind the OpenAI (/v1) and Ollama (/api) APIs.",
        lifespan=lifespan,
        **_without_native_telemetry(),
    )
    app.add_middleware(JsonBodyMiddleware, error_body=error_body_for, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(GuardMiddleware, error_body=error_body_for, protocol_name=protocol_name)
    app.add_middleware(ProtocolMiddleware)  # added last: runs first, so everything after knows the protocol
    install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(files_router)
    app.include_router(batches_router)
    app.include_router(schedules_router)
    app.include_router(responses_router)
    app.include_router(anthropic_router)
    app.include_router(ollama_router)
    app.include_router(admin_router)
    app.include_router(admin_keys_router)
    app.include_router(admin_audit_router)
    app.include_router(admin_fleet_router)
    app.include_router(approvals_router)
    app.include_router(metrics_router)
    app.include_router(admin_stats_router)
    app.include_router(dashboard_router)

    @app.get("/", response_class=PlainTextResponse, include_in_schema=False)
    @app.head("/", response_class=PlainTextResponse, include_in_schema=False)
    async def root() -> str:
        return "ember is running"

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _without_native_telemetry() -> dict[str, Any]:
    """Newer FastAPI traces requests itself once OpenTelemetry is installed; ember's spans and
    metrics come from telemetry.py, so turn FastAPI's off (and skip its per-request checks).

    Keyword arguments for FastAPI(): Any, because which ones it takes depends on its version."""
    from fastapi import FastAPI

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _engine_loader(settings: Settings, store: ModelStore) -> EngineLoader:
    if settings.engine == "inprocess":
        from ember.engine.llama_engine import LlamaEngineLoader

        return LlamaEngineLoader()
    from ember.engine.process_engine import LoadTarget, ProcessEngineLoader
    from ember.runtime.scheduler import default_load

    # The spare worker holds the default model ready while nothing is loaded (spare_worker).
    default = default_load(store, settings) if settings.spare_worker in ("preload", "preload-only") else None
    preload = LoadTarget(default[0].path, default[1]) if default is not None else None
    # At debug level each worker logs every decode step's timings (engine/batching.py).
    return ProcessEngineLoader(
        spare=settings.spare_worker, preload=preload, profile_steps=settings.log_level.lower() == "debug"
    )


def _configure_logging(level: str) -> None:
    """ember's own lines beside uvicorn's, in the same shape, once per process."""
    logger = logging.getLogger("ember")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
