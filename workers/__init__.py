"""Process entry points: ``cloudless-coordinator`` (Temporal workers + the agents' TLS gateway)."""

from cloudless import grpc_tuning

grpc_tuning.apply()  # before any module of this package imports grpc
