"""Every side effect the workflows need: agent RPCs, ledger and node updates, cert signing."""
