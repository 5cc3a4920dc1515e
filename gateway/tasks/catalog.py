"""Every background task by stable name, with its queue and time limits (runners and workers)."""

from __future__ import annotations

from dataclasses import dataclass

VET_TASK = "airlock.vetting.vet_revision"
PROVISION_TASK = "airlock.provisioning.provision_download"
SWEEP_TASK = "airlock.sweeps.sweep_grants"
REEVALUATE_MODEL_TASK = "airlock.policy.reevaluate_model"
REEVALUATE_USER_TASK = "airlock.policy.reevaluate_user"
RESCREEN_TASK = "airlock.policy.rescreen_grants"
KYC_TASK = "airlock.kyc.apply_event"
CHECKPOINT_TASK = "airlock.audit.checkpoint"
FORWARD_TASK = "airlock.audit.forward"
PRUNE_TASK = "airlock.audit.prune"

QUEUES = ("vetting", "provisioning", "kyc", "audit", "default")
DEFAULT_QUEUE = "default"
SWEEP_INTERVAL_SECONDS = 300
RESCREEN_INTERVAL_SECONDS = 24 * 3600
# The checkpoint task decides cheaply whether one is due (AIRLOCK_AUDIT_CHECKPOINT_SECONDS or
# _EVENTS): ticking often bounds how late a checkpoint can be.
CHECKPOINT_TICK_SECONDS = 30
# SIEM forwarding (AIRLOCK_AUDIT_FORWARD) drains the events after its cursor on every tick.
FORWARD_TICK_SECONDS = 10
PRUNE_INTERVAL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class TaskSpec:
    """Where a task is routed and how long one run may take (soft limit, then SIGKILL)."""

    name: str
    queue: str
    soft_time_limit: int
    time_limit: int


SPECS = {
    spec.name: spec
    for spec in (
        # Vetting hashes and parses every byte of a revision: hundreds of GB at ~1 GB/s.
        TaskSpec(VET_TASK, "vetting", soft_time_limit=3300, time_limit=3600),
        TaskSpec(PROVISION_TASK, "provisioning", soft_time_limit=3300, time_limit=3600),
        TaskSpec(SWEEP_TASK, DEFAULT_QUEUE, soft_time_limit=240, time_limit=300),
        # Re-evaluation runs the engine once per live grant of a model (microseconds each).
        TaskSpec(REEVALUATE_MODEL_TASK, DEFAULT_QUEUE, soft_time_limit=540, time_limit=600),
        TaskSpec(REEVALUATE_USER_TASK, "kyc", soft_time_limit=110, time_limit=120),
        TaskSpec(RESCREEN_TASK, DEFAULT_QUEUE, soft_time_limit=3300, time_limit=3600),
        # A few provider API calls, each with the KYC HTTP timeout (10 s by default).
        TaskSpec(KYC_TASK, "kyc", soft_time_limit=110, time_limit=120),
        # Reads and links the events since the last checkpoint (10,000 by default), signs one note.
        TaskSpec(CHECKPOINT_TASK, "audit", soft_time_limit=110, time_limit=120),
        # At most 100 batches of 500 events per run, each one sink write and one cursor update.
        TaskSpec(FORWARD_TASK, "audit", soft_time_limit=110, time_limit=120),
        # Deletes 50,000 events per transaction, a checkpoint at each cut.
        TaskSpec(PRUNE_TASK, "audit", soft_time_limit=3300, time_limit=3600),
    )
}
LONGEST_TIME_LIMIT = max(spec.time_limit for spec in SPECS.values())
