{{/* Names and labels shared by every template. */}}
{{- define "kube-sft.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kube-sft.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "kube-sft.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kube-sft.labels" -}}
app.kubernetes.io/name: {{ include "kube-sft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: kube-sft
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kube-sft.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kube-sft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kube-sft.serviceAccountName" -}}
{{- default (include "kube-sft.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* true when a Prometheus Operator object should be rendered: enabled: true, or auto and the API exists. */}}
{{- define "kube-sft.monitoring" -}}
{{- $setting := toString .setting -}}
{{- if or (eq $setting "true") (and (eq $setting "auto") (.root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) -}}
true
{{- end -}}
{{- end -}}
