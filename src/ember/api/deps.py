"""What route handlers reach for: the services, built once per app in its lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from ember.config import Settings
from ember.runtime.scheduler import Scheduler
from ember.services.embeddings import EmbeddingService
from ember.services.generation import GenerationService
from ember.services.models import ModelService


@dataclass
class Services:
    settings: Settings
    scheduler: Scheduler
    generation: GenerationService
    embeddings: EmbeddingService
    models: ModelService


def services(request: Request) -> Services:
    return request.app.state.services
