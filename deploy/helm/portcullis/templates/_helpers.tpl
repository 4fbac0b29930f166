{{/* The release's name for every object: <release>-portcullis, or <release> when it already says portcullis. */}}
{{- define "portcullis.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "portcullis.labels" -}}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "portcullis.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret the environment comes from; stops the install when there is none. */}}
{{- define "portcullis.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else if .Values.secrets.values -}}
{{- include "portcullis.fullname" . -}}
{{- else -}}
{{- fail "portcullis: no secrets: set secrets.existingSecret (a Secret you created with JWT_SECRET, ALICE_PASSWORD, … for the config's ${VARS}) or secrets.values (KEY: value pairs from your own values file); the chart has no default secret" -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.configMapName" -}}
{{- default (include "portcullis.fullname" .) .Values.config.existingConfigMap -}}
{{- end -}}

{{/* rateLimit.redis from redis: a URL, { sentinels, name } or { cluster }; empty without one. */}}
{{- define "portcullis.redis" -}}
{{- $r := .Values.redis -}}
{{- $set := 0 -}}
{{- if $r.url }}{{ $set = add1 $set }}{{ end -}}
{{- if $r.sentinels }}{{ $set = add1 $set }}{{ end -}}
{{- if $r.cluster }}{{ $set = add1 $set }}{{ end -}}
{{- if gt $set 1 -}}
{{- fail "portcullis: set only one of redis.url, redis.sentinels and redis.cluster" -}}
{{- end -}}
{{- if $r.url -}}
{{- $r.url | toJson -}}
{{- else if $r.sentinels -}}
{{- $s := dict "sentinels" $r.sentinels "name" (required "portcullis: redis.name (the monitored primary's name) is required with redis.sentinels" $r.name) -}}
{{- if $r.password.secretKey }}{{ $_ := set $s "password" "${REDIS_PASSWORD}" }}{{ end -}}
{{- $s | toJson -}}
{{- else if $r.cluster -}}
{{- $c := dict "cluster" $r.cluster -}}
{{- if $r.password.secretKey }}{{ $_ := set $c "password" "${REDIS_PASSWORD}" }}{{ end -}}
{{- $c | toJson -}}
{{- end -}}
{{- end -}}

{{/* gateway.yaml: config.gateway with the keys the chart owns merged in. */}}
{{- define "portcullis.gatewayConfig" -}}
{{- $cfg := deepCopy .Values.config.gateway -}}
{{- $server := default dict $cfg.server -}}
{{- $_ := set $server "host" "0.0.0.0" -}}
{{- $_ := set $server "port" (int .Values.server.port) -}}
{{- $_ := set $server "shutdownGrace" (printf "%ds" (int .Values.server.shutdownGrace)) -}}
{{- $_ := set $server "requestBufferTotal" (printf "%dmb" (sub (int .Values.server.tmpSizeMi) 32)) -}}
{{- $metrics := default dict $server.metrics -}}
{{- $_ := set $metrics "port" (int .Values.metrics.port) -}}
{{- $_ := set $server "metrics" $metrics -}}
{{- $_ := set $cfg "server" $server -}}
{{- $redis := include "portcullis.redis" . -}}
{{- if $redis -}}
{{- $rl := default dict $cfg.rateLimit -}}
{{- $_ := set $rl "store" "redis" -}}
{{- $_ := set $rl "redis" ($redis | fromJson) -}}
{{- if .Values.redis.url }}{{ $_ := set $rl "redis" .Values.redis.url }}{{ end -}}
{{- $_ := set $cfg "rateLimit" $rl -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}
