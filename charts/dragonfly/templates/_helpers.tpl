{{- define "dragonfly.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dragonfly.operatorName" -}}
{{- printf "%s-operator" (include "dragonfly.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dragonfly.selectorLabels" -}}
app.kubernetes.io/name: dragonfly-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dragonfly.labels" -}}
{{ include "dragonfly.selectorLabels" . }}
app.kubernetes.io/part-of: dragonfly
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "dragonfly.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dragonfly.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /* repository@digest when image.digest is set, else repository:tag. */ -}}
{{- define "dragonfly.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- /* The operator image is Linux-only: kubernetes.io/os=linux plus the user's selector. */ -}}
{{- define "dragonfly.nodeSelector" -}}
{{- toYaml (merge (dict "kubernetes.io/os" "linux") (.Values.nodeSelector | default dict)) -}}
{{- end -}}
