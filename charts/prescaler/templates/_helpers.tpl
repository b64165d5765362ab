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
