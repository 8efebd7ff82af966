"""The node agent: enrollment, AgentService over mTLS, runtime drivers."""
