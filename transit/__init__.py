"""``cloudless-transit``: the embedded Vault-compatible transit server (a process of its own).

The keyring (:mod:`transit.keyring`) is the model; :mod:`transit.server` is its HTTP face.
Cloudless code never calls either directly: it talks to a transit server through ``hvac``
(the client lives in the kernel, :mod:`cloudless.transit`), so this server and a real
Vault or OpenBao are interchangeable. Design notes: ``docs/design/transit.md``.
"""
