#!/usr/bin/env bash
# Real servers for the connector tests, on 127.0.0.1 only, data in a temporary directory.
#
#   scripts/test-servers.sh start [s3] [azure] [sftp] [ftps] [postgres] [softhsm] [tsa] [promtool]
#                                 [alerting] [garage]
#                                                install what is missing, start, wait until ready
#   scripts/test-servers.sh env                  print the environment the tests need (source it)
#   scripts/test-servers.sh stop                 stop every server by its PID, remove the data
#   scripts/test-servers.sh kill|restart NAME... stop / restart one server, keeping its data
#                                                (fault injection for tests)
#
# S3: moto's server mode (PyPI). Azure Blob: Azurite (npm). SFTP: OpenSSH's sshd (Debian
# package openssh-server) on a high port with its own config, host key, user and client
# key (needs root, as CI has). FTPS: vsftpd (Debian package) with explicit TLS, a test CA
# and a leaf certificate for 127.0.0.1, and its own user. PostgreSQL (Debian package
# postgresql; the job store shared by several gateways): a fresh cluster run as the
# postgres user, trust authentication on 127.0.0.1 only. SoftHSM2 (Debian package softhsm2;
# a PKCS#11 module, so no process): its own configuration and token directory, the tests
# initialise their tokens through PKCS#11 itself (no PIN on a command line). The time-stamp
# authority: OpenSSL's `ts -reply` (RFC 3161) behind a small HTTP front (Python's
# http.server), a test CA and a TSA certificate (RSA 2048, extendedKeyUsage timeStamping,
# critical). promtool: Prometheus's checker, taken out of Debian's `prometheus` package
# (downloaded and unpacked, not installed: no service starts). alerting: Prometheus and
# Alertmanager from Debian's prometheus and prometheus-alertmanager packages, unpacked the
# same way; the live alert test starts them itself. Installs are cached in
# $TRACKSHIFT_SERVERS_CACHE (default ~/.cache/trackshift-test-servers); state lives in
# $TRACKSHIFT_SERVERS_RUN (default /tmp/trackshift-test-servers). A server that cannot
# start makes `start` fail with its log: tests never skip silently. The SFTP and FTPS data
# directories each hold `full`, a 16 MiB tmpfs for the full-disk test (unmounted by `stop`).
set -euo pipefail

CACHE=${TRACKSHIFT_SERVERS_CACHE:-$HOME/.cache/trackshift-test-servers}
RUN=${TRACKSHIFT_SERVERS_RUN:-/tmp/trackshift-test-servers}
S3_PORT=${TRACKSHIFT_S3_PORT:-39000}
AZURE_PORT=${TRACKSHIFT_AZURE_PORT:-39010}
SFTP_PORT=${TRACKSHIFT_SFTP_PORT:-39022}
SFTP_USER=tssftp
FTPS_PORT=${TRACKSHIFT_FTPS_PORT:-39021}
FTPS_PASV_MIN=${TRACKSHIFT_FTPS_PASV_MIN:-39100}
FTPS_USER=tsftps
PG_PORT=${TRACKSHIFT_PG_PORT:-39032}
TSA_PORT=${TRACKSHIFT_TSA_PORT:-39050}
GARAGE_PORT=${TRACKSHIFT_GARAGE_PORT:-39040}
GARAGE_VERSION=2.5.0
MOTO_VERSION=5.2.5
AZURITE_VERSION=3.35.0
BUCKET=trackshift-test
# Azurite's well-known development account (public, documented by Microsoft).
AZURE_ACCOUNT=devstoreaccount1
AZURE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

log() { printf 'test-servers: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

port_free() {
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
# Like the servers themselves: connections of a previous run in TIME_WAIT do not count.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

wait_ready() { # NAME LOG CHECK-COMMAND...
    local name=$1 logfile=$2; shift 2
    for _ in $(seq 1 150); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    log "$name did not become ready; its log:"
    tail -n 40 "$logfile" >&2 || true
    return 1
}

setup_python() {
    if [ ! -x "$CACHE/venv/bin/moto_server" ] || [ ! -f "$CACHE/venv/.moto-$MOTO_VERSION" ]; then
        log "installing moto $MOTO_VERSION and azure-storage-blob (PyPI) into $CACHE/venv"
        python3 -m venv "$CACHE/venv"
        "$CACHE/venv/bin/pip" install -q --disable-pip-version-check \
            "moto[server]==$MOTO_VERSION" "azure-storage-blob==12.*"
        touch "$CACHE/venv/.moto-$MOTO_VERSION"
    fi
}

setup_azurite() {
    if [ ! -x "$CACHE/azurite/node_modules/.bin/azurite-blob" ] \
        || [ ! -f "$CACHE/azurite/.azurite-$AZURITE_VERSION" ]; then
        log "installing Azurite $AZURITE_VERSION (npm) into $CACHE/azurite"
        mkdir -p "$CACHE/azurite"
        npm install --prefix "$CACHE/azurite" --no-audit --no-fund --silent \
            "azurite@$AZURITE_VERSION" >&2
        touch "$CACHE/azurite/.azurite-$AZURITE_VERSION"
    fi
}

launch_s3() {
    "$CACHE/venv/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >>"$RUN/s3/server.log" 2>&1 &
    echo $! >"$RUN/s3.pid"
    wait_ready S3 "$RUN/s3/server.log" curl -sf "http://127.0.0.1:$S3_PORT/moto-api/"
    # moto keeps everything in memory: the bucket is (re)created on every launch.
    curl -sf -X PUT "http://127.0.0.1:$S3_PORT/$BUCKET" >/dev/null \
        || die "could not create bucket $BUCKET"
}

start_s3() {
    setup_python
    port_free "$S3_PORT" || die "port $S3_PORT (S3) is busy; set TRACKSHIFT_S3_PORT"
    mkdir -p "$RUN/s3"
    launch_s3
    cat >>"$RUN/env.partial" <<EOF
export TRACKSHIFT_TEST_S3=s3://$BUCKET
export TRACKSHIFT_TEST_S3_ADMIN=http://127.0.0.1:$S3_PORT
export AWS_ENDPOINT=http://127.0.0.1:$S3_PORT
export AWS_ALLOW_HTTP=true
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=trackshift-test
export AWS_SECRET_ACCESS_KEY=trackshift-test-secret
export AWS_EC2_METADATA_DISABLED=true
EOF
    log "S3 (moto) on 127.0.0.1:$S3_PORT, bucket $BUCKET"
}

launch_azure() {
    "$CACHE/azurite/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 \
        --blobPort "$AZURE_PORT" --location "$RUN/azure" --skipApiVersionCheck --loose \
        --disableTelemetry >>"$RUN/azure/server.log" 2>&1 &
    echo $! >"$RUN/azure.pid"
    wait_ready Azurite "$RUN/azure/server.log" \
        bash -c "exec 3<>/dev/tcp/127.0.0.1/$AZURE_PORT"
}

start_azure() {
    setup_azurite
    setup_python
    port_free "$AZURE_PORT" || die "port $AZURE_PORT (Azure) is busy; set TRACKSHIFT_AZURE_PORT"
    mkdir -p "$RUN/azure"
    launch_azure
    local conn="DefaultEndpointsProtocol=http;AccountName=$AZURE_ACCOUNT;AccountKey=$AZURE_KEY;BlobEndpoint=http://127.0.0.1:$AZURE_PORT/$AZURE_ACCOUNT;"
    AZ_CONN="$conn" "$CACHE/venv/bin/python" - <<'EOF' || die "could not create the Azure container"
import os
from azure.storage.blob import BlobServiceClient
BlobServiceClient.from_connection_string(os.environ["AZ_CONN"]).create_container("trackshift-test")
EOF
    cat >>"$RUN/env.partial" <<EOF
export TRACKSHIFT_TEST_AZURE=az://$BUCKET
export AZURE_STORAGE_ACCOUNT_NAME=$AZURE_ACCOUNT
export AZURE_STORAGE_ACCOUNT_KEY='$AZURE_KEY'
export AZURE_STORAGE_ENDPOINT=http://127.0.0.1:$AZURE_PORT/$AZURE_ACCOUNT
export AZURE_ALLOW_HTTP=true
EOF
    log "Azure Blob (Azurite) on 127.0.0.1:$AZURE_PORT, container $BUCKET"
}

# Garage (crates.io), a production S3 server in Rust: for benchmarks (`garage` is not
# started by default; its build takes about 10 minutes once). Multipart completion is a
# metadata operation there, where moto concatenates every part in Python.
setup_garage() {
    if [ ! -x "$CACHE/garage/bin/garage" ] || [ ! -f "$CACHE/garage/.garage-$GARAGE_VERSION" ]; then
        log "building Garage $GARAGE_VERSION (crates.io) into $CACHE/garage (about 10 minutes)"
        cargo install garage --version "$GARAGE_VERSION" --locked --no-default-features \
            --features bundled-libs,sqlite --root "$CACHE/garage" >&2
        touch "$CACHE/garage/.garage-$GARAGE_VERSION"
    fi
}

garage() { "$CACHE/garage/bin/garage" -c "$RUN/garage/garage.toml" "$@"; }

launch_garage() {
    "$CACHE/garage/bin/garage" -c "$RUN/garage/garage.toml" server >>"$RUN/garage/server.log" 2>&1 &
    echo $! >"$RUN/garage.pid"
    wait_ready Garage "$RUN/garage/server.log" garage status
}

start_garage() {
    setup_garage
    port_free "$GARAGE_PORT" || die "port $GARAGE_PORT (Garage) is busy; set TRACKSHIFT_GARAGE_PORT"
    local d="$RUN/garage"
    mkdir -p "$d/meta" "$d/data"
    cat >"$d/garage.toml" <<CONF
metadata_dir = "$d/meta"
data_dir = "$d/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((GARAGE_PORT + 1))"
rpc_public_addr = "127.0.0.1:$((GARAGE_PORT + 1))"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$GARAGE_PORT"
root_domain = ".s3.garage.localhost"
CONF
    launch_garage
    local node
    node=$(garage node id -q 2>/dev/null | cut -d@ -f1)
    garage layout assign -z dc1 -c 10G "$node" >/dev/null
    garage layout apply --version 1 >/dev/null
    garage bucket create "$BUCKET" >/dev/null
    local info
    info=$(garage key create trackshift-test)
    garage bucket allow --read --write --owner "$BUCKET" --key trackshift-test >/dev/null
    local key_id secret
    key_id=$(sed -n 's/^Key ID: *//p' <<<"$info")
    secret=$(sed -n 's/^Secret key: *//p' <<<"$info")
    [ -n "$key_id" ] && [ -n "$secret" ] || die "could not read Garage's new key: $info"
    cat >>"$RUN/env.partial" <<EOF
export TRACKSHIFT_TEST_GARAGE=s3://$BUCKET
export TRACKSHIFT_GARAGE_ENDPOINT=http://127.0.0.1:$GARAGE_PORT
export TRACKSHIFT_GARAGE_KEY_ID=$key_id
export TRACKSHIFT_GARAGE_SECRET=$secret
EOF
    log "S3 (Garage $GARAGE_VERSION) on 127.0.0.1:$GARAGE_PORT, bucket $BUCKET"
}

# A test CA (DIR/ca.pem) and a leaf for 127.0.0.1 and localhost signed by it
# (DIR/server.pem, DIR/server.key): rustls refuses a self-signed CA as the leaf.
test_cert() { # DIR
    local d=$1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=trackshift-test-ca -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj /CN=localhost -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$d/ext.cnf"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
        -CAcreateserial -days 2 -extfile "$d/ext.cnf" -out "$d/server.pem" 2>/dev/null
}

apt_install() { # PACKAGE...
    log "installing $* (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends --no-upgrade "$@" >/dev/null 2>&1 || {
        apt-get update >/dev/null 2>&1
        apt-get install -y --no-install-recommends --no-upgrade "$@" >/dev/null
    }
}

launch_sftp() {
    mkdir -p /run/sshd
    /usr/sbin/sshd -D -e -f "$RUN/sftp/sshd_config" >>"$RUN/sftp/server.log" 2>&1 &
    echo $! >"$RUN/sftp.pid"
    wait_ready sshd "$RUN/sftp/server.log" \
        bash -c "ssh-keyscan -p $SFTP_PORT -t ed25519 127.0.0.1 2>/dev/null | grep -q ssh-ed25519"
}

start_sftp() {
    [ -x /usr/sbin/sshd ] || apt_install openssh-server
    [ "$(id -u)" = 0 ] || die "starting sshd with its own user needs root"
    port_free "$SFTP_PORT" || die "port $SFTP_PORT (SFTP) is busy; set TRACKSHIFT_SFTP_PORT"
    local d="$RUN/sftp"
    mkdir -p "$d/data" /run/sshd
    id "$SFTP_USER" >/dev/null 2>&1 || useradd -M -d "$d/data" -s /bin/sh "$SFTP_USER"
    # No password, but not locked either (sshd without PAM refuses locked accounts).
    usermod -d "$d/data" -p '*' "$SFTP_USER" >/dev/null 2>&1 || true
    chown "$SFTP_USER" "$d/data"
    small_disk "$d/data" "$SFTP_USER"
    ssh-keygen -q -t ed25519 -N '' -C trackshift-test-host -f "$d/host_ed25519"
    ssh-keygen -q -t ed25519 -N '' -C trackshift-test-client -f "$d/client_ed25519"
    cp "$d/client_ed25519.pub" "$d/authorized_keys"
    cat >"$d/sshd_config" <<CONF
Port $SFTP_PORT
ListenAddress 127.0.0.1
HostKey $d/host_ed25519
PidFile $d/sshd.pid
AuthorizedKeysFile $d/authorized_keys
AllowUsers $SFTP_USER
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
StrictModes no
UseDNS no
Subsystem sftp internal-sftp
MaxStartups 100:30:200
MaxSessions 100
CONF
    launch_sftp
    ssh-keyscan -p "$SFTP_PORT" -t ed25519 127.0.0.1 2>/dev/null >"$d/known_hosts"
    cat >>"$RUN/env.partial" <<ENV
export TRACKSHIFT_TEST_SFTP='sftp://$SFTP_USER@127.0.0.1:$SFTP_PORT$d/data?known_hosts=$d/known_hosts'
export TRACKSHIFT_SFTP_KEY=$d/client_ed25519
ENV
    log "SFTP (OpenSSH sshd) on 127.0.0.1:$SFTP_PORT, user $SFTP_USER, directory $d/data"
}

small_disk() { # DIR USER: a 16 MiB file system at DIR/full, for the full-disk tests
    mkdir -p "$1/full"
    if mount -t tmpfs -o size=16m,mode=0755 tmpfs "$1/full" 2>"$RUN/small-disk.err"; then
        chown "$2" "$1/full"
    else
        log "cannot mount a small file system at $1/full: $(cat "$RUN/small-disk.err")"
        echo "export TRACKSHIFT_TEST_FULL_DISK='unavailable: cannot mount a tmpfs here'" >>"$RUN/env.partial"
    fi
}

launch_ftps() {
    mkdir -p /var/run/vsftpd/empty
    /usr/sbin/vsftpd "$RUN/ftps/vsftpd.conf" >>"$RUN/ftps/server.log" 2>&1 &
    echo $! >"$RUN/ftps.pid"
    wait_ready vsftpd "$RUN/ftps/server.log" \
        bash -c "exec 3<>/dev/tcp/127.0.0.1/$FTPS_PORT && head -c 3 <&3 | grep -q 220"
}

start_ftps() {
    [ -x /usr/sbin/vsftpd ] || apt_install vsftpd
    [ "$(id -u)" = 0 ] || die "starting vsftpd with its own user needs root"
    port_free "$FTPS_PORT" || die "port $FTPS_PORT (FTPS) is busy; set TRACKSHIFT_FTPS_PORT"
    local d="$RUN/ftps"
    mkdir -p "$d/data" /var/run/vsftpd/empty
    id "$FTPS_USER" >/dev/null 2>&1 || useradd -M -d "$d/data" -s /bin/sh "$FTPS_USER"
    usermod -d "$d/data" "$FTPS_USER" >/dev/null 2>&1 || true
    chown "$FTPS_USER" "$d/data"
    small_disk "$d/data" "$FTPS_USER"
    local password
    password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    echo "$FTPS_USER:$password" | chpasswd
    test_cert "$d"
    cat >"$d/vsftpd.conf" <<CONF
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port=$FTPS_PORT
background=NO
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
pam_service_name=vsftpd
pasv_enable=YES
pasv_address=127.0.0.1
pasv_min_port=$FTPS_PASV_MIN
pasv_max_port=$((FTPS_PASV_MIN + 99))
port_enable=NO
ssl_enable=YES
force_local_logins_ssl=YES
force_local_data_ssl=YES
ssl_tlsv1=NO
ssl_sslv2=NO
ssl_sslv3=NO
ssl_ciphers=HIGH
require_ssl_reuse=NO
rsa_cert_file=$d/server.pem
rsa_private_key_file=$d/server.key
max_per_ip=200
max_clients=200
CONF
    launch_ftps
    cat >>"$RUN/env.partial" <<ENV
export TRACKSHIFT_TEST_FTPS='ftps://$FTPS_USER@127.0.0.1:$FTPS_PORT$d/data?ca=$d/ca.pem'
export TRACKSHIFT_FTPS_PASSWORD='$password'
ENV
    log "FTPS (vsftpd, explicit TLS) on 127.0.0.1:$FTPS_PORT, user $FTPS_USER, directory $d/data"
}

pg_bin() {
    find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1
}

launch_postgres() {
    local d="$RUN/postgres"
    runuser -u postgres -- "$(pg_bin)/postgres" -D "$d/data" -p "$PG_PORT" -k "$d" \
        -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300 \
        -c ssl=on -c ssl_cert_file="$d/tls/server.pem" -c ssl_key_file="$d/tls/server.key" \
        >>"$RUN/postgres.log" 2>&1 &
    echo $! >"$RUN/postgres.pid"
    wait_ready postgres "$RUN/postgres.log" \
        "$(pg_bin)/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -U trackshift -d postgres
}

start_postgres() {
    [ -n "$(pg_bin)" ] || apt_install postgresql
    [ -n "$(pg_bin)" ] || die "PostgreSQL did not install"
    [ "$(id -u)" = 0 ] || die "starting PostgreSQL as its own user needs root"
    port_free "$PG_PORT" || die "port $PG_PORT (PostgreSQL) is busy; set TRACKSHIFT_PG_PORT"
    local d="$RUN/postgres"
    chmod 755 "$RUN"
    install -d -o postgres -g postgres -m 700 "$d"
    runuser -u postgres -- "$(pg_bin)/initdb" -D "$d/data" -U trackshift -A trust -E UTF8 \
        --locale=C.UTF-8 -N >"$RUN/postgres-initdb.log" 2>&1 || {
        tail -n 20 "$RUN/postgres-initdb.log" >&2
        die "initdb failed"
    }
    # TLS offered (clients choose with sslmode), certificate from a test CA.
    install -d -o postgres -g postgres -m 700 "$d/tls"
    test_cert "$d/tls"
    chown postgres:postgres "$d/tls/server.key" "$d/tls/server.pem"
    chmod 600 "$d/tls/server.key"
    chmod 644 "$d/tls/ca.pem"
    chmod 711 "$d/tls" "$d"
    launch_postgres
    cat >>"$RUN/env.partial" <<ENV
export TRACKSHIFT_TEST_POSTGRES=postgres://trackshift@127.0.0.1:$PG_PORT/postgres
export TRACKSHIFT_TEST_POSTGRES_CA=$d/tls/ca.pem
ENV
    log "PostgreSQL on 127.0.0.1:$PG_PORT, user trackshift (trust, loopback only; TLS offered)"
}

start_softhsm() {
    local module=/usr/lib/softhsm/libsofthsm2.so
    [ -e "$module" ] || apt_install softhsm2
    [ -e "$module" ] || die "SoftHSM2 did not install ($module is missing)"
    local d="$RUN/softhsm"
    install -d -m 700 "$d" "$d/tokens"
    cat >"$d/softhsm2.conf" <<CONF
directories.tokendir = $d/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
    cat >>"$RUN/env.partial" <<ENV
export SOFTHSM2_CONF=$d/softhsm2.conf
export TRACKSHIFT_TEST_PKCS11=$module
ENV
    log "SoftHSM2: PKCS#11 module $module, tokens in $d/tokens (the tests initialise them)"
}

launch_tsa() {
    local d="$RUN/tsa"
    python3 "$d/front.py" "$TSA_PORT" "$d/tsa.cnf" >>"$d/server.log" 2>&1 &
    echo $! >"$RUN/tsa.pid"
    wait_ready TSA "$d/server.log" \
        bash -c "openssl ts -query -digest $(printf '%064d' 0) -sha256 -cert -out $d/probe.tsq 2>/dev/null \
            && curl -sf -H 'Content-Type: application/timestamp-query' --data-binary @$d/probe.tsq \
               http://127.0.0.1:$TSA_PORT/ -o $d/probe.tsr"
}

start_tsa() {
    command -v openssl >/dev/null || apt_install openssl
    port_free "$TSA_PORT" || die "port $TSA_PORT (TSA) is busy; set TRACKSHIFT_TSA_PORT"
    local d="$RUN/tsa"
    install -d -m 700 "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=trackshift-test-tsa-ca \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
        -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=trackshift-test-tsa \
        -keyout "$d/tsa.key" -out "$d/tsa.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=critical,timeStamping\n' >"$d/ext.cnf"
    openssl x509 -req -in "$d/tsa.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/ext.cnf" -out "$d/tsa.pem" 2>/dev/null
    echo 01 >"$d/serial"
    cat >"$d/tsa.cnf" <<CONF
[ tsa ]
default_tsa = tsa_config
[ tsa_config ]
serial = $d/serial
crypto_device = builtin
signer_cert = $d/tsa.pem
certs = $d/ca.pem
signer_key = $d/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.55555.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
CONF
    cat >"$d/front.py" <<'PY'
# RFC 3161 over HTTP (RFC 3161 section 3.4): POST a TimeStampReq, get a TimeStampResp,
# answered by `openssl ts -reply`. One request at a time; 127.0.0.1 only.
import http.server, os, subprocess, sys, tempfile

PORT, CONF = int(sys.argv[1]), sys.argv[2]

class Front(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        if self.headers.get("Content-Type") != "application/timestamp-query":
            self.send_error(415, "expected application/timestamp-query")
            return
        n = int(self.headers.get("Content-Length", "0"))
        if n <= 0 or n > 65536:
            self.send_error(400, "bad length")
            return
        query = self.rfile.read(n)
        with tempfile.TemporaryDirectory() as t:
            q, r = os.path.join(t, "q.tsq"), os.path.join(t, "r.tsr")
            open(q, "wb").write(query)
            done = subprocess.run(["openssl", "ts", "-reply", "-config", CONF, "-queryfile", q,
                                   "-out", r], capture_output=True)
            if done.returncode != 0:
                sys.stderr.write(done.stderr.decode(errors="replace"))
                self.send_error(500, "openssl ts -reply failed")
                return
            body = open(r, "rb").read()
        self.send_response(200)
        self.send_header("Content-Type", "application/timestamp-reply")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("127.0.0.1", PORT), Front).serve_forever()
PY
    launch_tsa
    cat >>"$RUN/env.partial" <<ENV
export TRACKSHIFT_TEST_TSA=http://127.0.0.1:$TSA_PORT/
export TRACKSHIFT_TEST_TSA_CA=$d/ca.pem
ENV
    log "TSA (openssl ts -reply behind HTTP) on 127.0.0.1:$TSA_PORT, CA $d/ca.pem"
}

# A Debian package unpacked (downloaded and unpacked, not installed: no service starts)
# into $CACHE/NAME, once.
deb_unpack() { # PACKAGE NAME BINARY
    local d="$CACHE/$2"
    if [ ! -x "$d/$3" ]; then
        log "unpacking Debian's $1 package into $d"
        rm -rf "$d/deb"
        mkdir -p "$d/deb"
        (cd "$d/deb" && apt-get download "$1" >/dev/null 2>&1) || {
            apt-get update >/dev/null 2>&1
            (cd "$d/deb" && apt-get download "$1" >/dev/null 2>&1)
        } || die "could not download Debian's $1 package"
        dpkg-deb -x "$d"/deb/"$1"_*.deb "$d"
        rm -rf "$d/deb"
    fi
}

start_promtool() {
    local d="$CACHE/prometheus"
    deb_unpack prometheus prometheus usr/bin/promtool
    "$d/usr/bin/promtool" --version >/dev/null 2>&1 || die "promtool does not run"
    echo "export TRACKSHIFT_TEST_PROMTOOL=$d/usr/bin/promtool" >>"$RUN/env.partial"
    log "promtool ($("$d/usr/bin/promtool" --version 2>&1 | head -1))"
}

# Prometheus and Alertmanager for the live alert test (tests/alerts_live.rs): the binaries
# only, from Debian's prometheus and prometheus-alertmanager packages. The test starts them
# itself, on 127.0.0.1 and free ports, with a configuration that scrapes its own gateway,
# and stops them by PID when it ends. Also a 16 MiB file system at $RUN/alerting/full
# (its failing destination: a full disk).
start_alerting() {
    deb_unpack prometheus prometheus usr/bin/prometheus
    deb_unpack prometheus-alertmanager alertmanager usr/bin/prometheus-alertmanager
    local prom="$CACHE/prometheus/usr/bin/prometheus"
    local am="$CACHE/alertmanager/usr/bin/prometheus-alertmanager"
    "$prom" --version >/dev/null 2>&1 || die "prometheus does not run"
    "$am" --version >/dev/null 2>&1 || die "alertmanager does not run"
    # Debian's Alertmanager reads its notification templates from this fixed place (its
    # patch 02-Do_not_embed_blobs); put the package's there, as installing it would (the
    # installed package, which would also start a service on every interface, is avoided).
    local tmpl=/usr/share/prometheus/alertmanager
    if [ ! -e "$tmpl/default.tmpl" ]; then
        [ "$(id -u)" = 0 ] || die "Alertmanager's templates go to $tmpl: needs root"
        install -d "$tmpl"
        install -m 644 "$CACHE/alertmanager$tmpl"/*.tmpl "$tmpl/"
        log "Alertmanager's templates copied to $tmpl"
    fi
    mkdir -p "$RUN/alerting"
    small_disk "$RUN/alerting" root
    local disk="$RUN/alerting/full"
    findmnt -rn "$disk" >/dev/null || disk="unavailable: cannot mount a tmpfs at $disk"
    cat >>"$RUN/env.partial" <<ENV
export TRACKSHIFT_TEST_PROMETHEUS=$prom
export TRACKSHIFT_TEST_ALERTMANAGER=$am
export TRACKSHIFT_TEST_ALERTING_DISK='$disk'
ENV
    log "Prometheus ($("$prom" --version 2>&1 | head -1 | cut -d' ' -f1-3)) and Alertmanager ($("$am" --version 2>&1 | head -1 | cut -d' ' -f1-3)) for the tests to start"
}

descendants() { # PID: every process below it
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

stop_pid() { # FILE
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    rm -f "$1"
    kill -0 "$pid" 2>/dev/null || return 0
    # sshd and vsftpd serve each session in a child: those go too, as in a real crash.
    local kids
    kids=$(descendants "$pid")
    kill -TERM "$pid" $kids 2>/dev/null || true
    for _ in $(seq 1 50); do
        local stat
        stat=$(ps -o stat= -p "$pid" 2>/dev/null || true)
        if [ -z "$stat" ] || [ "${stat#Z}" != "$stat" ]; then return 0; fi
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cmd=${1:-}
shift || true
case "$cmd" in
    start)
        [ -e "$RUN/env" ] && die "already started ($RUN/env exists); run stop first"
        mkdir -p "$RUN" "$CACHE"
        : >"$RUN/env.partial"
        services=("$@")
        [ ${#services[@]} -eq 0 ] && services=(s3 azure sftp ftps postgres softhsm tsa promtool alerting)
        for s in "${services[@]}"; do
            case "$s" in
                s3) start_s3 ;;
                garage) start_garage ;;
                azure) start_azure ;;
                sftp) start_sftp ;;
                ftps) start_ftps ;;
                postgres) start_postgres ;;
                softhsm) start_softhsm ;;
                tsa) start_tsa ;;
                promtool) start_promtool ;;
                alerting) start_alerting ;;
                *) die "unknown server $s (known: s3 azure sftp ftps postgres softhsm tsa promtool alerting garage)" ;;
            esac
        done
        printf 'S3_PORT=%s AZURE_PORT=%s SFTP_PORT=%s FTPS_PORT=%s PG_PORT=%s GARAGE_PORT=%s TSA_PORT=%s\n' \
            "$S3_PORT" "$AZURE_PORT" "$SFTP_PORT" "$FTPS_PORT" "$PG_PORT" "$GARAGE_PORT" "$TSA_PORT" >"$RUN/ports"
        mv "$RUN/env.partial" "$RUN/env"
        ;;
    env)
        cat "$RUN/env"
        ;;
    kill)
        # Fault injection for tests: stop one server, keeping its data and settings.
        [ -e "$RUN/env" ] || die "not started"
        for s in "$@"; do stop_pid "$RUN/$s.pid"; done
        ;;
    restart)
        [ -e "$RUN/env" ] || die "not started"
        # shellcheck disable=SC1091
        source "$RUN/ports"
        for s in "$@"; do
            stop_pid "$RUN/$s.pid"
            case "$s" in
                s3 | azure | sftp | ftps | postgres | garage | tsa) "launch_$s" ;;
                *) die "unknown server $s" ;;
            esac
        done
        ;;
    stop)
        for f in "$RUN"/*.pid; do
            [ -e "$f" ] && stop_pid "$f"
        done
        # The small file systems of the full-disk tests go before their directories.
        { findmnt -rn -o TARGET | grep "^$RUN/" || true; } | sort -r | while read -r m; do
            umount "$m" || umount -l "$m"
        done
        rm -rf "$RUN"
        ;;
    *)
        die "usage: $0 start [s3] [azure] [sftp] [ftps] [postgres] [garage] | env | stop | kill NAME... | restart NAME..."
        ;;
esac
