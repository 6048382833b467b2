"""The agent modes by name: each a small module with one `Mode` (agents/types.py).

A mode drives a run through its `ModeContext` only; the runner (agents/runner.py) owns the
limits, the trace and the run's end. Add a mode with one line here.
"""

from __future__ import annotations

from ember.agents.modes.planning import PlanningMode
from ember.agents.modes.reflection import ReflectionMode
from ember.agents.modes.swarm import SwarmMode
from ember.agents.modes.tools import ToolsMode
from ember.agents.types import Mode

MODES: dict[str, Mode] = {
    "tools": ToolsMode(),
    "reflection": ReflectionMode(),
    "planning": PlanningMode(),
    "swarm": SwarmMode(),
}
