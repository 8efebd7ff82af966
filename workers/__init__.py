"""Process entry points: ``cloudless-coordinator`` (Temporal workers + the agents' TLS gateway)."""
