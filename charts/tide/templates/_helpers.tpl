{{/*
Names, labels and the pieces every Tide pod shares.

Selector labels are name + instance + component and nothing else: a Deployment's selector
is immutable, so anything that may change between releases (version, chart) stays out of
it and lives only in the full label set.
*/}}

{{- define "tide.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tide.fullname" -}}
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

{{/* "<fullname>-<component>", kept within 63 characters. Call with (list $ "api"). */}}
{{- define "tide.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "tide.fullname" $root | trunc (int (sub 62 (len (index . 1))))) (index . 1) | trimSuffix "-" -}}
{{- end -}}

{{/*
Whether anything of the release uses Tide's database: the jobs API, beat and migrations do;
the platform alone (operator, exporter, Flower, dashboards) does not, so a platform-only
install beside a team's own app has no DATABASE_URL anywhere. "true" or empty.
*/}}
{{- define "tide.usesDatabase" -}}
{{- if or .Values.api.enabled .Values.beat.enabled .Values.migrations.enabled -}}true{{- end -}}
{{- end -}}

{{- define "tide.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full labels. Call with (list $ "component"). */}}
{{- define "tide.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "tide.chart" $root }}
{{ include "tide.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: tide
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels: never change for the life of a release. Call with (list $ "component"). */}}
{{- define "tide.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "tide.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "tide.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "tide.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tide.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tide.operator.serviceAccountName" -}}
{{- default (include "tide.componentName" (list . "operator")) .Values.operator.serviceAccount.name -}}
{{- end -}}

{{/* The Secret the chart generates (secret key, bundled service passwords, URLs). */}}
{{- define "tide.secretName" -}}
{{- include "tide.fullname" . -}}
{{- end -}}

{{- define "tide.configName" -}}
{{- include "tide.fullname" . -}}
{{- end -}}

{{- define "tide.redis.host" -}}
{{- include "tide.componentName" (list . "redis") -}}
{{- end -}}

{{- define "tide.postgresql.host" -}}
{{- include "tide.componentName" (list . "postgresql") -}}
{{- end -}}

{{/* Every queue the deployment knows: config.queues plus the chart's WorkerPools' queues. */}}
{{- define "tide.queues" -}}
{{- $queues := list -}}
{{- range .Values.config.queues }}{{ $queues = append $queues . }}{{ end -}}
{{- range .Values.workerPools }}{{ range .queues }}{{ $queues = append $queues . }}{{ end }}{{ end -}}
{{- $queues | uniq | join "," -}}
{{- end -}}

{{/* Django's HTTPS redirect: explicit value, else on exactly when the API Ingress has TLS. */}}
{{- define "tide.sslRedirect" -}}
{{- if kindIs "bool" .Values.config.secureSslRedirect -}}
{{- .Values.config.secureSslRedirect -}}
{{- else -}}
{{- and .Values.api.ingress.enabled (gt (len .Values.api.ingress.tls) 0) -}}
{{- end -}}
{{- end -}}

{{/*
Cross-field checks a JSON schema cannot phrase clearly. Each message says what to set.
*/}}
{{- define "tide.validate" -}}
{{- if include "tide.usesDatabase" . -}}
{{- if and (not .Values.postgresql.enabled) (not .Values.database.existingSecret) (not .Values.database.url) -}}
{{- fail "database: postgresql.enabled is false, so set database.existingSecret (a Secret with DATABASE_URL) or database.url" -}}
{{- end -}}
{{- else if .Values.postgresql.enabled -}}
{{- fail "postgresql.enabled: nothing of this install uses a database (api, beat and migrations are off); set postgresql.enabled=false" -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (not .Values.broker.existingSecret) (not .Values.broker.url) -}}
{{- fail "broker: redis.enabled is false, so set broker.existingSecret (a Secret with CELERY_BROKER_URL) or broker.url" -}}
{{- end -}}
{{- /* Secrets are never inlined in values: a URL with a password belongs in a Secret. */ -}}
{{- $withPassword := "^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@]*:[^/@]*@" -}}
{{- range $key, $url := dict "database.url" .Values.database.url "broker.url" .Values.broker.url "monitoring.prometheusUrl" .Values.monitoring.prometheusUrl -}}
{{- if regexMatch $withPassword $url -}}
{{- fail (printf "%s carries a password: put the URL in a Secret and set the matching existingSecret instead (values are not secret)" $key) -}}
{{- end -}}
{{- end -}}
{{- range .Values.config.extraEnv -}}
{{- if and (hasKey . "value") (regexMatch "(?i)(PASSWORD|SECRET|TOKEN|CREDENTIALS|_URL$)" .name) -}}
{{- fail (printf "config.extraEnv: %s looks like a secret; give it valueFrom.secretKeyRef instead of a value" .name) -}}
{{- end -}}
{{- end -}}
{{- range .Values.flower.extraArgs -}}
{{- if regexMatch "^--(basic[_-]auth|cookie[_-]secret|oauth2[_-]secret)" . -}}
{{- fail "flower.extraArgs: credentials on the command line are visible to anyone who can read the pod; use flower.basicAuth.existingSecret / flower.cookieSecret.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.monitoring.serviceMonitor.enabled .Values.monitoring.podMonitor.enabled -}}
{{- fail "monitoring: enable serviceMonitor or podMonitor, not both (every target would be scraped twice)" -}}
{{- end -}}
{{- $names := dict -}}
{{- range .Values.workerPools -}}
{{- $pool := . -}}
{{- if hasKey $names .name -}}
{{- fail (printf "workerPools: the name %q is used twice" .name) -}}
{{- end -}}
{{- $_ := set $names .name true -}}
{{- if gt (int (default 0 .minReplicas)) (int .maxReplicas) -}}
{{- fail (printf "workerPools[%s]: minReplicas (%v) must not exceed maxReplicas (%v)" .name .minReplicas .maxReplicas) -}}
{{- end -}}
{{- range $source, $m := (default dict .metrics) -}}
{{- if regexMatch $withPassword (default "" $m.url) -}}
{{- fail (printf "workerPools[%s].metrics.%s.url carries a password; the operator's metric sources take no credentials in the URL" $pool.name $source) -}}
{{- end -}}
{{- end -}}
{{- if and .fallback (gt (int .fallback.replicas) (int .maxReplicas)) -}}
{{- fail (printf "workerPools[%s]: fallback.replicas (%v) must not exceed maxReplicas (%v)" .name .fallback.replicas .maxReplicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Pod-level settings every Tide pod shares. Call with (list $ "component"). */}}
{{- define "tide.podSpecCommon" -}}
{{- $root := index . 0 -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Pod template metadata: labels and the checksums that roll pods on a config change. */}}
{{- define "tide.podMetadata" -}}
{{- $root := index . 0 -}}
labels:
  {{- include "tide.labels" . | nindent 2 }}
  {{- with $root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
  {{- /* Which secrets pods read, not their content: generated values never change once
  created (lookup keeps them), and hashing random content would make renders differ. */}}
  checksum/secret: {{ list (pick $root.Values "secretKey" "database" "broker" "resultBackend") $root.Values.flower.basicAuth $root.Values.flower.cookieSecret $root.Values.redis.existingSecret $root.Values.postgresql.existingSecret | toJson | sha256sum }}
  {{- with $root.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/*
The environment every Tide container gets: the ConfigMap (envFrom) plus secrets, always by
reference. The bundled services' URLs are composed with Kubernetes' $(VAR) expansion from a
password read from a Secret, so no URL with a password is ever written into an object.
*/}}
{{- define "tide.env" -}}
{{- $secret := include "tide.secretName" . -}}
- name: DJANGO_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ default $secret .Values.secretKey.existingSecret }}
      key: {{ ternary .Values.secretKey.existingSecretKey "DJANGO_SECRET_KEY" (ne .Values.secretKey.existingSecret "") }}
{{- if not (include "tide.usesDatabase" .) }}
{{- /* Nothing here uses a database: no URL that would point at one that does not exist. */}}
{{- else if .Values.postgresql.enabled }}
- name: TIDE_POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default $secret .Values.postgresql.existingSecret }}
      key: {{ ternary .Values.postgresql.existingSecretKey "postgres-password" (ne .Values.postgresql.existingSecret "") }}
- name: DATABASE_URL
  value: {{ printf "postgres://%s:$(TIDE_POSTGRES_PASSWORD)@%s:5432/%s" .Values.postgresql.database (include "tide.postgresql.host" .) .Values.postgresql.database | quote }}
{{- else if .Values.database.existingSecret }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
{{- else }}
- name: DATABASE_URL
  value: {{ .Values.database.url | quote }}
{{- end }}
{{ include "tide.brokerEnv" . }}
{{- if .Values.resultBackend.existingSecret }}
- name: CELERY_RESULT_BACKEND
  valueFrom:
    secretKeyRef:
      name: {{ .Values.resultBackend.existingSecret }}
      key: {{ .Values.resultBackend.existingSecretKey }}
{{- end }}
{{- with .Values.config.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tide.envFrom" -}}
- configMapRef:
    name: {{ include "tide.configName" . }}
{{- with .Values.config.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* /tmp: the one writable directory of the read-only image. */}}
{{- define "tide.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{- define "tide.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/*
Init container that waits until every migration is applied, so a new pod never runs
code against an older schema. `migrate --check` exits non-zero while any is unapplied.
*/}}
{{- define "tide.waitForMigrations" -}}
{{- if and .Values.migrations.enabled .Values.migrations.waitForMigrations }}
- name: wait-for-migrations
  image: {{ include "tide.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: [sh, -c]
  args:
    - until tide manage migrate --check >/dev/null; do echo "waiting for migrations"; sleep 5; done
  env:
    {{- include "tide.env" . | nindent 4 }}
  envFrom:
    {{- include "tide.envFrom" . | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.migrations.resources | nindent 4 }}
  volumeMounts:
    {{- include "tide.tmpMount" . | nindent 4 }}
{{- end }}
{{- end -}}

{{/*
Whether the Prometheus Operator's API is there for ServiceMonitor, PodMonitor and
PrometheusRule objects: applying them where their CRDs are absent fails the whole install
("no matches for kind"), so they render only where the cluster serves
monitoring.coreos.com/v1, or when monitoring.assumeCrds says it will (a GitOps renderer that
runs `helm template` without --api-versions). Renders "true" or nothing.
*/}}
{{- define "tide.monitoringApi" -}}
{{- if or .Values.monitoring.assumeCrds (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}true{{- end -}}
{{- end -}}

{{/* A WorkerPool's spec.template as the chart fills it. Call with (dict "root" $ "pool" $pool). */}}
{{- define "tide.workerTemplate" -}}
{{- $root := .root -}}
{{- $meta := include "tide.podMetadata" (list $root "worker") | fromYaml -}}
image: {{ include "tide.image" $root }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
serviceAccountName: {{ include "tide.serviceAccountName" $root }}
env:
  {{- include "tide.env" $root | nindent 2 }}
envFrom:
  {{- include "tide.envFrom" $root | nindent 2 }}
{{- with .pool.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
labels:
  {{- /* The operator sets the name and component labels of worker pods itself. */}}
  {{- omit $meta.labels "app.kubernetes.io/name" "app.kubernetes.io/component" | toYaml | nindent 2 }}
annotations:
  {{- toYaml $meta.annotations | nindent 2 }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- /* Workers of Tide's app run its code against its database: they wait for the
migrations like the API and beat (the operator mounts the /tmp it uses). */}}
{{- with include "tide.waitForMigrations" $root }}
initContainers:
  {{- . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
checkov skips, each with its reason: the one place the chart documents the security-scan
checks it does not meet and why. Call with a list of check ids; renders
checkov.io/skipN annotations. tests/charts/test_chart_security.py fails on any failed
check that is not skipped here.
*/}}
{{- define "tide.checkovSkips" -}}
{{- $reasons := dict
  "CKV_K8S_8" "no liveness probe: the program serves no health signal (beat) or runs to completion (Job, test pod); the process exits on a fatal error and is restarted"
  "CKV_K8S_9" "no readiness probe: the pod takes no traffic (beat, operator, Job, test pod), so readiness would gate nothing"
  "CKV_K8S_15" "image.pullPolicy defaults to IfNotPresent: release images are immutable and pinned by image.digest in production; set Always for mutable tags"
  "CKV_K8S_35" "Tide is configured by environment (12-factor); secrets arrive by secretKeyRef and never appear in the pod spec"
  "CKV_K8S_38" "the operator is the one Tide pod that calls the Kubernetes API, so its token is mounted (least-privilege RBAC)"
  "CKV_K8S_40" "the upstream image's own non-root user (redis 999, postgres 70) owns its files; the bundled services are for first installs"
  "CKV_K8S_43" "the digest is optional (image.digest, redis.image, postgresql.image are tags by default); production values pin a digest"
-}}
{{- range $i, $id := . }}
checkov.io/skip{{ add1 $i }}: {{ printf "%s=%s" $id (get $reasons $id) | quote }}
{{- end }}
{{- end -}}

{{/* The broker URL alone (the operator asks workers through it what they hold). */}}
{{- define "tide.brokerEnv" -}}
{{- $secret := include "tide.secretName" . -}}
{{- if .Values.redis.enabled }}
- name: TIDE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default $secret .Values.redis.existingSecret }}
      key: {{ ternary .Values.redis.existingSecretKey "redis-password" (ne .Values.redis.existingSecret "") }}
- name: CELERY_BROKER_URL
  value: {{ printf "redis://:$(TIDE_REDIS_PASSWORD)@%s:6379/0" (include "tide.redis.host" .) | quote }}
{{- else if .Values.broker.existingSecret }}
- name: CELERY_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.broker.existingSecret }}
      key: {{ .Values.broker.existingSecretKey }}
{{- else }}
- name: CELERY_BROKER_URL
  value: {{ .Values.broker.url | quote }}
{{- end }}
{{- with .Values.broker.transportOptions }}
{{- /* The app's key prefix and layout: the exporter, the operator's probe and Flower read
and talk to its workers with exactly these (see docs/bring-your-own-app.md). */}}
- name: TIDE_BROKER_TRANSPORT_OPTIONS
  value: {{ toJson . | quote }}
{{- end }}
{{- end -}}
