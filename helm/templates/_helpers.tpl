{{/* Chart name. */}}
{{- define "kafka-delay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: release-chart, at most 63 characters. */}}
{{- define "kafka-delay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kafka-delay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "kafka-delay.labels" -}}
helm.sh/chart: {{ include "kafka-delay.chart" . }}
{{ include "kafka-delay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels. */}}
{{- define "kafka-delay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kafka-delay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kafka-delay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kafka-delay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kafka-delay.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* security.protocol from the sasl/tls switches. */}}
{{- define "kafka-delay.securityProtocol" -}}
{{- if and .Values.kafka.sasl.enabled .Values.kafka.tls.enabled }}SASL_SSL
{{- else if .Values.kafka.sasl.enabled }}SASL_PLAINTEXT
{{- else if .Values.kafka.tls.enabled }}SSL
{{- else }}PLAINTEXT
{{- end }}
{{- end }}

{{/* Seconds of a duration like "20s" or "2m", for terminationGracePeriodSeconds. */}}
{{- define "kafka-delay.seconds" -}}
{{- $d := . | toString }}
{{- if hasSuffix "ms" $d }}{{ div (trimSuffix "ms" $d | int) 1000 }}
{{- else if hasSuffix "s" $d }}{{ trimSuffix "s" $d | int }}
{{- else if hasSuffix "m" $d }}{{ mul (trimSuffix "m" $d | int) 60 }}
{{- else }}{{ fail (printf "service.shutdownTimeout %q: use s or m units" $d) }}
{{- end }}
{{- end }}

{{/* The service's configuration file (TOML); see config/example.toml. */}}
{{- define "kafka-delay.config" -}}
[kafka]
bootstrap_servers = {{ .Values.kafka.bootstrapServers | quote }}
group_id = {{ .Values.kafka.groupId | quote }}
[kafka.properties]
"security.protocol" = {{ include "kafka-delay.securityProtocol" . | quote }}
{{- if .Values.kafka.sasl.enabled }}
"sasl.mechanism" = {{ .Values.kafka.sasl.mechanism | quote }}
{{- end }}
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.caSecret }}
"ssl.ca.location" = "/etc/kafka-delay/tls/{{ .Values.kafka.tls.caKey }}"
{{- end }}
{{- range $k, $v := .Values.kafka.properties }}
{{ $k | quote }} = {{ $v | toString | quote }}
{{- end }}
[kafka.consumer_properties]
{{- range $k, $v := .Values.kafka.consumerProperties }}
{{ $k | quote }} = {{ $v | toString | quote }}
{{- end }}
[kafka.producer_properties]
{{- range $k, $v := .Values.kafka.producerProperties }}
{{ $k | quote }} = {{ $v | toString | quote }}
{{- end }}
[topics]
ingress = {{ .Values.topics.ingress | quote }}
dead_letter = {{ .Values.topics.deadLetter | quote }}
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
top_slots = {{ .Values.wheel.topSlots | int }}
partitions_per_slot = {{ .Values.wheel.partitionsPerSlot | int }}
replication_factor = {{ .Values.wheel.replicationFactor | int }}
{{- if .Values.wheel.minInsyncReplicas }}
min_insync_replicas = {{ .Values.wheel.minInsyncReplicas | int }}
{{- end }}
lead = {{ .Values.wheel.lead | quote }}
grace = {{ .Values.wheel.grace | quote }}
[service]
shutdown_timeout = {{ .Values.service.shutdownTimeout | quote }}
commit_interval = {{ .Values.service.commitInterval | quote }}
[http]
enabled = true
bind = "0.0.0.0:{{ .Values.metrics.port }}"
[log]
format = {{ .Values.log.format | quote }}
filter = {{ .Values.log.filter | quote }}
{{- end }}

{{/* Credentials from Secrets, as environment overrides. */}}
{{- define "kafka-delay.secretEnv" -}}
{{- if .Values.kafka.sasl.enabled }}
- name: KAFKA_DELAY__KAFKA__PROPERTIES__SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret is required when kafka.sasl.enabled" .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: KAFKA_DELAY__KAFKA__PROPERTIES__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- end }}

{{/* Volumes shared by the Deployment and the hook Job. */}}
{{- define "kafka-delay.tlsVolume" -}}
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.caSecret }}
- name: tls
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
{{- end }}
{{- end }}

{{- define "kafka-delay.tlsMount" -}}
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.caSecret }}
- name: tls
  mountPath: /etc/kafka-delay/tls
  readOnly: true
{{- end }}
{{- end }}

{{/* Container security context: non-root, read-only root, no capabilities. */}}
{{- define "kafka-delay.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
