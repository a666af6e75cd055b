{{/* Names and labels. */}}
{{- define "trackshift.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "trackshift.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "trackshift.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trackshift.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "trackshift.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "trackshift.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "trackshift.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "trackshift.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: repository:tag, or repository@digest when a digest is set. */}}
{{- define "trackshift.imageRef" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (toString (default .appVersion .image.tag)) -}}
{{- end -}}
{{- end -}}

{{- define "trackshift.dataDir" -}}/var/lib/trackshift{{- end -}}
{{- define "trackshift.runtimeDir" -}}/run/trackshift{{- end -}}

{{/* The Secret volumes, by role: role => (dict secret, items). */}}
{{- define "trackshift.secretVolumes" -}}
{{- $s := .Values.secrets -}}
{{- $out := dict -}}
{{- if $s.tenants.existingSecret -}}
{{- $_ := set $out "tenants" (dict "name" $s.tenants.existingSecret "items" (list (dict "key" $s.tenants.key "path" "tenants.json"))) -}}
{{- end -}}
{{- if $s.credentials.existingSecret -}}
{{- $_ := set $out "credentials" (dict "name" $s.credentials.existingSecret "items" list) -}}
{{- end -}}
{{- if $s.serviceKey.existingSecret -}}
{{- $_ := set $out "service-key" (dict "name" $s.serviceKey.existingSecret "items" (list (dict "key" $s.serviceKey.key "path" "service.key"))) -}}
{{- end -}}
{{- if $s.operatorKey.existingSecret -}}
{{- $_ := set $out "operator-key" (dict "name" $s.operatorKey.existingSecret "items" (list (dict "key" $s.operatorKey.key "path" "operator.key"))) -}}
{{- end -}}
{{- if $s.tls.existingSecret -}}
{{- $_ := set $out "tls" (dict "name" $s.tls.existingSecret "items" list) -}}
{{- end -}}
{{- if $s.signingKeys.existingSecret -}}
{{- $_ := set $out "signing-keys" (dict "name" $s.signingKeys.existingSecret "items" list) -}}
{{- end -}}
{{- if $s.ledgerKeys.existingSecret -}}
{{- $_ := set $out "ledger-keys" (dict "name" $s.ledgerKeys.existingSecret "items" list) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Settings that cannot work, refused at render time with the reason. */}}
{{- define "trackshift.validate" -}}
{{- $v := .Values -}}
{{- if and (gt (int $v.replicaCount) 1) (not $v.store.postgres.enabled) -}}
{{- fail "replicaCount > 1 needs store.postgres.enabled: each replica's SQLite store and file ledger would be its own" -}}
{{- end -}}
{{- if and (gt (int $v.replicaCount) 1) (not $v.secrets.tls.existingSecret) -}}
{{- fail "replicaCount > 1 needs secrets.tls.existingSecret: behind one Service every replica must present the certificate senders pin" -}}
{{- end -}}
{{- if and (gt (int $v.replicaCount) 1) (not $v.secrets.ledgerKeys.existingSecret) -}}
{{- fail "replicaCount > 1 needs secrets.ledgerKeys.existingSecret: gateways sharing a ledger must have the same ledger keys" -}}
{{- end -}}
{{- if and $v.store.postgres.enabled (not $v.store.postgres.existingSecret) -}}
{{- fail "store.postgres.enabled needs store.postgres.existingSecret (the Secret holding the postgres:// URL)" -}}
{{- end -}}
{{- if and $v.secrets.tenants.existingSecret $v.gateway.defaultDest -}}
{{- fail "gateway.defaultDest writes into tenants.json, which comes read-only from secrets.tenants: put the default tenant's destinations into that file" -}}
{{- end -}}
{{- if and $v.gateway.operatorHttp.enabled (not $v.networkPolicy.enabled) (not $v.gateway.operatorHttp.allowWithoutNetworkPolicy) -}}
{{- fail "gateway.operatorHttp serves /metrics and /dashboard without a key: keep networkPolicy.enabled, or set gateway.operatorHttp.allowWithoutNetworkPolicy if the network keeps tenants away from it" -}}
{{- end -}}
{{- if and $v.serviceMonitor.enabled (not $v.gateway.operatorHttp.enabled) (not $v.secrets.operatorKey.existingSecret) -}}
{{- fail "serviceMonitor without gateway.operatorHttp needs secrets.operatorKey.existingSecret (Prometheus presents the operator key)" -}}
{{- end -}}
{{- if and $v.gateway.maxConnectionsPerIp (le (int $v.gateway.maxConnectionsPerIp) (int $v.gateway.maxJobs)) -}}
{{- fail "gateway.maxConnectionsPerIp must be above gateway.maxJobs: the job service's workers connect from the pod itself" -}}
{{- end -}}
{{- end -}}

{{/* HOST:PORT for a listener flag; an IPv6 host goes in brackets. */}}
{{- define "trackshift.hostPort" -}}
{{- $host := index . 0 -}}
{{- if contains ":" $host -}}
{{- printf "[%s]:%v" $host (index . 1) -}}
{{- else -}}
{{- printf "%s:%v" $host (index . 1) -}}
{{- end -}}
{{- end -}}

{{/* imagePullPolicy: as set, else IfNotPresent for an image pinned by digest (it cannot
change) and Always for a tag (a tag can be moved; Always also re-checks pull secrets). */}}
{{- define "trackshift.pullPolicy" -}}
{{- if .pullPolicy -}}
{{- .pullPolicy -}}
{{- else if .digest -}}
IfNotPresent
{{- else -}}
Always
{{- end -}}
{{- end -}}
