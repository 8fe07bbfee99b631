#!/usr/bin/env bash
# Offline chart checks. For every scenario (defaults, then ci/*-values.yaml,
# each over ci/image.yaml; the production one also under a 53-character
# release name): yamllint, helm lint --strict, helm template, the rendered
# objects' checks in check_rendered.py (hooks refer only to older hooks or
# built-ins, the hook Job gets the service pods' settings and no selector
# picks its pods, names and labels valid, properties rendered exactly,
# alerts and dashboard select the monitor's job with long enough windows),
# Kubernetes schema validation (kubernetes-validate --strict), `promtool
# test rules` on the rendered alerts, and `kafka-delay run --check` on every
# rendered config.toml. Then values the chart must refuse with a clear
# message, NOTES.txt, and the Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${TOOLS:-$PWD/.tools}
KUBE_VERSION=${KUBE_VERSION:-1.33.0}
NAMESPACE=check-ns
export NAMESPACE
TOOLS=$TOOLS helm/install-tools.sh >/dev/null
HELM=${HELM:-$TOOLS/bin/helm}
PROMTOOL=${PROMTOOL:-$TOOLS/bin/promtool}
PY="$TOOLS/venv/bin/python"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
yamllint_config='{extends: default, rules: {document-start: disable, line-length: {max: 160}, indentation: {spaces: 2, indent-sequences: whatever}, truthy: {check-keys: false}}}'
# Rendered output embeds the dashboard's JSON: its lines may be long.
rendered_yamllint_config=${yamllint_config/max: 160/max: 400}

cargo build --quiet -p kafka-delay
binary=target/debug/kafka-delay
# A throwaway CA and client certificate, for configs that point at mounted files.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=check-ca \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null

"$PY" -m yamllint -s -d "$yamllint_config" helm/Chart.yaml helm/values.yaml helm/ci/

render() { # release, values files...
  local release=$1; shift
  local args=(-f helm/ci/image.yaml)
  for f in "$@"; do args+=(-f "$f"); done
  "$HELM" lint --strict --quiet --kube-version "$KUBE_VERSION" --namespace "$NAMESPACE" helm "${args[@]}" >/dev/null
  "$HELM" template "$release" helm --kube-version "$KUBE_VERSION" --namespace "$NAMESPACE" "${args[@]}" > "$work/rendered.yaml"
}

check_scenario() { # release, values files...
  local release=$1; shift
  echo "== ${*:-default values} (release $release)"
  render "$release" "$@"
  "$PY" -m yamllint -s -d "$rendered_yamllint_config" "$work/rendered.yaml"
  rm -f "$work"/config-*.toml "$work/rules.yaml"
  "$PY" helm/check_rendered.py "$work/rendered.yaml" "$work" helm/ci/image.yaml "$@"
  "$PY" -m kubernetes_validate --strict --quiet -k "$KUBE_VERSION" "$work/core.yaml"
  if [ -f "$work/rules.yaml" ]; then
    sed "s|__JOB__|$(cat "$work/job")|g" helm/alerts-test.yaml > "$work/alerts-test.yaml"
    "$PROMTOOL" check rules "$work/rules.yaml" >/dev/null
    "$PROMTOOL" test rules "$work/alerts-test.yaml" >/dev/null || {
      "$PROMTOOL" test rules "$work/alerts-test.yaml" >&2; exit 1; }
    echo "   promtool: every alert fires on its test series (job $(cat "$work/job"))"
  fi
  for config in "$work"/config-*.toml; do
    # The pod gets credentials from Secrets through environment overrides,
    # and certificates from mounted Secrets: stand-ins here.
    env=()
    if grep -q '"OAUTHBEARER"' "$config"; then
      env+=(KAFKA_DELAY__KAFKA__PROPERTIES__SASL_OAUTHBEARER_CONFIG=principal=check)
    elif grep -q '"sasl.mechanism"' "$config"; then
      env+=(KAFKA_DELAY__KAFKA__PROPERTIES__SASL_USERNAME=check
        KAFKA_DELAY__KAFKA__PROPERTIES__SASL_PASSWORD=check)
    fi
    grep -q '"ssl.ca.location"' "$config" && env+=(KAFKA_DELAY__KAFKA__PROPERTIES__SSL_CA_LOCATION="$work/ca.crt")
    grep -q '"ssl.certificate.location"' "$config" && env+=(
      KAFKA_DELAY__KAFKA__PROPERTIES__SSL_CERTIFICATE_LOCATION="$work/ca.crt"
      KAFKA_DELAY__KAFKA__PROPERTIES__SSL_KEY_LOCATION="$work/ca.key")
    env "${env[@]}" "$binary" run --check --config "$config" >/dev/null
  done
}

check_scenario check
for f in helm/ci/*-values.yaml; do check_scenario check "$f"; done
# Helm's longest release name (53 characters), with a dot.
check_scenario "a-release.name-of-fifty-three-characters-for-the-chk" helm/ci/production-values.yaml
check_scenario "a-release.name-of-fifty-three-characters-for-the-chk" helm/ci/monitoring-values.yaml

refuse() { # expected message, helm template arguments...
  local message=$1; shift
  if "$HELM" template check helm "$@" >/dev/null 2>"$work/err"; then
    echo "the chart accepted $*; expected: $message" >&2
    exit 1
  fi
  grep -qF "$message" "$work/err" || {
    echo "the chart refused $* without naming \"$message\":" >&2; cat "$work/err" >&2; exit 1; }
  echo "   refused: $* ($message)"
}
echo "== values the chart must refuse, naming the fix"
refuse "additional properties 'bootstrapServer' not allowed" -f helm/ci/image.yaml --set kafka.bootstrapServer=typo
refuse "image.repository is required"
refuse "enable one" -f helm/ci/image.yaml --set metrics.serviceMonitor.enabled=true --set metrics.podMonitor.enabled=true
refuse "autoscaling.minReplicas (5) is above autoscaling.maxReplicas (2)" -f helm/ci/image.yaml \
  --set autoscaling.enabled=true --set autoscaling.minReplicas=5 --set autoscaling.maxReplicas=2
refuse "kafka.sasl.existingSecret is required" -f helm/ci/image.yaml --set kafka.sasl.enabled=true
refuse "set metrics.prometheusRule.job" -f helm/ci/image.yaml --set metrics.prometheusRule.enabled=true
refuse "at '/kafka/properties/linger.ms': got number" -f helm/ci/image.yaml --set-json 'kafka.properties={"linger.ms": 0.5}'

echo "== NOTES.txt"
notes() { "$HELM" install check helm --dry-run=client --namespace "$NAMESPACE" -f helm/ci/image.yaml "$@" | sed -n '/^NOTES:/,$p'; }
has() { grep -qF -- "$1" "$work/notes" || { echo "NOTES.txt lacks: $1" >&2; cat "$work/notes" >&2; exit 1; }; }
notes > "$work/notes"
has "--namespace $NAMESPACE logs job/check-kafka-delay-topics"
has "--namespace $NAMESPACE port-forward svc/check-kafka-delay-metrics"
has "(3 instances)"
has "WARNING: kafka.bootstrapServers is the chart's default"
notes -f helm/ci/production-values.yaml > "$work/notes"
has "3 to 12 instances, scaled on CPU"
if grep -q "WARNING" "$work/notes"; then echo "NOTES.txt warns about the production values" >&2; exit 1; fi
notes --set kafka.sasl.enabled=true --set kafka.sasl.existingSecret=s > "$work/notes"
has "WARNING: SASL without TLS"
echo "   namespace in every command, replica text follows the HPA, warnings for defaults and SASL without TLS"

echo "== Dockerfile"
"$PY" helm/check_dockerfile.py Dockerfile Cargo.toml
echo "chart: all checks passed"
