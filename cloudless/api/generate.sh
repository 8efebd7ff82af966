#!/usr/bin/env bash
# Regenerate the gRPC stubs from the .proto files (run from the repository root).
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
  cloudless/api/agent.proto cloudless/api/gateway.proto cloudless/api/secrets.proto
