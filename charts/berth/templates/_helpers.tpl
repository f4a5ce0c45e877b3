{{/*
Names and labels. Only text/template, sprig and helm's include/toYaml/
toJson/required are used here (tests/render.go renders these templates
with the same libraries when helm is not installed).
*/}}

{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "berth.fullname" -}}
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

{{- define "berth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "berth.labels" -}}
helm.sh/chart: {{ include "berth.chart" . }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "berth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "berth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "berth.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The ConfigMap key of a registry's hosts.toml (keys cannot hold ':'). */}}
{{- define "berth.hostsKey" -}}
{{- printf "hosts.%s.toml" (replace ":" "_" .) }}
{{- end }}

{{/*
berth's config.toml. Strings and string arrays go through toJson: a JSON
string or array of strings is also a valid TOML one. No blank lines: helm's
indent would leave trailing spaces in the ConfigMap.
*/}}
{{- define "berth.configToml" -}}
# berth configuration, rendered by the berth Helm chart (release {{ .Release.Name }}).
# `berth config default` on a node prints every setting with its meaning.
listen = "/run/berth/berth.sock"
root = "/var/lib/berth"
state = "/run/berth"
log_level = {{ .Values.logLevel | toJson }}
log_format = {{ .Values.logFormat | toJson }}
# Image pulls; registry mirrors are certs.d/<registry>/hosts.toml files.
[image]
registry_config_dir = "/etc/berth/certs.d"
pinned_images = {{ .Values.images.pinned | default list | toJson }}
max_concurrent_layers = {{ .Values.images.maxConcurrentLayers | int }}
# Must match kubelet's cgroupDriver.
[runtime]
cgroup_driver = {{ .Values.cgroupDriver | toJson }}
# Pod networking (CNI).
[network]
cni_conf_dir = {{ .Values.cni.confDir | toJson }}
cni_bin_dirs = {{ .Values.cni.binDirs | toJson }}
plugin_timeout_seconds = {{ .Values.cni.pluginTimeoutSeconds | int }}
# Prometheus /metrics and /healthz.
[metrics]
enabled = {{ .Values.metrics.enabled }}
{{- $addr := .Values.metrics.address }}
{{- if contains ":" $addr }}
{{- $addr = printf "[%s]" $addr }}
{{- end }}
listen = {{ printf "%s:%d" $addr (.Values.metrics.port | int) | toJson }}
{{- end }}

{{/* One registry's hosts.toml; the argument is (list host settings). */}}
{{- define "berth.hostsToml" -}}
{{- $host := index . 0 }}
{{- $cfg := index . 1 | default dict -}}
# {{ $host }}: rendered by the berth Helm chart (containerd's hosts.toml format).
{{- with $cfg.server }}
server = {{ . | toJson }}
{{- end }}
{{- range $i, $m := $cfg.mirrors }}
{{- with $m }}
# Mirror {{ add1 $i }}, tried in order before the server.
[host.{{ .url | toJson }}]
  capabilities = {{ .capabilities | default (list "pull" "resolve") | toJson }}
{{- if hasKey . "skipVerify" }}
  skip_verify = {{ .skipVerify }}
{{- end }}
{{- with .ca }}
  ca = {{ . | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
