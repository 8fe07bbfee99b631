{{/* Chart name. */}}
{{- define "kafka-delay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: release-chart, at most 63 characters, dots turned into
dashes (a release name may hold dots; Service names may not).
*/}}
{{- define "kafka-delay.fullname" -}}
{{- include "kafka-delay.nameWithSuffix" (dict "ctx" . "suffix" "") }}
{{- end }}

{{/*
Fully qualified name with a suffix ("-metrics", "-topics", ...): the base is
cut first so that the suffix survives and names stay distinct and within
63 characters for any release name Helm accepts (53 characters).
Call with (dict "ctx" $ "suffix" "-topics").
*/}}
{{- define "kafka-delay.nameWithSuffix" -}}
{{- $ctx := .ctx }}
{{- $base := "" }}
{{- if $ctx.Values.fullnameOverride }}
{{- $base = $ctx.Values.fullnameOverride }}
{{- else }}
{{- $name := default $ctx.Chart.Name $ctx.Values.nameOverride }}
{{- if contains $name $ctx.Release.Name }}
{{- $base = $ctx.Release.Name }}
{{- else }}
{{- $base = printf "%s-%s" $ctx.Release.Name $name }}
{{- end }}
{{- end }}
{{- $base = $base | replace "." "-" | lower }}
{{- printf "%s%s" ($base | trunc (int (sub 63 (len .suffix))) | trimSuffix "-") .suffix }}
{{- end }}

{{- define "kafka-delay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A valid label value from any string: characters outside [A-Za-z0-9._-]
become "_", at most 63 characters, alphanumeric at both ends
(a digest-style tag "sha256:..." becomes "sha256_...").
*/}}
{{- define "kafka-delay.labelValue" -}}
{{- regexReplaceAll "[^A-Za-z0-9._-]" (toString .) "_" | trunc 63 | trimAll "._-" }}
{{- end }}

{{/* Common labels of every object. */}}
{{- define "kafka-delay.labels" -}}
helm.sh/chart: {{ include "kafka-delay.chart" . }}
app.kubernetes.io/name: {{ include "kafka-delay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "kafka-delay.labelValue" (.Values.image.tag | default .Chart.AppVersion) | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of the service pods (Deployment, Service, PDB, monitors,
NetworkPolicy, anti-affinity). The component label keeps the hook Job's
pods (component "topics") out of every selector.
*/}}
{{- define "kafka-delay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kafka-delay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: service
{{- end }}

{{/* Labels of the hook Job's pods. */}}
{{- define "kafka-delay.topicsLabels" -}}
app.kubernetes.io/name: {{ include "kafka-delay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: topics
{{- end }}

{{- define "kafka-delay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kafka-delay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: repository[:tag][@digest]; the repository is required. */}}
{{- define "kafka-delay.image" -}}
{{- $repository := required "image.repository is required: build the image with the repository's Dockerfile, push it, and set image.repository (e.g. --set image.repository=registry.example.com/kafka-delay)" .Values.image.repository }}
{{- if .Values.image.digest }}
{{- if .Values.image.tag }}{{ $repository }}:{{ .Values.image.tag }}@{{ .Values.image.digest }}
{{- else }}{{ $repository }}@{{ .Values.image.digest }}
{{- end }}
{{- else }}{{ $repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/*
Seconds of a duration as the service reads it ("20s", "1m30s", "1500ms",
"2m 5s"), rounded down, for terminationGracePeriodSeconds.
*/}}
{{- define "kafka-delay.seconds" -}}
{{- $d := . | toString }}
{{- $ms := 0 }}
{{- range $part := regexFindAll "[0-9]+ *(ms|s|m|h|d)" $d -1 }}
{{- $n := regexFind "^[0-9]+" $part | int }}
{{- $unit := regexFind "(ms|s|m|h|d)$" $part }}
{{- $ms = add $ms (mul $n (get (dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000) $unit)) }}
{{- end }}
{{- div $ms 1000 }}
{{- end }}

{{/*
A librdkafka property value as a TOML string. YAML numbers arrive as
float64; an integral one renders as an integer ("2000000", never "2e+06").
*/}}
{{- define "kafka-delay.property" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}{{ int64 . | toString | quote }}
{{- else }}{{ toString . | quote }}
{{- end }}
{{- end }}

{{/* A [table] of librdkafka properties from a map, keys sorted. */}}
{{- define "kafka-delay.propertyTable" -}}
{{- range $k, $v := . }}
{{ $k | quote }} = {{ include "kafka-delay.property" $v }}
{{- end }}
{{- end }}

{{/*
Client properties for every client: the ones derived from the sasl/tls
switches, then kafka.properties over them (one key, one line).
*/}}
{{- define "kafka-delay.clientProperties" -}}
{{- $p := dict }}
{{- $sasl := .Values.kafka.sasl }}
{{- $tls := .Values.kafka.tls }}
{{- $protocol := "PLAINTEXT" }}
{{- if and $sasl.enabled $tls.enabled }}{{ $protocol = "SASL_SSL" }}
{{- else if $sasl.enabled }}{{ $protocol = "SASL_PLAINTEXT" }}
{{- else if $tls.enabled }}{{ $protocol = "SSL" }}
{{- end }}
{{- $_ := set $p "security.protocol" $protocol }}
{{- if $sasl.enabled }}
{{- $_ := set $p "sasl.mechanism" $sasl.mechanism }}
{{- end }}
{{- if and $tls.enabled $tls.caSecret }}
{{- $_ := set $p "ssl.ca.location" (printf "/etc/kafka-delay/tls/%s" $tls.caKey) }}
{{- end }}
{{- if and $tls.enabled $tls.clientCertSecret }}
{{- $_ := set $p "ssl.certificate.location" (printf "/etc/kafka-delay/tls-client/%s" $tls.clientCertKey) }}
{{- $_ := set $p "ssl.key.location" (printf "/etc/kafka-delay/tls-client/%s" $tls.clientKeyKey) }}
{{- end }}
{{- range $k, $v := .Values.kafka.properties }}
{{- $_ := set $p $k $v }}
{{- end }}
{{- include "kafka-delay.propertyTable" $p }}
{{- end }}

{{/* The service's configuration file (TOML); see config/example.toml. */}}
{{- define "kafka-delay.config" -}}
{{- $s := .Values.service -}}
[kafka]
bootstrap_servers = {{ .Values.kafka.bootstrapServers | quote }}
group_id = {{ .Values.kafka.groupId | quote }}
[kafka.properties]
{{- include "kafka-delay.clientProperties" . }}
[kafka.consumer_properties]
{{- include "kafka-delay.propertyTable" .Values.kafka.consumerProperties }}
[kafka.producer_properties]
{{- include "kafka-delay.propertyTable" .Values.kafka.producerProperties }}
[topics]
ingress = {{ .Values.topics.ingress | quote }}
dead_letter = {{ .Values.topics.deadLetter | quote }}
cancel = {{ .Values.topics.cancel | quote }}
clock = {{ .Values.topics.clock | quote }}
tier_prefix = {{ .Values.topics.tierPrefix | quote }}
{{- with .Values.topics.defaultTarget }}
default_target = {{ . | quote }}
{{- end }}
{{- with .Values.topics.allowedTargets }}
allowed_targets = {{ . | quote }}
{{- end }}
[wheel]
ticks = [{{ range $i, $t := .Values.wheel.ticks }}{{ if $i }}, {{ end }}{{ $t | quote }}{{ end }}]
max_delay = {{ .Values.wheel.maxDelay | quote }}
top_slots = {{ .Values.wheel.topSlots | int64 }}
partitions_per_slot = {{ .Values.wheel.partitionsPerSlot | int64 }}
replication_factor = {{ .Values.wheel.replicationFactor | int64 }}
{{- if .Values.wheel.minInsyncReplicas }}
min_insync_replicas = {{ .Values.wheel.minInsyncReplicas | int64 }}
{{- end }}
lead = {{ .Values.wheel.lead | quote }}
grace = {{ .Values.wheel.grace | quote }}
max_clock_skew = {{ .Values.wheel.maxClockSkew | quote }}
clock = {{ .Values.wheel.clock | quote }}
slot_order = {{ .Values.wheel.slotOrder | quote }}
[service]
shutdown_timeout = {{ $s.shutdownTimeout | quote }}
commit_interval = {{ $s.commitInterval | quote }}
watch_interval = {{ $s.watchInterval | quote }}
delivery_timeout = {{ $s.deliveryTimeout | quote }}
startup_timeout = {{ $s.startupTimeout | quote }}
max_in_flight = {{ $s.maxInFlight | int64 }}
max_in_flight_bytes = {{ $s.maxInFlightBytes | int64 }}
max_in_flight_per_partition = {{ $s.maxInFlightPerPartition | int64 }}
max_timer_records = {{ $s.maxTimerRecords | int64 }}
max_timer_bytes = {{ $s.maxTimerBytes | int64 }}
max_cancellations = {{ $s.maxCancellations | int64 }}
[delivery]
mode = {{ .Values.delivery.mode | quote }}
transaction_max_records = {{ .Values.delivery.transactionMaxRecords | int64 }}
transaction_interval = {{ .Values.delivery.transactionInterval | quote }}
transaction_timeout = {{ .Values.delivery.transactionTimeout | quote }}
[http]
enabled = true
bind = "0.0.0.0:{{ .Values.metrics.port }}"
[log]
format = {{ .Values.log.format | quote }}
filter = {{ .Values.log.filter | quote }}
{{- end }}

{{/*
Credentials from Secrets, as environment overrides. PLAIN and SCRAM: user
name and password. OAUTHBEARER: the passwordKey's value becomes
sasl.oauthbearer.config (librdkafka's token settings; OIDC token retrieval
needs a librdkafka built with libcurl, which the image is not).
*/}}
{{- define "kafka-delay.secretEnv" -}}
{{- $sasl := .Values.kafka.sasl }}
{{- if $sasl.enabled }}
{{- $secret := required "kafka.sasl.existingSecret is required when kafka.sasl.enabled: name a Secret holding the credentials" $sasl.existingSecret }}
{{- if ne $sasl.mechanism "OAUTHBEARER" }}
- name: KAFKA_DELAY__KAFKA__PROPERTIES__SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $sasl.usernameKey }}
- name: KAFKA_DELAY__KAFKA__PROPERTIES__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $sasl.passwordKey }}
{{- else }}
- name: KAFKA_DELAY__KAFKA__PROPERTIES__SASL_OAUTHBEARER_CONFIG
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $sasl.passwordKey }}
{{- end }}
{{- end }}
{{- end }}

{{/* The container's environment: credentials, then extraEnv. */}}
{{- define "kafka-delay.env" -}}
{{- with (include "kafka-delay.secretEnv" .) }}
{{ . | trim }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes of the service pods and the hook Job; configMap names the config. */}}
{{- define "kafka-delay.volumes" -}}
{{- $tls := .ctx.Values.kafka.tls }}
- name: config
  configMap:
    name: {{ .configMap }}
{{- if and $tls.enabled $tls.caSecret }}
- name: tls
  secret:
    secretName: {{ $tls.caSecret }}
{{- end }}
{{- if and $tls.enabled $tls.clientCertSecret }}
- name: tls-client
  secret:
    secretName: {{ $tls.clientCertSecret }}
    defaultMode: 0400
{{- end }}
{{- with .ctx.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kafka-delay.volumeMounts" -}}
{{- $tls := .Values.kafka.tls }}
- name: config
  mountPath: /etc/kafka-delay/config.toml
  subPath: config.toml
  readOnly: true
{{- if and $tls.enabled $tls.caSecret }}
- name: tls
  mountPath: /etc/kafka-delay/tls
  readOnly: true
{{- end }}
{{- if and $tls.enabled $tls.clientCertSecret }}
- name: tls-client
  mountPath: /etc/kafka-delay/tls-client
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The container fields the service and the hook Job share: image, environment,
security context, mounts. Call with (dict "ctx" $ "name" "..." "args" (list ...)).
*/}}
{{- define "kafka-delay.container" -}}
{{- $ctx := .ctx }}
- name: {{ .name }}
  image: {{ include "kafka-delay.image" $ctx | quote }}
  imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
  args: [{{ range $i, $a := .args }}{{ if $i }}, {{ end }}{{ $a | quote }}{{ end }}]
  {{- with (include "kafka-delay.env" $ctx) }}
  env:
    {{- . | trim | nindent 4 }}
  {{- end }}
  {{- with $ctx.Values.extraEnvFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $ctx.Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    {{- include "kafka-delay.volumeMounts" $ctx | trim | nindent 4 }}
{{- end }}

{{/*
Pod fields the service pods and the hook Job share: pull secrets, priority,
security context, scheduling. Call with (dict "ctx" $ "nodeSelector" ...
"tolerations" ... "affinity" ...).
*/}}
{{- define "kafka-delay.podSpec" -}}
{{- $ctx := .ctx }}
automountServiceAccountToken: false
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $ctx.Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The job label of the scraped series: the ServiceMonitor's (the Service's
name) or the PodMonitor's (namespace/name), or metrics.prometheusRule.job.
*/}}
{{- define "kafka-delay.job" -}}
{{- $m := .Values.metrics }}
{{- if $m.prometheusRule.job }}{{ $m.prometheusRule.job }}
{{- else if $m.serviceMonitor.enabled }}{{ include "kafka-delay.nameWithSuffix" (dict "ctx" . "suffix" "-metrics") }}
{{- else if $m.podMonitor.enabled }}{{ .Release.Namespace }}/{{ include "kafka-delay.fullname" . }}
{{- else }}{{ fail "metrics.prometheusRule needs the job label of the scraped series: enable metrics.serviceMonitor or metrics.podMonitor, or set metrics.prometheusRule.job" }}
{{- end }}
{{- end }}

{{/* Checks across values that the schema cannot express. */}}
{{- define "kafka-delay.validate" -}}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled }}
{{- fail "metrics.serviceMonitor and metrics.podMonitor are both enabled: each scrapes every pod, so every series would be counted twice; enable one" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- end }}

{{/*
A rate() window of at least 4 scrape intervals of the enabled monitor and
at least `min` seconds, e.g. "120s". Call with (dict "ctx" $ "min" 120).
*/}}
{{- define "kafka-delay.rateWindow" -}}
{{- $m := .ctx.Values.metrics }}
{{- $interval := ternary $m.podMonitor.interval $m.serviceMonitor.interval $m.podMonitor.enabled }}
{{- printf "%ds" (max .min (mul 4 (include "kafka-delay.seconds" $interval | int))) }}
{{- end }}
