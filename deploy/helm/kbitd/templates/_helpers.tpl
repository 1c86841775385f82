{{/* Names and labels shared by every template. */}}
{{- define "kbitd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kbitd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "kbitd.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "kbitd.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kbitd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kbitd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kbitd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kbitd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kbitd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kbitd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kbitd.adminSecretName" -}}
{{- default (printf "%s-admin" (include "kbitd.fullname" .)) .Values.adminToken.existingSecret -}}
{{- end -}}

{{- define "kbitd.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "kbitd.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{- define "kbitd.hasAdminToken" -}}
{{- if or .Values.adminToken.value .Values.adminToken.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* The health service the readiness probe asks about (see values.yaml, probes.readiness). */}}
{{- define "kbitd.readinessService" -}}
{{- if .Values.probes.readiness.service -}}
{{- .Values.probes.readiness.service -}}
{{- else if eq (len (default (list) .Values.config.models)) 1 -}}
{{- (index .Values.config.models 0).name -}}
{{- else -}}
kbitd.v1.InferenceService
{{- end -}}
{{- end -}}

{{/* One probe: the kubelet's gRPC probe in plaintext, `kbitctl health` in the pod under TLS. */}}
{{- define "kbitd.probe" -}}
{{- $root := index . 0 -}}
{{- $service := index . 1 -}}
{{- $p := index . 2 -}}
{{- if $root.Values.tls.enabled }}
{{- if $root.Values.tls.clientCA }}
{{- fail "tls.clientCA: the in-pod probe (kbitctl health) cannot present a client certificate yet" }}
{{- end }}
exec:
  command:
    - /usr/local/bin/kbitctl
    - --address=localhost:{{ $root.Values.service.grpcPort }}
    - --tls_ca=/etc/kbitd/tls/ca.crt
    - --timeout={{ default 5 $p.timeoutSeconds }}
    - health
    {{- if $service }}
    - {{ $service | quote }}
    {{- end }}
{{- else }}
grpc:
  port: {{ $root.Values.service.grpcPort }}
  service: {{ $service | quote }}
{{- end }}
{{- range $k, $v := $p }}
{{- if ne $k "service" }}
{{ $k }}: {{ $v }}
{{- end }}
{{- end }}
{{- end -}}
