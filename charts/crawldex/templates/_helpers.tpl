{{/* Names */}}
{{- define "crawldex.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "crawldex.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "crawldex.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The component name of a resource: (dict "root" $ "component" "ingest-api") -> <fullname>-ingest-api */}}
{{- define "crawldex.componentName" -}}
{{- printf "%s-%s" (include "crawldex.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels: (dict "root" $ "component" "ingest-api" ["name" "redis"]) */}}
{{- define "crawldex.selectorLabels" -}}
app.kubernetes.io/name: {{ .name | default (include "crawldex.name" .root) }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "crawldex.labels" -}}
helm.sh/chart: {{ include "crawldex.chart" .root }}
{{ include "crawldex.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: crawldex
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selects every crawldex service pod of the release (ingest-api and workers). */}}
{{- define "crawldex.appPodSelector" -}}
app.kubernetes.io/name: {{ include "crawldex.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "crawldex.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "crawldex.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* A crawldex image: (dict "root" $ "image" .Values.ingestApi.image) */}}
{{- define "crawldex.image" -}}
{{- $registry := .root.Values.image.registry -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if $registry -}}{{ $registry }}/{{- end -}}
{{- .image.repository -}}
{{- if .image.digest -}}@{{ .image.digest }}{{- else -}}:{{ $tag }}{{- end -}}
{{- end -}}

{{/* TEI image: the tag maps the GPU architecture of the node pool (or the CPU) to TEI's image tag. */}}
{{- define "crawldex.tei.image" -}}
{{- $tei := .Values.tei -}}
{{- $tag := $tei.image.tag -}}
{{- if not $tag -}}
{{- $arch := ternary $tei.gpu.architecture "cpu" $tei.gpu.enabled -}}
{{- if not (hasKey $tei.tagPrefixes $arch) -}}
{{- fail (printf "tei.gpu.architecture %q is not a key of tei.tagPrefixes (%s)" $arch (keys $tei.tagPrefixes | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $tag = printf "%s%s" (index $tei.tagPrefixes $arch) $tei.image.version -}}
{{- end -}}
{{- printf "%s:%s" $tei.image.repository $tag -}}
{{- end -}}

{{/* The Secret holding every secret value (created by the chart or named by secrets.existingSecret). */}}
{{- define "crawldex.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "crawldex.fullname" .) -}}
{{- end -}}

{{- define "crawldex.redis.host" -}}
{{- include "crawldex.componentName" (dict "root" . "component" "redis") -}}
{{- end -}}
{{- define "crawldex.postgresql.host" -}}
{{- include "crawldex.componentName" (dict "root" . "component" "postgresql") -}}
{{- end -}}

{{- define "crawldex.qdrantUrl" -}}
{{- if .Values.qdrant.enabled -}}
http://{{ include "crawldex.componentName" (dict "root" . "component" "qdrant") }}:6333
{{- else -}}
{{- .Values.externalQdrant.url -}}
{{- end -}}
{{- end -}}

{{- define "crawldex.teiUrl" -}}
{{- if .Values.tei.enabled -}}
http://{{ include "crawldex.componentName" (dict "root" . "component" "tei") }}:{{ .Values.tei.service.port }}
{{- else -}}
{{- .Values.externalTei.url -}}
{{- end -}}
{{- end -}}

{{/* The two workers: what differs between them. */}}
{{- define "crawldex.workers" -}}
- key: indexWorker
  component: index-worker
  queue: indexing
  command: crawldex-index-worker
  scrapeJob: {{ .Values.scrapeJobs.indexWorker }}
  timeout: {{ int .Values.config.indexJobTimeoutSeconds }}
  timeoutKey: config.indexJobTimeoutSeconds
- key: rescrapeWorker
  component: rescrape-worker
  queue: rescrape
  command: crawldex-rescrape-worker
  scrapeJob: {{ .Values.scrapeJobs.rescrapeWorker }}
  timeout: {{ int .Values.config.rescrapeJobTimeoutSeconds }}
  timeoutKey: config.rescrapeJobTimeoutSeconds
{{- end -}}

{{/* Grace period of a worker: its value, or its job timeout + 60 s (SIGTERM finishes the running job).
(dict "values" <worker values> "worker" <entry of crawldex.workers>) */}}
{{- define "crawldex.worker.grace" -}}
{{- $timeout := int .worker.timeout -}}
{{- $grace := .values.terminationGracePeriodSeconds -}}
{{- if kindIs "invalid" $grace -}}
{{- add $timeout 60 -}}
{{- else if le (int $grace) $timeout -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must exceed %s (%d): SIGTERM lets the running job finish" .worker.key (int $grace) .worker.timeoutKey $timeout) -}}
{{- else -}}
{{- int $grace -}}
{{- end -}}
{{- end -}}

{{/* Secret env of a crawldex container, each process only what it uses:
(dict "root" $ "kind" "ingest-api|index-worker|rescrape-worker"). Values never appear here, only references. */}}
{{- define "crawldex.secretEnv" -}}
{{- $root := .root -}}
{{- $secret := include "crawldex.secretName" $root -}}
{{- if eq .kind "ingest-api" }}
- name: CRAWLDEX_API_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: CRAWLDEX_API_TOKEN}
- name: CRAWLDEX_FIRECRAWL_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: CRAWLDEX_FIRECRAWL_WEBHOOK_SECRET, optional: true}
- name: CRAWLDEX_CHANGEDETECTION_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: CRAWLDEX_CHANGEDETECTION_TOKEN, optional: true}
{{- end }}
{{- if ne .kind "rescrape-worker" }}
- name: CRAWLDEX_QDRANT_API_KEY
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: CRAWLDEX_QDRANT_API_KEY, optional: true}
{{- else }}
- name: CRAWLDEX_FIRECRAWL_API_KEY
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: CRAWLDEX_FIRECRAWL_API_KEY, optional: true}
{{- end }}
{{ include "crawldex.databaseEnv" $root }}
{{ include "crawldex.redisEnv" $root }}
{{- end -}}

{{/* CRAWLDEX_DATABASE_URL: the in-chart PostgreSQL's URL built from the password reference, or the
external URL from the Secret. */}}
{{- define "crawldex.databaseEnv" -}}
{{- $secret := include "crawldex.secretName" . -}}
{{- if .Values.postgresql.enabled -}}
- name: CRAWLDEX_POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: postgres-password}
- name: CRAWLDEX_DATABASE_URL
  value: "postgresql+asyncpg://{{ .Values.postgresql.username }}:$(CRAWLDEX_POSTGRES_PASSWORD)@{{ include "crawldex.postgresql.host" . }}:5432/{{ .Values.postgresql.database }}"
{{- else -}}
- name: CRAWLDEX_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: CRAWLDEX_DATABASE_URL}
{{- end -}}
{{- end -}}

{{- define "crawldex.redisEnv" -}}
{{- $secret := include "crawldex.secretName" . -}}
{{- if .Values.redis.enabled -}}
- name: CRAWLDEX_REDIS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: redis-password}
- name: CRAWLDEX_REDIS_URL
  value: "redis://:$(CRAWLDEX_REDIS_PASSWORD)@{{ include "crawldex.redis.host" . }}:6379/0"
{{- else -}}
- name: CRAWLDEX_REDIS_URL
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: CRAWLDEX_REDIS_URL}
{{- end -}}
{{- end -}}

{{/* Pod annotations that roll pods when the configuration or the chart-made Secret changes. */}}
{{- define "crawldex.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end -}}

{{/* Volumes every crawldex pod has: a writable /tmp (the root filesystem is read-only) and the tokenizer. */}}
{{- define "crawldex.appVolumes" -}}
- name: tmp
  emptyDir: {sizeLimit: 1Gi}
{{- with .Values.tokenizer.volume }}
- name: tokenizer
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "crawldex.appVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.tokenizer.volume }}
- name: tokenizer
  mountPath: /etc/crawldex/tokenizer
  readOnly: true
{{- end }}
{{- end -}}

{{/* Checks that fail the render with a message instead of producing pods that cannot work. */}}
{{- define "crawldex.validate" -}}
{{- $v := .Values -}}
{{- if and (not $v.postgresql.enabled) (not $v.secrets.existingSecret) (not $v.secrets.databaseUrl) -}}
{{- fail "a database is required: postgresql.enabled=true (quick start), secrets.databaseUrl, or secrets.existingSecret with CRAWLDEX_DATABASE_URL" -}}
{{- end -}}
{{- if and (not $v.redis.enabled) (not $v.secrets.existingSecret) (not $v.secrets.redisUrl) -}}
{{- fail "Redis is required: redis.enabled=true (quick start), secrets.redisUrl, or secrets.existingSecret with CRAWLDEX_REDIS_URL" -}}
{{- end -}}
{{- if and (not $v.qdrant.enabled) (not $v.externalQdrant.url) -}}
{{- fail "a Qdrant server is required in Kubernetes (the embedded store is single-process): qdrant.enabled=true or externalQdrant.url" -}}
{{- end -}}
{{- if and (not $v.tei.enabled) (not $v.externalTei.url) -}}
{{- fail "TEI is required (the ingest-api image carries no model to embed queries): tei.enabled=true or externalTei.url" -}}
{{- end -}}
{{- if and $v.tei.enabled (ne $v.tei.model "sentence-transformers/all-MiniLM-L6-v2") (eq $v.config.tokenizerPath "/opt/crawldex/tokenizer/tokenizer.json") -}}
{{- fail (printf "TEI serves %s but chunks would be counted with the bundled all-MiniLM-L6-v2 tokenizer: mount the model's tokenizer.json (tokenizer.volume) and set config.tokenizerPath" $v.tei.model) -}}
{{- end -}}
{{- if $v.secrets.existingSecret -}}
{{- range $k := list "apiToken" "firecrawlWebhookSecret" "changedetectionToken" "firecrawlApiKey" "qdrantApiKey" "databaseUrl" "redisUrl" "redisPassword" "postgresPassword" "hfToken" -}}
{{- if index $v.secrets $k -}}
{{- fail (printf "secrets.%s is set together with secrets.existingSecret: put it into the existing Secret instead" $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $name, $value := $v.config.extra -}}
{{- if not (hasPrefix "CRAWLDEX_" $name) -}}
{{- fail (printf "config.extra.%s: only CRAWLDEX_* settings belong here" $name) -}}
{{- end -}}
{{- if regexMatch "(TOKEN|SECRET|PASSWORD|API_KEY|DATABASE_URL|REDIS_URL)" $name -}}
{{- fail (printf "config.extra.%s looks secret: it would land in a ConfigMap; use the secrets values or secrets.existingSecret" $name) -}}
{{- end -}}
{{- end -}}
{{- if and $v.tei.enabled $v.tei.gpu.enabled (not $v.tei.gpu.nodeSelector) (not $v.tei.nodeSelector) (not $v.tei.affinity) -}}
{{- fail "tei.gpu.enabled needs a node selector or affinity for the GPU pool (tei.gpu.nodeSelector)" -}}
{{- end -}}
{{- range $w := include "crawldex.workers" . | fromYamlArray -}}
{{- $a := (index $v $w.key).autoscaling -}}
{{- if and (eq $a.engine "keda") (not $a.keda.prometheus.enabled) (not $v.redis.enabled) (not $v.keda.redis.address) -}}
{{- fail (printf "%s.autoscaling.engine=keda reads the Redis queue: set keda.redis.address (host:port of the external Redis)" $w.key) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* With the migrations Job the services do not migrate at start, except with the in-chart PostgreSQL:
it only exists after install, so the Job runs post-install there and the services' own migration (under
the advisory lock) covers the first start. */}}
{{- define "crawldex.migrateOnStart" -}}
{{- if or (not .Values.migrations.enabled) .Values.postgresql.enabled -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* A secret value for the chart-made Secret, base64: the value given, else the value already in the
cluster (kept across upgrades), else a generated one, else nothing. */}}
{{- define "crawldex.secretValue" -}}
{{- if .value -}}
{{- .value | toString | b64enc -}}
{{- else if hasKey .existing .key -}}
{{- index .existing .key -}}
{{- else if .generate -}}
{{- randAlphaNum 40 | b64enc -}}
{{- end -}}
{{- end -}}
