"""Checks of the Helm chart and the logging config, run by scripts/check-deploy.sh.

    python check_deploy.py render  CHART OUT_DIR [TRACKSHIFT]  render, validate, cross-check
    python check_deploy.py pod     CHART WORK TRACKSHIFT LOGGING_CONFIG   the pod's secret
                                   layout with the real binary (root: unshare, setpriv)

Each case prints "ok: ..." or "FAILED: ..."; the exit status is the number of failures
(capped at 100). Rendering uses Helm's own engine (the helm-python-sdk wheel), schema
validation the Kubernetes OpenAPI schemas (kubernetes-validate).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import helm_python as helm
import yaml
from kubernetes_validate import utils as kv

RELEASE = "trackshift"
NAMESPACE = "trackshift"
UID = 65532
failures = 0


def ok(what: str) -> None:
    print(f"  ok: {what}")


def bad(what: str) -> None:
    global failures
    failures += 1
    print(f"  FAILED: {what}")


def check(cond: bool, what: str) -> bool:
    (ok if cond else bad)(what)
    return cond


def render(chart: str, values: dict) -> list[dict]:
    with helm.Chart.load(chart) as c:
        out = c.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for name, text in sorted(out.items()):
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def kube_versions() -> list[str]:
    """The chart's oldest supported Kubernetes (Chart.yaml kubeVersion >= 1.27) and the newest."""
    versions = sorted(set(kv.all_versions()), key=lambda v: tuple(int(x) for x in v.split(".")))
    return [next(v for v in versions if v.startswith("1.27.")), versions[-1]]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def serve_flags(binary: str) -> set[str]:
    text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]+)", text))


def cross_check(case: str, docs: list[dict], flags: set[str] | None) -> None:
    """What schemas cannot see: selectors that select, names that resolve, flags that exist."""
    [sts] = by_kind(docs, "StatefulSet")
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    check(matches(sts["spec"]["selector"]["matchLabels"], labels), f"{case}: StatefulSet selector matches its pods")
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    check(sts["spec"]["serviceName"] in services and services[sts["spec"]["serviceName"]]["spec"].get("clusterIP") == "None",
          f"{case}: serviceName is the headless Service")
    ports = {p["name"]: p for c in spec["containers"] for p in c.get("ports", [])}
    for s in services.values():
        check(matches(s["spec"]["selector"], labels), f"{case}: Service {s['metadata']['name']} selects the gateway pods")
        for p in s["spec"]["ports"]:
            target = ports.get(p["targetPort"])
            check(target is not None and target["protocol"] == p["protocol"],
                  f"{case}: Service {s['metadata']['name']} port {p['name']} targets a container port of the same protocol ({p['protocol']})")
    for kind in ("PodDisruptionBudget",):
        for d in by_kind(docs, kind):
            check(matches(d["spec"]["selector"]["matchLabels"], labels), f"{case}: {kind} selects the gateway pods")
    for np in by_kind(docs, "NetworkPolicy"):
        check(matches(np["spec"]["podSelector"]["matchLabels"], labels), f"{case}: NetworkPolicy selects the gateway pods")
        rules = np["spec"]["ingress"]
        by_port = {(p["port"], p["protocol"]): r for r in rules for p in r["ports"]}
        quic = ports["quic"]["containerPort"]
        http = ports["http"]["containerPort"]
        check((quic, "UDP") in by_port and (http, "TCP") in by_port, f"{case}: NetworkPolicy admits QUIC (UDP {quic}) and HTTP (TCP {http})")
        if "operator" in ports:
            op = by_port.get((ports["operator"]["containerPort"], "TCP"))
            check(op is not None and op.get("from") and all("namespaceSelector" in f and f["namespaceSelector"].get("matchLabels") for f in op["from"]),
                  f"{case}: the operator port is admitted only from labelled (monitoring) namespaces")
        check(all(r["ports"] for r in rules), f"{case}: every NetworkPolicy ingress rule names its ports (no rule opens all ports)")
    volumes = {v["name"]: v for v in spec["volumes"]}
    claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])}
    for c in spec["containers"] + spec.get("initContainers", []):
        for m in c.get("volumeMounts", []):
            check(m["name"] in volumes or m["name"] in claims, f"{case}: {c['name']} mount {m['mountPath']} names a volume")
        sc = c["securityContext"]
        check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
              and sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("runAsNonRoot") is True
              and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
              f"{case}: {c['name']} runs non-root, read-only root, no capabilities, seccomp RuntimeDefault")
    [gw] = [c for c in spec["containers"] if c["name"] == "gateway"]
    check(gw["livenessProbe"]["httpGet"]["path"] == "/health" and gw["readinessProbe"]["httpGet"]["path"] == "/ready",
          f"{case}: liveness on /health, readiness on /ready")
    # Secrets: the Secret volumes only in the init container, and only at 0440 (fsGroup).
    secret_vols = {n for n, v in volumes.items() if "secret" in v}
    gw_mounts = {m["name"] for m in gw["volumeMounts"]}
    check(not (secret_vols & gw_mounts), f"{case}: the gateway mounts no Secret volume directly (they are not owner-only)")
    secret_mounts = [m for m in gw["volumeMounts"] if m["name"] == "secrets"]
    check(all(m.get("readOnly") is True or m["mountPath"].endswith("/ledger/keys") for m in secret_mounts),
          f"{case}: the gateway's secrets are mounted read-only ({len(secret_mounts)} mounts)")
    check(volumes["secrets"]["emptyDir"].get("medium") == "Memory", f"{case}: the copied secrets live in memory only")
    for env in gw.get("env", []):
        check("value" not in env or not re.search(r"postgres(ql)?://", str(env["value"])),
              f"{case}: env {env['name']} carries no database URL in the pod spec")
    if flags is not None:
        used = {a.split("=", 1)[0] for a in gw["args"] if a.startswith("--")}
        unknown = used - flags
        check(not unknown, f"{case}: every flag passed exists in `trackshift serve --help` ({', '.join(sorted(used))})"
              + (f"; unknown: {sorted(unknown)}" if unknown else ""))
    for sm in by_kind(docs, "ServiceMonitor"):
        # No schema for this CRD in kubernetes-validate: its meaning is checked instead.
        sel = sm["spec"]["selector"]["matchLabels"]
        targets = [s for s in services.values() if matches(sel, s["metadata"]["labels"])]
        check(len(targets) == 1 and targets[0]["spec"].get("clusterIP") == "None",
              f"{case}: ServiceMonitor selects exactly the headless Service (every replica scraped)")
        names = {p["name"] for p in targets[0]["spec"]["ports"]} if targets else set()
        for ep in sm["spec"]["endpoints"]:
            check(ep["port"] in names and ep["path"] == "/metrics", f"{case}: ServiceMonitor scrapes /metrics on port {ep['port']}")
            if ep["port"] == "http":
                check("authorization" in ep, f"{case}: ServiceMonitor presents the operator key on the HTTP port")


def cmd_render(chart: str, out_dir: str, binary: str | None) -> None:
    flags = serve_flags(binary) if binary else None
    if flags is None:
        print("  (no trackshift binary given: the flags are not checked against `serve --help`)")
    versions = kube_versions()
    report = helm.lint(chart, strict=True)
    errors = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    check(not errors, "helm lint --strict" + (f": {errors}" if errors else ""))
    cases = {"default": {}}
    for f in sorted(Path(chart, "ci").glob("*-values.yaml")):
        cases[f.name.removesuffix("-values.yaml")] = yaml.safe_load(f.read_text())
    for case, values in cases.items():
        try:
            docs = render(chart, values)
        except helm.HelmError as e:
            bad(f"{case}: render: {e}")
            continue
        ok(f"{case}: rendered {len(docs)} objects ({', '.join(sorted(d['kind'] for d in docs))})")
        d = Path(out_dir, case)
        d.mkdir(parents=True, exist_ok=True)
        for doc in docs:
            Path(d, f"{doc['kind']}-{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            for v in versions:
                name = f"{case}: {doc['kind']}/{doc['metadata']['name']} against Kubernetes {v} (strict)"
                try:
                    kv.validate(doc, v, strict=True)
                    ok(name)
                except kv.SchemaNotFoundError:
                    if doc["kind"] == "ServiceMonitor":
                        continue  # a CRD: cross_check looks at it
                    bad(f"{name}: no schema")
                except (kv.ValidationError, kv.InvalidSchemaError) as e:
                    bad(f"{name}: {e.message if hasattr(e, 'message') else e}")
        cross_check(case, docs, flags)
    # Settings that cannot work must be refused at render time, with the reason.
    base = cases.get("postgres", {})
    refused = [
        ({"replicaCount": 3}, "needs store.postgres.enabled"),
        ({**base, "secrets": {**base.get("secrets", {}), "tls": {"existingSecret": ""}}}, "needs secrets.tls.existingSecret"),
        ({**base, "secrets": {**base.get("secrets", {}), "ledgerKeys": {"existingSecret": ""}}}, "needs secrets.ledgerKeys.existingSecret"),
        ({"store": {"postgres": {"enabled": True}}}, "needs store.postgres.existingSecret"),
        ({"networkPolicy": {"enabled": False}}, "keep networkPolicy.enabled"),
        ({"secrets": {"tenants": {"existingSecret": "t"}}, "gateway": {"defaultDest": ["file:///srv/in/"]}}, "writes into tenants.json"),
        ({"gateway": {"maxConnectionsPerIp": 100}}, "must be above gateway.maxJobs"),
        ({"serviceMonitor": {"enabled": True}, "gateway": {"operatorHttp": {"enabled": False}}}, "needs secrets.operatorKey"),
    ]
    for values, reason in refused:
        try:
            render(chart, values)
            bad(f"refused: {json.dumps(values)[:80]}... rendered")
        except helm.HelmError as e:
            check(reason in str(e), f"refused at render time: {reason}" + ("" if reason in str(e) else f" (got: {e})"))


# --- the pod's secret layout, with the real binary -------------------------------------

def secret_volume(path: Path, files: dict[str, bytes]) -> None:
    """A Secret volume as the kubelet writes it with the pod's fsGroup: a timestamped
    directory, ..data pointing at it, one link per key; files root:fsGroup 0440."""
    stamp = path / "..2026_01_01_00_00_00.000000000"
    stamp.mkdir(parents=True)
    for name, data in files.items():
        (stamp / name).write_bytes(data)
        os.chown(stamp / name, 0, UID)
        os.chmod(stamp / name, 0o440)
        os.symlink(f"..data/{name}", path / name)
    os.symlink(stamp.name, path / "..data")
    for d in (path, stamp):
        os.chown(d, 0, UID)
        os.chmod(d, 0o2750)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, key: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def pod_env() -> dict:
    """A pod's environment, not this shell's: the test suite exports its test servers'
    settings (TRACKSHIFT_SFTP_KEY and such), naming files uid 65532 may not read."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TRACKSHIFT_", "AWS_", "AZURE_", "PG"))}


def as_gateway_user(args: list[str], **kw) -> subprocess.Popen:
    kw.setdefault("env", pod_env())
    return subprocess.Popen(["setpriv", f"--reuid={UID}", f"--regid={UID}", f"--groups={UID}", "--inh-caps=-all",
                             "--bounding-set=-all", "--no-new-privs", *args], **kw)


def cmd_pod(chart: str, work: str, binary: str, logging_config: str) -> None:
    """Runs files/copy-secrets.sh over Secret volumes laid out as the kubelet does, mounts
    its output into the data directory as the StatefulSet does (bind mounts, read-only,
    in a private mount namespace) and starts the real gateway as uid 65532 there."""
    w = Path(work)
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    os.chmod(w, 0o755)
    binary = str(Path(binary).resolve())
    shutil.copy(binary, w / "trackshift")
    os.chmod(w / "trackshift", 0o755)
    bin_ = str(w / "trackshift")
    # The secrets an operator exports from a gateway: a first gateway's data directory.
    seed = w / "seed"
    # Stopped once it serves HTTP (its data directory is then complete), not after a fixed
    # time: on a loaded machine a fixed 3 s could stop it half-way through making it.
    p = subprocess.Popen([bin_, "serve", "--data-dir", str(seed), "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=pod_env())
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("HTTP ("):
            break
    p.terminate()
    rest, err = p.communicate(timeout=30)
    out = "".join(lines) + rest
    fingerprint = re.search(r"certificate fingerprint: ([0-9a-f]{64})", out)
    if not check(fingerprint is not None and p.returncode == 0, "seed gateway made the secrets to export"):
        print(out, err)
        return
    fingerprint = fingerprint.group(1)
    operator_key = "k" * 8 + os.urandom(16).hex()
    tenant_key = os.urandom(32).hex()
    import hashlib
    src = w / "srv/acme"
    src.mkdir(parents=True)
    tenants = {"tenants": [{"tenant": "acme", "api_keys": [hashlib.sha256(tenant_key.encode()).hexdigest()],
                            "sources": [str(src)], "destinations": [{"prefix": "null://"}],
                            "credentials": str(w / "etc/trackshift/credentials/acme.env")}]}
    secrets = w / "secrets"
    read = lambda *parts: (seed.joinpath(*parts)).read_bytes()  # noqa: E731
    keys = {"keyring.json": read("keys", "keyring.json")}
    keys.update({f.name: f.read_bytes() for f in (seed / "keys/secret").iterdir()})
    secret_volume(secrets / "tenants", {"tenants.json": json.dumps(tenants).encode()})
    secret_volume(secrets / "service-key", {"service.key": read("service.key")})
    secret_volume(secrets / "operator-key", {"operator.key": operator_key.encode()})
    secret_volume(secrets / "tls", {"tls.crt": read("tls", "cert.pem"), "tls.key": read("tls", "key.pem"), "ca.crt": read("tls", "ca.pem")})
    secret_volume(secrets / "signing-keys", keys)
    secret_volume(secrets / "ledger-keys", {n: read("ledger", "keys", n) for n in ("log-ed25519.key", "cosigner-mldsa44.key")})
    secret_volume(secrets / "credentials", {"acme.env": b"AWS_REGION=eu-west-1\n"})
    data = w / "data"  # the PVC after the kubelet's fsGroup change
    data.mkdir()
    os.chown(data, 0, UID)
    os.chmod(data, 0o2770)
    run = w / "run"  # the emptyDir
    run.mkdir()
    os.chown(run, 0, UID)
    os.chmod(run, 0o2777)
    script = str(Path(chart, "files/copy-secrets.sh"))
    env = {"PATH": "/usr/bin:/bin", "SECRETS_IN": str(secrets), "SECRETS_OUT": str(run), "DATA_DIR": str(data)}

    # The attack the init container answers: the Secret's own files (0440 through fsGroup)
    # handed to the gateway are refused, by path, before anything binds.
    direct = w / "direct"
    shutil.copytree(seed, direct, symlinks=True)
    subprocess.run(["chown", "-R", f"{UID}:{UID}", str(direct)], check=True)
    (direct / "service.key").unlink()
    os.symlink(secrets / "service-key/service.key", direct / "service.key")
    p = as_gateway_user([bin_, "serve", "--data-dir", str(direct), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=30)
    refused = p.returncode != 0 and "chmod 600" in err and "listening" not in out
    check(refused, "a Secret file mounted as it is (root:fsGroup 0440) is refused by the gateway: the copy is needed"
          + ("" if refused else f" (exit {p.returncode}; it said: {' | '.join((out + err).strip().splitlines()[-3:])})"))

    # A Secret without a key the chart expects stops the init container, naming it.
    broken = w / "broken"
    secret_volume(broken / "tls", {"tls.crt": b"x"})
    (w / "broken-out").mkdir()
    os.chown(w / "broken-out", UID, UID)
    p = as_gateway_user(["/bin/sh", script], env={**env, "SECRETS_IN": str(broken), "SECRETS_OUT": str(w / "broken-out"), "DATA_DIR": ""},
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=30)
    check(p.returncode != 0 and "has no key tls.key" in err, "a TLS Secret without tls.key stops the init container, naming the key")

    p = as_gateway_user(["/bin/sh", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=30)
    if not check(p.returncode == 0, "copy-secrets.sh as uid 65532 over kubelet-style Secret volumes"):
        print(out, err)
        return
    modes = {str(f.relative_to(run)): (f.stat().st_mode & 0o777, f.stat().st_uid) for f in run.rglob("*") if f.is_file()}
    check(modes and all(m == (0o400, UID) for m in modes.values()), f"every copied secret is 0400 and owned by {UID} ({len(modes)} files)")
    # The StatefulSet's mounts, rendered from the chart with every secret given.
    docs = render(chart, {"secrets": {"tenants": {"existingSecret": "t"}, "credentials": {"existingSecret": "c"},
                                      "serviceKey": {"existingSecret": "s"}, "operatorKey": {"existingSecret": "o"},
                                      "tls": {"existingSecret": "tls"}, "signingKeys": {"existingSecret": "k"},
                                      "ledgerKeys": {"existingSecret": "l"}}})
    [sts] = by_kind(docs, "StatefulSet")
    [gw] = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"]
    mounts = []
    for m in gw["volumeMounts"]:
        if m["name"] != "secrets":
            continue
        # DATA, and /etc/trackshift below the work directory (nothing is created on the host).
        target = m["mountPath"].replace("/var/lib/trackshift", str(data)).replace("/etc/trackshift", str(w / "etc/trackshift"))
        mounts.append((str(run / m["subPath"]), target, m.get("readOnly", False)))
    quic, http, opp = free_port(), free_port(), free_port()
    mount_script = ["set -e"]
    for source, target, ro in mounts:
        kind = "-d" if os.path.isdir(source) else "-f"
        mount_script.append(f"[ -e '{target}' ] || {{ mkdir -p \"$(dirname '{target}')\"; "
                            + ("mkdir" if kind == "-d" else "touch") + f" '{target}'; }}")
        mount_script.append(f"mount --bind '{source}' '{target}'")
        if ro:
            mount_script.append(f"mount -o remount,bind,ro '{target}'")
    args = [a.replace("/var/lib/trackshift", str(data)) for a in gw["args"]]
    args = [re.sub(r"^--(listen|http|operator-http)=0\.0\.0\.0:\d+$",
                   lambda mm: f"--{mm.group(1)}=127.0.0.1:{ {'listen': quic, 'http': http, 'operator-http': opp}[mm.group(1)] }", a)
            for a in args]
    mount_script.append("exec setpriv --reuid=%d --regid=%d --groups=%d --inh-caps=-all --bounding-set=-all --no-new-privs "
                        "\"$@\"" % (UID, UID, UID))
    log = open(w / "gateway.log", "w")
    stdout = open(w / "gateway.out", "w")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(mount_script), "sh",
                             bin_, "serve", *args], stdout=stdout, stderr=log,
                            env={"PATH": "/usr/bin:/bin", "TRACKSHIFT_LOG_FORMAT": "json"})
    try:
        base = f"http://127.0.0.1:{http}"
        status = None
        for _ in range(100):
            try:
                status, _ = get(f"{base}/health")
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        if not check(status == 200, f"the gateway starts on the pod's layout as uid {UID} (GET /health = {status})"):
            print((w / "gateway.out").read_text(), (w / "gateway.log").read_text()[-3000:])
            return
        status, _ = get(f"{base}/ready")
        check(status == 200, f"GET /ready = {status} (the readiness probe)")
        out = (w / "gateway.out").read_text()
        check(f"certificate fingerprint: {fingerprint}" in out, "the TLS identity is the Secret's (same fingerprint senders pin)")
        status, body = get(f"{base}/metrics", operator_key)
        check(status == 200 and "trackshift_" in body, "the operator key is the Secret's (GET /metrics with it = 200)")
        status, _ = get(f"http://127.0.0.1:{opp}/metrics")
        check(status == 200, "the operator port serves /metrics without a key (for the ServiceMonitor)")
        status, body = get(f"{base}/v1/jobs", tenant_key)
        check(status == 200, f"tenants.json is the Secret's (the tenant's key lists its jobs: {status})")
        leftovers = [p.name for p in data.iterdir() if p.name in ("service.key", "operator.key", "tenants.json")]
        check(not any((data / n).stat().st_size for n in leftovers if (data / n).exists()),
              f"no secret was written to the data volume ({', '.join(leftovers) or 'none'} are mount points)")
        check(not any((data / "keys").iterdir()),
              "the signing keys are the Secret's: DATA/keys was a read-only mount, and nothing was generated beneath it")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        stdout.close()
    lines = [json.loads(line) for line in (w / "gateway.log").read_text().splitlines() if line.startswith("{")]
    check(lines and all({"timestamp", "level", "message", "target"} <= set(line) for line in lines),
          f"every gateway log line is JSON with timestamp, level, message, target ({len(lines)} lines): what {Path(logging_config).name} parses")
    cfg = yaml.safe_load(Path(logging_config).read_text())
    remap = cfg["transforms"]["trackshift_parse"]["source"]
    for field in ("timestamp", "level", "correlation_id"):
        check(f".{field}" in remap, f"{Path(logging_config).name} reads .{field}")
    check(all(i in cfg["sources"] for i in cfg["transforms"]["trackshift_parse"]["inputs"])
          and all(i in cfg["transforms"] for s in cfg["sinks"].values() for i in s["inputs"]),
          f"{Path(logging_config).name}: every input names a source or transform")


def main() -> int:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "render":
        cmd_render(args[0], args[1], args[2] if len(args) > 2 else None)
    elif cmd == "pod":
        cmd_pod(*args)
    else:
        raise SystemExit(f"unknown command {cmd}")
    return min(failures, 100)


if __name__ == "__main__":
    sys.exit(main())
