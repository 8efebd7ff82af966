"""The operators' authenticating front: Temporal's API over mutual TLS, and the Temporal
UI (with the payload codec on its own origin) behind a login. See docs/design/front.md."""
