#!/usr/bin/env bash
# Regenerates the Go code for our Nomad plugin protocol definitions.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { echo "protoc not found: install Debian's protobuf-compiler (apt-get install -y protobuf-compiler)" >&2; exit 1; }
gobin="$(go env GOPATH)/bin"
[ -x "$gobin/protoc-gen-go" ] || go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
[ -x "$gobin/protoc-gen-go-grpc" ] || go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
export PATH="$gobin:$PATH"
module=github.com/bedrock-nomad/nomad-driver-bedrock
protoc -I plugin/proto -I /usr/include \
  --go_out=. --go_opt=module=$module \
  --go-grpc_out=. --go-grpc_opt=module=$module \
  plugin/proto/*.proto
echo "generated: $(ls plugin/proto/*/*.pb.go | tr '\n' ' ')"
