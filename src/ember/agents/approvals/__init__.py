"""Human approvals for agent tool calls: the gate the runner parks and resumes runs through
(gate.py), the SQLite store of parked runs (store.py), auto-approve rules (rules.py) and the
RunState codec (codec.py)."""

from ember.agents.approvals.gate import ApprovalService, new_approval_id, new_run_id
from ember.agents.approvals.rules import AutoApproveRule, parse_rules
from ember.agents.approvals.store import ApprovalRecord, ApprovalStore

__all__ = [
    "ApprovalRecord",
    "ApprovalService",
    "ApprovalStore",
    "AutoApproveRule",
    "new_approval_id",
    "new_run_id",
    "parse_rules",
]
