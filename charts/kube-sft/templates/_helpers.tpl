{{/* Names and labels shared by every template. */}}
{{- define "kube-sft.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kube-sft.labels" -}}
app.kubernetes.io/name: kube-sft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kube-sft.selectorLabels" -}}
app.kubernetes.io/name: kube-sft
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
