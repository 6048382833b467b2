"""The gateway: routes over local and remote providers, with fallback, breakers and strategies."""

from ember.gateway.config import GatewayConfig, load_gateway_config
from ember.gateway.gateway import Gateway
from ember.gateway.usage import UsageLog, UsageRecord

__all__ = ["Gateway", "GatewayConfig", "UsageLog", "UsageRecord", "load_gateway_config"]
