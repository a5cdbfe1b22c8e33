{{/* Names and labels. */}}
{{- define "capi-consumer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "capi-consumer.fullname" -}}
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

{{- define "capi-consumer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "capi-consumer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "capi-consumer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "capi-consumer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: consumer
{{- end }}

{{/* Where the configuration ConfigMap is mounted; config.yaml and the schemas sit in it. */}}
{{- define "capi-consumer.configDir" -}}/etc/capi-consumer{{- end }}

{{/* The metrics port of the service's configuration (config.metrics.port, default 9108), checked. */}}
{{- define "capi-consumer.metricsPort" -}}
{{- $metrics := .Values.config.metrics | default dict }}
{{- if not (dig "enabled" true $metrics) }}
{{- fail "config.metrics.enabled must stay true: the probes (/healthz, /readyz), the Service and the monitors use the metrics endpoint" }}
{{- end }}
{{- $host := toString (dig "host" "0.0.0.0" $metrics) }}
{{- if or (hasPrefix "127." $host) (eq $host "localhost") (eq $host "::1") }}
{{- fail (printf "config.metrics.host %s is a loopback address: the kubelet's probes and Prometheus reach the pod's address (use 0.0.0.0)" $host) }}
{{- end }}
{{- $port := int (dig "port" 9108 $metrics) }}
{{- if or (lt $port 1) (gt $port 65535) }}
{{- fail (printf "config.metrics.port must be a fixed port 1..65535 (got %d): the probes and the Service need it" $port) }}
{{- end }}
{{- $port }}
{{- end }}

{{/* terminationGracePeriodSeconds: the drain deadline (config.shutdown.drain_deadline_s, default 30,
     rounded up) plus terminationGraceExtraSeconds for the final commit and the clients' close. */}}
{{- define "capi-consumer.terminationGracePeriodSeconds" -}}
{{- $drain := dig "shutdown" "drain_deadline_s" 30 .Values.config | float64 }}
{{- add (ceil $drain | int) (int .Values.terminationGraceExtraSeconds) }}
{{- end }}

{{/* Static membership as configured (config.kafka.static_membership, default false). */}}
{{- define "capi-consumer.staticMembership" -}}
{{- if dig "kafka" "static_membership" false .Values.config }}true{{ end }}
{{- end }}

{{/* The environment variable holding the static member id (config.kafka.instance_id_env). */}}
{{- define "capi-consumer.instanceIdEnv" -}}
{{- dig "kafka" "instance_id_env" "POD_NAME" .Values.config }}
{{- end }}

{{/* The workload kind, checked against static membership. */}}
{{- define "capi-consumer.kind" -}}
{{- $kind := .Values.workloadKind }}
{{- if not (has $kind (list "StatefulSet" "Deployment")) }}
{{- fail (printf "workloadKind must be StatefulSet or Deployment, got %v" $kind) }}
{{- end }}
{{- if and (eq $kind "Deployment") (include "capi-consumer.staticMembership" .) }}
{{- fail "workloadKind Deployment with config.kafka.static_membership: a Deployment's pods get new names (new group.instance.id) on every rollout, and a static member that left keeps its partitions until the session timeout. Use workloadKind StatefulSet (stable pod names), or set config.kafka.static_membership to false" }}
{{- end }}
{{- $kind }}
{{- end }}

{{/* Replica limits: never more members than partitions. */}}
{{- define "capi-consumer.checkReplicas" -}}
{{- $partitions := .Values.kafkaPartitions }}
{{- if .Values.autoscaling.enabled }}
{{- if not $partitions }}
{{- fail "autoscaling.enabled needs kafkaPartitions (the source topic's partition count): maxReplicas must not exceed it" }}
{{- end }}
{{- if gt (int .Values.autoscaling.maxReplicas) (int $partitions) }}
{{- fail (printf "autoscaling.maxReplicas %d is above kafkaPartitions %d: a consumer group member without a partition does no work and stays unready" (int .Values.autoscaling.maxReplicas) (int $partitions)) }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas %d is above autoscaling.maxReplicas %d" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- else if and $partitions (gt (int .Values.replicaCount) (int $partitions)) }}
{{- fail (printf "replicaCount %d is above kafkaPartitions %d: a consumer group member without a partition does no work and stays unready" (int .Values.replicaCount) (int $partitions)) }}
{{- end }}
{{- end }}

{{/* Mount paths must not hide the configuration directory or sit inside it. */}}
{{- define "capi-consumer.checkMountPath" -}}
{{- $path := trimSuffix "/" .path }}
{{- $configDir := include "capi-consumer.configDir" .root }}
{{- if not (hasPrefix "/" $path) }}
{{- fail (printf "%s: %q must be an absolute path" .what .path) }}
{{- end }}
{{- if or (eq $path $configDir) (hasPrefix (printf "%s/" $configDir) $path) (hasPrefix (printf "%s/" $path) $configDir) }}
{{- fail (printf "%s: %q overlaps the configuration directory %s (mount it elsewhere)" .what .path $configDir) }}
{{- end }}
{{- end }}
