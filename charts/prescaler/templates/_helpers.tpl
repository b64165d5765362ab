{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "prescaler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: the release name, suffixed with the chart name unless it already contains it. */}}
{{- define "prescaler.fullname" -}}
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

{{- define "prescaler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "prescaler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "prescaler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "prescaler.labels" -}}
helm.sh/chart: {{ include "prescaler.chart" . }}
{{ include "prescaler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: prescaler
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "prescaler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "prescaler.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "prescaler.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Name of the Secret holding the database URL: the user's, or the one the chart creates. */}}
{{- define "prescaler.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- printf "%s-database" (include "prescaler.fullname" .) }}
{{- end }}
{{- end }}

{{- define "prescaler.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.secretKey }}
{{- else -}}
database-url
{{- end }}
{{- end }}

{{/* The kopf peering name: one per release, so separate releases (shards) never block each other. */}}
{{- define "prescaler.peeringName" -}}
{{- include "prescaler.fullname" . }}
{{- end }}

{{/* Cross-field checks the JSON schema cannot express with a readable message. */}}
{{- define "prescaler.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) }}
{{- fail "replicaCount > 1 requires peering.enabled: true (otherwise several operators would scale the same targets)" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not (kindIs "invalid" .Values.peering.priority)) }}
{{- fail "peering.priority must stay unset when replicaCount > 1: replicas with equal priorities all pause" }}
{{- end }}
{{- if not (or .Values.database.existingSecret .Values.database.url) }}
{{- fail "database: set database.existingSecret (a Secret with the connection URL) or database.url" }}
{{- end }}
{{- if not .Values.sources }}
{{- fail "sources: define at least one data source (e.g. sources.default)" }}
{{- end }}
{{- end }}

{{/* The collector: its own name label, so the operator's selectors and Service never match its pods. */}}
{{- define "prescaler.collectorName" -}}
{{- printf "%s-collector" (include "prescaler.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "prescaler.collectorSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-collector" (include "prescaler.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: collector
{{- end }}

{{- define "prescaler.collectorLabels" -}}
helm.sh/chart: {{ include "prescaler.chart" . }}
{{ include "prescaler.collectorSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: prescaler
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "prescaler.collectorServiceAccountName" -}}
{{- if .Values.collector.serviceAccount.create }}
{{- default (include "prescaler.collectorName" .) .Values.collector.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.collector.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "prescaler.collectorLeaseName" -}}
{{- default (include "prescaler.collectorName" .) .Values.collector.leaderElection.leaseName }}
{{- end }}

{{/* Where a feed's credential files are mounted (one projected volume per feed that has any). */}}
{{- define "prescaler.feedDir" -}}
/var/run/secrets/prescaler/feeds/{{ .name }}
{{- end }}

{{/*
The feeds as the config file has them: the values' keys verbatim, except the Secret references, which become
paths of the files the collector Deployment mounts from them. Nothing secret is ever written here.
*/}}
{{- define "prescaler.collectorFeeds" -}}
{{- $feeds := list }}
{{- range .Values.collector.feeds }}
{{- $dir := include "prescaler.feedDir" . }}
{{- $out := dict "name" .name "source" (default "default" .source) }}
{{- with .prometheus }}
{{- $p := omit . "bearerToken" "basicAuth" "caBundle" }}
{{- if .bearerToken }}
{{- $_ := set $p "bearer_token_file" (printf "%s/bearer-token" $dir) }}
{{- end }}
{{- if .basicAuth }}
{{- $_ := set $p "basic_auth" (dict "username" .basicAuth.username "password_file" (printf "%s/password" $dir)) }}
{{- end }}
{{- if .caBundle }}
{{- $_ := set $p "ca_file" (printf "%s/ca.crt" $dir) }}
{{- end }}
{{- $_ := set $out "prometheus" $p }}
{{- end }}
{{- with .kafka }}
{{- $k := omit . "tls" "sasl" }}
{{- if and .tls .tls.enabled }}
{{- $t := dict }}
{{- if .tls.caBundle }}
{{- $_ := set $t "ca_file" (printf "%s/ca.crt" $dir) }}
{{- end }}
{{- if .tls.clientCert }}
{{- $_ := set $t "cert_file" (printf "%s/tls.crt" $dir) }}
{{- $_ := set $t "key_file" (printf "%s/tls.key" $dir) }}
{{- end }}
{{- if .tls.keyPassword }}
{{- $_ := set $t "key_password_file" (printf "%s/key-password" $dir) }}
{{- end }}
{{- $_ := set $k "tls" $t }}
{{- end }}
{{- if .sasl }}
{{- $_ := set $k "sasl" (dict "mechanism" (default "SCRAM-SHA-512" .sasl.mechanism) "username" .sasl.username "password_file" (printf "%s/sasl-password" $dir)) }}
{{- end }}
{{- $_ := set $out "kafka" $k }}
{{- end }}
{{- $feeds = append $feeds $out }}
{{- end }}
{{- toYaml $feeds }}
{{- end }}

{{/* One projected-volume source: a Secret key ({existingSecret, key}) or a ConfigMap key ({configMap, key}). */}}
{{- define "prescaler.fileSource" -}}
{{- if .ref.configMap }}
- configMap:
    name: {{ .ref.configMap }}
    items:
      - key: {{ .ref.key }}
        path: {{ .path }}
{{- else }}
- secret:
    name: {{ .ref.existingSecret }}
    items:
      - key: {{ .ref.key }}
        path: {{ .path }}
{{- end }}
{{- end }}

{{/* The projected sources of one feed's credential files (empty when it has none). */}}
{{- define "prescaler.feedFileSources" -}}
{{- with .prometheus }}
{{- with .bearerToken }}{{ include "prescaler.fileSource" (dict "ref" . "path" "bearer-token") }}{{ end }}
{{- with .basicAuth }}{{ include "prescaler.fileSource" (dict "ref" . "path" "password") }}{{ end }}
{{- with .caBundle }}{{ include "prescaler.fileSource" (dict "ref" . "path" "ca.crt") }}{{ end }}
{{- end }}
{{- with .kafka }}
{{- if and .tls .tls.enabled }}
{{- with .tls.caBundle }}{{ include "prescaler.fileSource" (dict "ref" . "path" "ca.crt") }}{{ end }}
{{- with .tls.clientCert }}
- secret:
    name: {{ .existingSecret }}
    items:
      - key: {{ default "tls.crt" .certKey }}
        path: tls.crt
      - key: {{ default "tls.key" .keyKey }}
        path: tls.key
{{- end }}
{{- with .tls.keyPassword }}{{ include "prescaler.fileSource" (dict "ref" . "path" "key-password") }}{{ end }}
{{- end }}
{{- with .sasl }}{{ include "prescaler.fileSource" (dict "ref" . "path" "sasl-password") }}{{ end }}
{{- end }}
{{- end }}

{{/* Cross-field checks of the collector values. */}}
{{- define "prescaler.validateCollector" -}}
{{- if .Values.collector.enabled }}
{{- if not .Values.collector.feeds }}
{{- fail "collector.enabled needs at least one feed in collector.feeds" }}
{{- end }}
{{- if and (gt (int .Values.collector.replicaCount) 1) (not .Values.collector.leaderElection.enabled) }}
{{- fail "collector.replicaCount > 1 requires collector.leaderElection.enabled: true (otherwise replicas would write the Prometheus feeds twice)" }}
{{- end }}
{{- $names := dict }}
{{- range .Values.collector.feeds }}
{{- if hasKey $names .name }}
{{- fail (printf "collector.feeds: the name %q is used by two feeds" .name) }}
{{- end }}
{{- $_ := set $names .name true }}
{{- $source := default "default" .source }}
{{- if not (hasKey $.Values.sources $source) }}
{{- fail (printf "collector.feeds[%s].source: unknown source %q; the sources are %s" .name $source (keys $.Values.sources | sortAlpha | join ", ")) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
