{{/* Names: <release>-ember unless the release is already called ember. */}}
{{- define "ember.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ember.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ember.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ember.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ember.secretName" -}}
{{- .Values.fleet.existingSecret | default (printf "%s-fleet" (include "ember.fullname" .)) -}}
{{- end -}}

{{- define "ember.secretKey" -}}
{{- if .Values.fleet.existingSecret -}}{{ .Values.fleet.existingSecretKey }}{{- else -}}join-token{{- end -}}
{{- end -}}

{{- define "ember.redisUrl" -}}
{{- if .Values.redis.enabled -}}
redis://{{ include "ember.fullname" . }}-redis:6379/0
{{- else -}}
{{- required "redis.url is required when redis.enabled is false" .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{/* The env every ember container gets: where it listens, its home, the registry and the token. */}}
{{- define "ember.commonEnv" -}}
- name: EMBER_HOST
  value: {{ printf "0.0.0.0:%v" .Values.port | quote }}
- name: EMBER_HOME
  value: /data
- name: EMBER_FLEET_JOIN
  value: {{ include "ember.redisUrl" . | quote }}
- name: EMBER_FLEET_TTL
  value: {{ .Values.fleet.ttl | quote }}
- name: EMBER_FLEET_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "ember.secretName" . }}
      key: {{ include "ember.secretKey" . }}
{{- end -}}

{{- define "ember.probes" -}}
startupProbe:
  httpGet: {path: /health, port: http}
  periodSeconds: 5
  failureThreshold: 60
readinessProbe:
  httpGet: {path: /health, port: http}
  periodSeconds: 10
livenessProbe:
  httpGet: {path: /health, port: http}
  periodSeconds: 20
  failureThreshold: 3
{{- end -}}
