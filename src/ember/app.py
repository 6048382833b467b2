"""build_app(): the FastAPI application, its routers, error handlers and lifespan state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from ember.config import Settings
from ember.engine.protocol import EngineLoader


def build_app(settings: Settings | None = None) -> FastAPI:
    # Imported here so `import ember` stays light for the CLI.
    from ember import __version__
    from ember.api.deps import Services
    from ember.api.errors import install_error_handlers
    from ember.api.json_body import JsonBodyMiddleware
    from ember.api.ollama.routes import router as ollama_router
    from ember.api.openai.routes import router as openai_router
    from ember.runtime.scheduler import Scheduler
    from ember.runtime.store import ModelStore
    from ember.services.embeddings import EmbeddingService
    from ember.services.generation import GenerationService
    from ember.services.models import ModelService

    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _configure_logging(settings.log_level)
        settings.home.mkdir(parents=True, exist_ok=True)
        store = ModelStore(settings.home, hf_endpoint=settings.hf_endpoint)
        scheduler = Scheduler(store, _engine_loader(settings), settings)
        app.state.services = Services(
            settings=settings,
            scheduler=scheduler,
            generation=GenerationService(scheduler),
            embeddings=EmbeddingService(scheduler),
            models=ModelService(store, scheduler),
        )
        try:
            yield
        finally:
            await scheduler.shutdown()

    app = FastAPI(
        title="ember",
        version=__version__,
        description="Local language models behind the OpenAI (/v1) and Ollama (/api) APIs.",
        lifespan=lifespan,
    )
    app.add_middleware(JsonBodyMiddleware)
    install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(ollama_router)

    @app.get("/", response_class=PlainTextResponse, include_in_schema=False)
    @app.head("/", response_class=PlainTextResponse, include_in_schema=False)
    async def root() -> str:
        return "ember is running"

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _engine_loader(settings: Settings) -> EngineLoader:
    if settings.engine == "inprocess":
        from ember.engine.llama_engine import LlamaEngineLoader

        return LlamaEngineLoader()
    from ember.engine.process_engine import ProcessEngineLoader

    return ProcessEngineLoader(spare=True)


def _configure_logging(level: str) -> None:
    """ember's own lines beside uvicorn's, in the same shape, once per process."""
    logger = logging.getLogger("ember")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
