"""Pure decision logic: no I/O, no clock, no randomness of its own.

Imports only the kernel's vocabulary module, so every concept is defined once. Subpackages
and modules: :mod:`policies.scheduler` (filters, scores, plans, preemption, explain),
:mod:`policies.disruption` (budgets), :mod:`policies.reconcile` (the workload reconciler:
desired spec and replicas to actions), :mod:`policies.liveness` and
:mod:`policies.membership` (heartbeat tables and flap damping).
"""
