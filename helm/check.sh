#!/usr/bin/env bash
# Offline chart checks, for every scenario (defaults, then ci/*-values.yaml):
#   yamllint, helm lint --strict, helm template, Kubernetes schema validation
#   (kubernetes-validate --strict; Prometheus Operator kinds are checked for
#   their required fields instead, their CRD schemas are not bundled), and
#   `kafka-delay run --check` on the rendered ConfigMap's config.toml.
# Also checks that values.schema.json rejects a misspelt key.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${TOOLS:-$PWD/.tools}
KUBE_VERSION=${KUBE_VERSION:-1.33.0}
TOOLS=$TOOLS helm/install-tools.sh >/dev/null
HELM=${HELM:-$TOOLS/bin/helm}
PY="$TOOLS/venv/bin/python"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
yamllint_config='{extends: default, rules: {document-start: disable, line-length: {max: 160}, indentation: {spaces: 2, indent-sequences: whatever}, truthy: {check-keys: false}}}'

cargo build --quiet
binary=target/debug/kafka-delay
# A throwaway CA, for scenarios whose config points at a mounted CA file.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=check-ca \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null

"$PY" -m yamllint -s -d "$yamllint_config" helm/Chart.yaml helm/values.yaml helm/ci/

scenarios=("")
for f in helm/ci/*-values.yaml; do scenarios+=("$f"); done
for values in "${scenarios[@]}"; do
  args=()
  [ -n "$values" ] && args=(-f "$values")
  echo "== ${values:-default values}"
  "$HELM" lint --strict --quiet --kube-version "$KUBE_VERSION" helm "${args[@]}"
  "$HELM" template check helm --kube-version "$KUBE_VERSION" "${args[@]}" > "$work/rendered.yaml"
  "$PY" -m yamllint -s -d "$yamllint_config" "$work/rendered.yaml"
  "$PY" - "$work" <<'PY'
import os, sys, yaml
work = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(os.path.join(work, "rendered.yaml"))) if d]
core, crds = [], []
for d in docs:
    (crds if d["apiVersion"].startswith("monitoring.coreos.com/") else core).append(d)
yaml.safe_dump_all(core, open(os.path.join(work, "core.yaml"), "w"))
required = {"ServiceMonitor": ["selector", "endpoints"], "PodMonitor": ["selector", "podMetricsEndpoints"],
            "PrometheusRule": ["groups"]}
for d in crds:
    missing = [k for k in required[d["kind"]] if not d.get("spec", {}).get(k)]
    assert not missing, f"{d['kind']} lacks {missing}"
configs = [d for d in docs if d["kind"] == "ConfigMap" and "config.toml" in d.get("data", {})]
assert configs, "no ConfigMap with config.toml"
for i, d in enumerate(configs):
    open(os.path.join(work, f"config-{i}.toml"), "w").write(d["data"]["config.toml"])
print(f"   {len(core)} resources, {len(crds)} Prometheus Operator resources, {len(configs)} configs")
PY
  "$PY" -m kubernetes_validate --strict --quiet -k "$KUBE_VERSION" "$work/core.yaml"
  for config in "$work"/config-*.toml; do
    # The pod gets credentials from Secrets through environment overrides;
    # stand-ins here (and a throwaway CA for the mounted CA file).
    env=()
    grep -q '"sasl.mechanism"' "$config" && env+=(
      KAFKA_DELAY__KAFKA__PROPERTIES__SASL_USERNAME=check
      KAFKA_DELAY__KAFKA__PROPERTIES__SASL_PASSWORD=check)
    grep -q '"ssl.ca.location"' "$config" && env+=(KAFKA_DELAY__KAFKA__PROPERTIES__SSL_CA_LOCATION="$work/ca.crt")
    env "${env[@]}" "$binary" run --check --config "$config" >/dev/null
  done
  rm -f "$work"/config-*.toml
done

echo "== a misspelt value must be rejected"
if "$HELM" template check helm --set kafka.bootstrapServer=typo >/dev/null 2>&1; then
  echo "values.schema.json accepted kafka.bootstrapServer" >&2
  exit 1
fi
echo "chart: all checks passed"
