#!/usr/bin/env bash
# Checks of the deployment files: the Dockerfile (hadolint, checkov), the Helm chart
# rendered by Helm's own engine with the default values and with every
# deploy/helm/trackshift/ci/*-values.yaml (several replicas on PostgreSQL), each object
# validated against the Kubernetes schemas (oldest supported and newest) and
# cross-checked (selectors, ports, mounts, the flags against `trackshift serve --help`),
# checkov on the rendered chart, the systemd unit (systemd-analyze verify and security),
# and, with a trackshift binary and root, the pod's secret layout with the real gateway:
# files/copy-secrets.sh over kubelet-style Secret volumes, the StatefulSet's read-only
# mounts in a private mount namespace, the gateway started as uid 65532, its probes, and
# its JSON log lines against deploy/logging/vector.yaml.
#
# Usage: scripts/check-deploy.sh [PATH/TO/trackshift]
# The tools come from PyPI into a venv cached under ~/.cache (rebuilt when
# scripts/check-deploy.requirements.txt changes). No Docker engine, cluster or network
# beyond PyPI is used.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin=
if [ $# -ge 1 ]; then
    bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
    [ -x "$bin" ] || { echo "not an executable: $1" >&2; exit 2; }
fi
chart="$root/deploy/helm/trackshift"

cache=${TRACKSHIFT_CACHE:-$HOME/.cache}
venv="$cache/trackshift-deploy-venv"
req="$root/scripts/check-deploy.requirements.txt"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    echo "installing the deploy check tools (PyPI) into $venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv" || { echo "python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 2; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    echo "$want" > "$venv/.requirements.sha256"
fi
py="$venv/bin/python"

work="$(mktemp -d)"
chmod 0711 "$work" # the pod check runs the gateway as uid 65532 below it
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "  ok: $*"; }
bad() { failed=$((failed + 1)); echo "  FAILED: $*"; }
# count OUTPUT [STATUS]: adds the ok/FAILED lines of a sub-check to the totals; a sub-check
# that exited non-zero without a FAILED line (it crashed) is a failure too.
count() {
    cat "$1"
    local f
    f=$(grep -c '^  FAILED: ' "$1" || true)
    passed=$((passed + $(grep -c '^  ok: ' "$1" || true)))
    failed=$((failed + f))
    if [ "${2:-0}" != 0 ] && [ "$f" = 0 ]; then bad "$(basename "$1" .out) exited with status $2"; fi
}

echo "==> Dockerfile: hadolint"
if "$venv/bin/hadolint" "$root/Dockerfile" > "$work/hadolint.out" 2>&1; then
    ok "hadolint Dockerfile"
else
    bad "hadolint Dockerfile"; sed 's/^/      /' "$work/hadolint.out"
fi

echo "==> Helm chart: render, schema validation, cross-checks"
rc=0
"$py" "$root/scripts/check_deploy.py" render "$chart" "$work/rendered" ${bin:+"$bin"} > "$work/render.out" 2>&1 || rc=$?
count "$work/render.out" "$rc"

# checkov: no failed check; every skipped one must carry its reason (shown here).
checkov_run() { # NAME ARGS...
    local name="$1"; shift
    "$venv/bin/checkov" --skip-download --compact --output json "$@" > "$work/checkov.json" 2> "$work/checkov.err" || true
    "$py" - "$name" "$work/checkov.json" <<'PY' > "$work/checkov.out"
import json, sys
name, path = sys.argv[1:]
try:
    reports = json.load(open(path))
except ValueError:
    print(f"  FAILED: checkov {name}: no report"); sys.exit()
reports = reports if isinstance(reports, list) else [reports]
if not reports or all(not r.get("results") and r.get("summary", {}).get("passed", 0) == 0 for r in reports):
    print(f"  FAILED: checkov {name}: nothing scanned"); sys.exit()
for r in reports:
    res = r["results"]
    for c in res.get("failed_checks", []):
        print(f"  FAILED: checkov {name}: {c['check_id']} {c['check_name']} ({c['resource']}, {c['file_path']})")
    for c in res.get("skipped_checks", []):
        reason = (c.get("check_result") or {}).get("suppress_comment", "").strip()
        line = f"checkov {name}: {c['check_id']} skipped for {c['resource']}: {reason or 'NO REASON GIVEN'}"
        print(f"  ok: {line}" if reason and reason != "No comment provided" else f"  FAILED: {line}")
    s = r["summary"]
    print(f"  ok: checkov {name} ({r.get('check_type')}): {s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped"
          if s["failed"] == 0 else f"  FAILED: checkov {name}: {s['failed']} failed")
PY
    count "$work/checkov.out"
}
echo "==> checkov"
checkov_run Dockerfile -f "$root/Dockerfile" --framework dockerfile
for case in "$work"/rendered/*/; do
    checkov_run "chart ($(basename "$case") values)" -d "$case" --framework kubernetes
done

echo "==> systemd unit"
unit="$root/deploy/systemd/trackshift-gateway.service"
if command -v systemd-analyze > /dev/null; then
    # A root with the host's unit tree and the unit's executables, so that verify checks
    # this unit alone (ExecStart= and ExecReload= must exist and be executable).
    sroot="$work/sroot"
    mkdir -p "$sroot/usr/local/bin" "$sroot/bin" "$sroot/etc/systemd/system" "$sroot/usr/lib/systemd"
    cp -a /usr/lib/systemd/system "$sroot/usr/lib/systemd/"
    if [ -n "$bin" ]; then cp "$bin" "$sroot/usr/local/bin/trackshift"; else printf '#!/bin/sh\n' > "$sroot/usr/local/bin/trackshift"; fi
    chmod 0755 "$sroot/usr/local/bin/trackshift"
    cp /bin/kill "$sroot/bin/kill"
    cp "$unit" "$sroot/etc/systemd/system/"
    # verify exits 0 on unknown keys and bad values (it only warns): any message fails.
    if systemd-analyze verify --root="$sroot" trackshift-gateway.service > "$work/verify.out" 2>&1 && [ ! -s "$work/verify.out" ]; then
        ok "systemd-analyze verify trackshift-gateway.service"
    else
        bad "systemd-analyze verify trackshift-gateway.service"; sed 's/^/      /' "$work/verify.out"
    fi
    if systemd-analyze security --offline=yes --root="$sroot" --threshold=20 trackshift-gateway.service > "$work/security.out" 2>&1; then
        ok "systemd-analyze security: $(grep -o 'Overall exposure level.*' "$work/security.out")"
    else
        bad "systemd-analyze security (exposure above 2.0)"; grep '✗' "$work/security.out" | sed 's/^/      /'
    fi
else
    echo "  (systemd-analyze not installed: the unit is not verified)"
fi
if command -v systemd-sysusers > /dev/null; then
    uroot="$work/uroot"
    mkdir -p "$uroot/etc" && touch "$uroot/etc/passwd" "$uroot/etc/group"
    if systemd-sysusers --root="$uroot" --dry-run "$root/deploy/systemd/trackshift.sysusers" > "$work/sysusers.out" 2>&1 &&
        grep -q "Creating user 'trackshift'" "$work/sysusers.out"; then
        ok "systemd-sysusers creates the user trackshift (trackshift.sysusers)"
    else
        bad "systemd-sysusers trackshift.sysusers"; sed 's/^/      /' "$work/sysusers.out"
    fi
fi

echo "==> pod secret layout with the real gateway"
if [ -z "$bin" ]; then
    echo "  (no trackshift binary given: skipped)"
elif [ "$(id -u)" != 0 ] || ! command -v unshare > /dev/null || ! command -v setpriv > /dev/null; then
    echo "  (needs root, unshare and setpriv: skipped)"
else
    rc=0
    "$py" "$root/scripts/check_deploy.py" pod "$chart" "$work/pod" "$bin" "$root/deploy/logging/vector.yaml" > "$work/pod.out" 2>&1 || rc=$?
    count "$work/pod.out" "$rc"
fi

echo
echo "deploy checks: ${passed} passed, ${failed} failed"
[ "$failed" = 0 ]
