"""The node agent: enrollment, AgentService over mTLS, runtime drivers."""

from cloudless import grpc_tuning

grpc_tuning.apply()  # before any module of this package imports grpc
