{{/* Name of the chart, or nameOverride. */}}
{{- define "mess-exchange.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects, at most 63 characters (DNS labels). */}}
{{- define "mess-exchange.fullname" -}}
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

{{- define "mess-exchange.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mess-exchange.labels" -}}
helm.sh/chart: {{ include "mess-exchange.chart" . }}
{{ include "mess-exchange.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mess-exchange.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mess-exchange.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mess-exchange.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mess-exchange.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mess-exchange.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (toString (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}
{{- end }}

{{/* Whether the chart creates the Secret of secret environment variables. */}}
{{- define "mess-exchange.createEnvSecret" -}}
{{- if and (not .Values.existingSecret) (or .Values.registrationToken .Values.secretEnv) }}true{{ end }}
{{- end }}

{{/* The Secret loaded with envFrom, if any. */}}
{{- define "mess-exchange.envSecretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if include "mess-exchange.createEnvSecret" . }}
{{- printf "%s-env" (include "mess-exchange.fullname" .) }}
{{- end }}
{{- end }}

{{- define "mess-exchange.s3SecretName" -}}
{{- default (printf "%s-s3" (include "mess-exchange.fullname" .)) .Values.storage.s3.existingSecret }}
{{- end }}

{{- define "mess-exchange.claimName" -}}
{{- default (printf "%s-data" (include "mess-exchange.fullname" .)) .Values.storage.filesystem.persistence.existingClaim }}
{{- end }}

{{/* Fails the render on settings messd cannot run with. */}}
{{- define "mess-exchange.validate" -}}
{{- $s := .Values.storage }}
{{- if not (has $s.type (list "filesystem" "s3")) }}
{{- fail (printf "storage.type must be filesystem or s3, not %q" $s.type) }}
{{- end }}
{{- if eq $s.type "s3" }}
{{- if not $s.s3.bucket }}
{{- fail "storage.s3.bucket is required with storage.type=s3" }}
{{- end }}
{{- if and (not $s.s3.existingSecret) (or (not $s.s3.accessKey) (not $s.s3.secretKey)) }}
{{- fail "storage.type=s3 needs storage.s3.existingSecret, or storage.s3.accessKey and storage.s3.secretKey" }}
{{- end }}
{{- end }}
{{- end }}
