"""Admission control of the router: bounded slots per model, a fair waiting room, shedding.

gate.py: each model's slots, queue and refusals (429/503 with Retry-After) in one router;
fair_queue.py: which waiting request gets a freed slot (priority classes, weighted fair
queuing between tenants); priority.py: the class one request queues in. docs/scheduling.md
(fair-admission) explains the design and why it needs no shared store.
"""

from serving.router.admission.gate import Admission, ModelGate, Slot

__all__ = ["Admission", "ModelGate", "Slot"]
