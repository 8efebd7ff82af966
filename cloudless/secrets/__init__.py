"""Secrets: envelope encryption, access tokens, the audit log and their payload models.

Pure pieces shared by the coordinator's SecretsService, the secret workflows and the CLI;
see docs/design/secrets.md.
"""
