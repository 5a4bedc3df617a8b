#!/usr/bin/env bash
# Bring up every local service the imagejobs tests and `make run` need:
# PostgreSQL, Redis, two Docker engines, two registries and the base image,
# installing the Debian packages that are missing (python3-venv too, for the
# project's virtualenv; for the tests' run, docker-compose, prometheus,
# kubernetes-client, chromium and chromium-driver as well; for `make bench` (--bench), wrk). imagejobs gets a database role and a database of its
# own; the role's password is kept in /etc/imagejobs/imagejobs.env (root only),
# which imagejobs reads.
#
# Every step checks first and acts only if needed, so re-running is cheap and
# safe. Must run as root on Debian 12; it needs no network beyond the Debian
# package mirror (and only when packages are missing).
#
# Usage: deploy/local-services.sh [--no-engine-b] [--bench]
set -euo pipefail

# dockerd, pg_ctlcluster and friends live in sbin, which non-login shells may lack.
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

STATE_DIR=/var/lib/imagejobs
RUN_DIR=/var/run/imagejobs
LOG_DIR=/var/log/imagejobs

ENV_FILE=/etc/imagejobs/imagejobs.env
DB_NAME=imagejobs
DB_ROLE=imagejobs

ENGINE_A_SOCK=/var/run/docker.sock
ENGINE_B_SOCK=$RUN_DIR/docker-b.sock

REGISTRY_A_PORT=5000
REGISTRY_B_PORT=5001
REGISTRY_B_USER=imagejobs
REGISTRY_B_PASS=imagejobs-registry-pass

BASE_IMAGE=imagejobs/busybox:latest
# Applets linked into the base image; each is a symlink to the static busybox.
BASE_APPLETS=(sh echo cat ls sleep true false env printf seq yes head tail mkdir rm cp mv
    touch id wc tr grep sed date test "[" pwd)

# Engines push Docker schema 2 manifests; asking for that type avoids a
# schema 1 conversion, and a missing tag answers 404.
MANIFEST_ACCEPT='application/vnd.docker.distribution.manifest.v2+json'

WITH_ENGINE_B=1
WITH_BENCH=0
SUMMARY=()
TMP_PATHS=()  # removed on exit, also when a step fails
trap 'rm -rf "${TMP_PATHS[@]}"' EXIT

die() {
    echo "local-services: ERROR: $*" >&2
    exit 1
}

log() {
    echo "local-services: $*" >&2
}

usage() {
    echo "usage: $0 [--no-engine-b] [--bench]" >&2
}

# pid_alive PID COMM: PID is a live (not zombie) process named COMM. Killed
# daemons can linger as zombies for a while when PID 1 is slow to reap them,
# and dockerd's own liveness check (kill -0) counts those as running.
pid_alive() {
    local pid=$1 comm=$2 state
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
    state=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
    [[ -n $state && $state != Z ]]
}

# wait_for TIMEOUT_SECONDS DESCRIPTION COMMAND...
# Polls COMMAND every 0.2s; returns non-zero (without exiting) on timeout so
# callers can print context such as a log tail.
wait_for() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# wait_for_daemon PID COMM TIMEOUT_SECONDS DESCRIPTION COMMAND...
# Like wait_for, but gives up at once if the daemon we just started has exited
# (bad flags, port in use), instead of sitting out the whole timeout.
wait_for_daemon() {
    local pid=$1 comm=$2 timeout=$3 what=$4
    shift 4
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ! pid_alive "$pid" "$comm"; then
            log "$comm (pid $pid) exited while waiting for $what"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# Starts a long-lived daemon detached from this shell: its own session (so a
# terminal hangup or the script's process group being signalled does not reach
# it) and no inherited fds (so callers capturing our output are not held open,
# and the daemon does not keep holding this script's lock on fd 9).
# Prints the daemon's pid.
spawn() {
    local logfile=$1
    shift
    setsid nohup "$@" >>"$logfile" 2>&1 </dev/null 9>&- &
    echo $!
}

fail_with_log() {
    local logfile=$1
    shift
    echo "---- last 30 lines of $logfile ----" >&2
    tail -n 30 "$logfile" >&2 || true
    echo "----" >&2
    die "$*"
}

# dk SOCK ARGS...: talk to one engine explicitly, never via DOCKER_HOST/context.
dk() {
    local sock=$1
    shift
    docker -H "unix://$sock" "$@"
}

engine_up() {
    timeout 10 docker -H "unix://$1" info --format '{{.ServerVersion}}' >/dev/null 2>&1
}

# ---------------------------------------------------------------------------

ensure_postgres() {
    if pg_isready -q -h 127.0.0.1 -p 5432; then
        SUMMARY+=("postgres ok")
        return
    fi
    [[ -d /etc/postgresql ]] || die "PostgreSQL is not installed (/etc/postgresql missing)"
    local version
    version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n 1)
    [[ -n $version ]] || die "no PostgreSQL cluster found under /etc/postgresql"
    log "starting PostgreSQL $version/main"
    # --skip-systemctl-redirect: there is no systemd here to hand the start to.
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 9>&- ||
        die "pg_ctlcluster $version main start failed (see /var/log/postgresql/)"
    wait_for 30 "PostgreSQL on 127.0.0.1:5432" pg_isready -q -h 127.0.0.1 -p 5432 ||
        die "PostgreSQL did not become ready on 127.0.0.1:5432 within 30s (see /var/log/postgresql/)"
    SUMMARY+=("postgres ok")
}

# psql_admin ARGS...: psql as the local superuser over the Unix socket, which
# Debian's default peer auth (and trust) lets in; SQL on stdin.
psql_admin() {
    (cd / && runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 "$@")
}

# The password in the env file's DATABASE_URL, when that URL is the one this
# script writes.
env_file_password() {
    [[ -f $ENV_FILE ]] || return 0
    sed -n "s|^DATABASE_URL=postgresql://$DB_ROLE:\([0-9a-f]\{1,\}\)@127.0.0.1:5432/$DB_NAME\$|\1|p;T;q" \
        "$ENV_FILE"
}

# The SCRAM-SHA-256 verifier of the password on stdin, in the form Postgres
# stores: the role gets it instead of the password, which so never reaches the
# server or its log.
scram_verifier() {
    python3 -c '
import base64, hashlib, hmac, os, sys
password, salt, rounds = sys.stdin.read().encode(), os.urandom(16), 4096
salted = hashlib.pbkdf2_hmac("sha256", password, salt, rounds)
client_key = hmac.new(salted, b"Client Key", "sha256").digest()
server_key = hmac.new(salted, b"Server Key", "sha256").digest()
b64 = lambda raw: base64.b64encode(raw).decode()
print(f"SCRAM-SHA-256${rounds}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}")
'
}

# set_role_password CREATE|ALTER PASSWORD
set_role_password() {
    local verb=$1 verifier
    verifier=$(printf '%s' "$2" | scram_verifier)
    # Through stdin, not argv: other users of the machine can read argv in /proc.
    printf "%s ROLE %s LOGIN PASSWORD '%s';\n" "$verb" "$DB_ROLE" "$verifier" | psql_admin -d postgres
}

db_login_works() {
    PGPASSWORD=$1 PGCONNECT_TIMEOUT=5 psql -X -w -q -At -h 127.0.0.1 -p 5432 -U "$DB_ROLE" -d "$DB_NAME" \
        -c 'SELECT 1' >/dev/null 2>&1
}

# A database `imagejobs` made by the superuser (as `make run` did before imagejobs
# had a role) keeps its data: it and its tables and sequences pass to the role.
# REASSIGN OWNED cannot do it, since postgres also owns the system catalogs.
hand_over_database() {
    psql_admin -d "$DB_NAME" <<EOF
BEGIN;
ALTER DATABASE $DB_NAME OWNER TO $DB_ROLE;
DO \$\$
DECLARE relation regclass;
BEGIN
    FOR relation IN
        SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
          AND c.relowner <> '$DB_ROLE'::regrole
          -- A column's sequence passes with its table.
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                            AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO $DB_ROLE', relation);
    END LOOP;
END
\$\$;
COMMIT;
EOF
}

# The role and database imagejobs, the role's password in $ENV_FILE. A password
# once written is kept: the role is given it again only if it does not log in.
ensure_database() {
    local password fresh_password=0 fresh_role=0 owner
    password=$(env_file_password)
    if [[ -z $password && -f $ENV_FILE ]] && grep -q '^DATABASE_URL=' "$ENV_FILE"; then
        SUMMARY+=("database: DATABASE_URL set in $ENV_FILE, left as it is")
        return
    fi
    if [[ -z $password ]]; then
        password=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
        fresh_password=1
    fi

    if [[ -z $(psql_admin -d postgres <<<"SELECT 1 FROM pg_roles WHERE rolname = '$DB_ROLE'") ]]; then
        log "creating database role $DB_ROLE"
        set_role_password CREATE "$password"
        fresh_role=1
    fi
    owner=$(psql_admin -d postgres <<<"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '$DB_NAME'")
    if [[ -z $owner ]]; then
        log "creating database $DB_NAME owned by $DB_ROLE"
        psql_admin -d postgres <<<"CREATE DATABASE $DB_NAME OWNER $DB_ROLE"
    elif [[ $owner != "$DB_ROLE" ]]; then
        log "handing database $DB_NAME and its tables from $owner to $DB_ROLE"
        hand_over_database
    fi
    if ((!fresh_role)) && { ((fresh_password)) || ! db_login_works "$password"; }; then
        log "setting the password of role $DB_ROLE"
        set_role_password ALTER "$password"
    fi
    db_login_works "$password" ||
        die "role $DB_ROLE cannot log in to $DB_NAME on 127.0.0.1:5432 with its password (see pg_hba.conf)"

    if ((fresh_password)); then
        log "writing DATABASE_URL to $ENV_FILE"
        mkdir -p "$(dirname "$ENV_FILE")"
        {
            if [[ -f $ENV_FILE ]]; then
                sed -e '$a\' "$ENV_FILE"
            fi
            printf 'DATABASE_URL=postgresql://%s:%s@127.0.0.1:5432/%s\n' "$DB_ROLE" "$password" "$DB_NAME"
        } | write_if_changed "$ENV_FILE" 0600
    fi
    SUMMARY+=("database $DB_NAME (role $DB_ROLE, password in $ENV_FILE) ok")
}

redis_up() {
    [[ $(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null) == PONG ]]
}

ensure_redis() {
    if redis_up; then
        SUMMARY+=("redis ok")
        return
    fi
    command -v redis-server >/dev/null || die "redis-server is not installed"
    mkdir -p /var/lib/redis /var/log/redis
    log "starting Redis"
    # Throwaway broker/cache for tests: no persistence, loopback only.
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
        --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log 9>&- ||
        die "redis-server failed to start (see /var/log/redis/ci.log)"
    wait_for 30 "Redis on 127.0.0.1:6379" redis_up ||
        fail_with_log /var/log/redis/ci.log "Redis did not answer PING on 127.0.0.1:6379 within 30s"
    SUMMARY+=("redis ok")
}

package_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# disable_at_boot SCRIPT UNIT...: neither the init script nor the systemd units start at boot.
disable_at_boot() {
    update-rc.d "$1" disable >/dev/null
    # systemctl disables units without a running systemd too (it removes their links).
    if command -v systemctl >/dev/null; then
        systemctl disable --quiet "${@:2}"
    fi
}

ensure_packages() {
    local missing=()
    compgen -G '/etc/postgresql/*/main' >/dev/null || missing+=(postgresql)
    command -v redis-server >/dev/null || missing+=(redis-server)
    # Debian's python3 makes no virtualenv without it (ensurepip is split off).
    package_installed python3-venv || missing+=(python3-venv)
    # docker.io also ships a docker CLI; a newer one in /usr/local/bin (if any)
    # stays first on PATH and negotiates the API version down.
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-registry >/dev/null || missing+=(docker-registry)
    # The base image needs a statically linked busybox; the dynamic one would
    # need libc inside the image.
    package_installed busybox-static || missing+=(busybox-static)
    command -v htpasswd >/dev/null || missing+=(apache2-utils)
    command -v git >/dev/null || missing+=(git)
    command -v curl >/dev/null || missing+=(curl)
    # The test suite (the run with both engines) brings up deploy/compose.yaml with it.
    if ((WITH_ENGINE_B)); then
        command -v docker-compose >/dev/null || missing+=(docker-compose)
    fi
    # ... and checks /metrics with promtool and a Prometheus server of its own, renders
    # deploy/kubernetes with kubectl kustomize, and drives the web page (/ui/, /docs) in a
    # headless chromium through chromium-driver. None needs what these packages recommend.
    local lean=()
    if ((WITH_ENGINE_B)); then
        [[ -x /usr/bin/promtool && -x /usr/bin/prometheus ]] || lean+=(prometheus)
        command -v kubectl >/dev/null || lean+=(kubernetes-client)
        [[ -x /usr/bin/chromium ]] || lean+=(chromium)
        [[ -x /usr/bin/chromedriver ]] || lean+=(chromium-driver)
    fi
    # The benchmarks load the API with wrk.
    if ((WITH_BENCH)); then
        command -v wrk >/dev/null || lean+=(wrk)
    fi
    ((${#missing[@]} + ${#lean[@]} == 0)) && return

    log "installing ${missing[*]} ${lean[*]}"
    # The packages would start their own daemons with Debian's settings (dockerd
    # without the mirror, a registry open on every interface); this script starts
    # each service itself, as below, so none may start during the install.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        made_policy=1
        TMP_PATHS+=("$policy")
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
    fi
    apt-get update -qq || die "apt-get update failed"
    if ((${#missing[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" ||
            die "apt-get install ${missing[*]} failed"
    fi
    if ((${#lean[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${lean[@]}" ||
            die "apt-get install ${lean[*]} failed"
    fi
    if ((made_policy)); then
        rm -f "$policy"
    fi
    # Enabled as installed, Debian's units would serve that open registry, and a dockerd
    # without the mirror, from the next boot.
    if [[ " ${missing[*]} " == *" docker-registry "* ]]; then
        disable_at_boot docker-registry docker-registry.service
    fi
    if [[ " ${missing[*]} " == *" docker.io "* ]]; then
        disable_at_boot docker docker.service docker.socket
    fi
    # The tests start a Prometheus of their own; Debian's would listen on every interface.
    if [[ " ${lean[*]} " == *" prometheus "* ]]; then
        disable_at_boot prometheus prometheus.service
    fi
}

# ensure_engine NAME SOCK DATAROOT EXECROOT PIDFILE LOG
# Each engine gets its own exec-root, so dockerd 20.10 runs a separate managed
# containerd per engine (socket under EXECROOT/containerd); they do not clash.
ensure_engine() {
    local name=$1 sock=$2 dataroot=$3 execroot=$4 pidfile=$5 logfile=$6
    if engine_up "$sock"; then
        SUMMARY+=("$name unix://$sock ok")
        return
    fi

    mkdir -p "$(dirname "$sock")" "$dataroot" "$execroot" "$(dirname "$pidfile")" "$(dirname "$logfile")"

    local pid=""
    [[ -s $pidfile ]] && pid=$(<"$pidfile")
    if pid_alive "$pid" dockerd; then
        # Still starting (or shutting down); give it the same grace as a fresh start.
        log "$name: dockerd pid $pid exists but does not answer yet; waiting"
    else
        # A dockerd that died uncleanly leaves pidfiles behind; if those pids are
        # zombies or were reused, dockerd refuses to start or waits forever for
        # a containerd that is not there.
        rm -f "$pidfile"
        local ctr_pidfile=$execroot/containerd/containerd.pid
        if [[ -f $ctr_pidfile ]] && ! pid_alive "$(<"$ctr_pidfile")" containerd; then
            rm -f "$ctr_pidfile"
        fi
        # With --bridge=none every build step's container leaves a network sandbox behind
        # (moby/moby#46583), and dockerd removes them one by one at its next start: after a
        # day of builds that took minutes. This engine's only networks are the predefined
        # ones, which dockerd makes again when the store is gone.
        rm -f "$dataroot/network/files/local-kv.db"
        log "starting $name (dockerd on unix://$sock)"
        # No bridge/iptables/NAT: containers get no outside network here (tests
        # use --network none; the default network is loopback-only). The mirror
        # makes `docker pull busybox` resolve from registry A, not Docker Hub.
        pid=$(spawn "$logfile" dockerd \
            --iptables=false --ip-masq=false --bridge=none \
            --registry-mirror=http://127.0.0.1:$REGISTRY_A_PORT \
            -H "unix://$sock" \
            --data-root "$dataroot" \
            --exec-root "$execroot" \
            --pidfile "$pidfile")
    fi
    wait_for_daemon "$pid" dockerd 120 "$name on unix://$sock" engine_up "$sock" ||
        fail_with_log "$logfile" "$name (dockerd pid $pid) did not come up on unix://$sock"
    SUMMARY+=("$name unix://$sock ok")
}

# write_if_changed PATH MODE: replace PATH with stdin only when content differs,
# so unchanged reruns do not touch files.
write_if_changed() {
    local path=$1 mode=$2 tmp
    tmp=$(mktemp "$path.XXXXXX")
    cat >"$tmp"
    if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        return 1
    fi
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
}

registry_a_up() {
    curl -fsS -o /dev/null --max-time 3 "http://127.0.0.1:$REGISTRY_A_PORT/v2/" 2>/dev/null
}

registry_b_up() {
    [[ $(curl -s -o /dev/null --max-time 3 -w '%{http_code}' "http://127.0.0.1:$REGISTRY_B_PORT/v2/") == 401 ]]
}

# ensure_registry NAME PORT UP_CHECK_FUNC [AUTH_USER AUTH_PASS]
# Config, data and htpasswd live in /var/lib/imagejobs/NAME.
ensure_registry() {
    local name=$1 port=$2 up_check=$3 user=${4:-} pass=${5:-}
    local dir=$STATE_DIR/$name
    local config=$dir/config.yml logfile=$LOG_DIR/$name.log pidfile=$RUN_DIR/$name.pid
    mkdir -p "$dir/data" "$LOG_DIR" "$RUN_DIR"

    local auth=""
    if [[ -n $user ]]; then
        # Basic auth over plain HTTP: distribution 2.8 does not insist on TLS,
        # and engines treat 127.0.0.0/8 as insecure (HTTP) registries, so
        # login/push/pull with credentials work without certificates.
        if ! htpasswd -vb "$dir/htpasswd" "$user" "$pass" >/dev/null 2>&1; then
            log "$name: writing htpasswd for user $user"
            # The registry only accepts bcrypt entries.
            htpasswd -Bbn "$user" "$pass" | write_if_changed "$dir/htpasswd" 0600 || true
        fi
        auth="auth:
  htpasswd:
    realm: imagejobs
    path: $dir/htpasswd
"
    fi

    if write_if_changed "$config" 0644 <<EOF; then
version: 0.1
log:
  fields:
    service: $name
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
$auth
EOF
        if "$up_check"; then
            log "$name: $config changed; restart the registry (kill \$(cat $pidfile)) to apply it"
        fi
    fi

    if ! "$up_check"; then
        log "starting $name (docker-registry on 127.0.0.1:$port)"
        local pid
        pid=$(spawn "$logfile" docker-registry serve "$config")
        echo "$pid" >"$pidfile"
        wait_for_daemon "$pid" docker-registry 30 "$name on 127.0.0.1:$port" "$up_check" ||
            fail_with_log "$logfile" "$name (pid $pid) did not come up on 127.0.0.1:$port" \
                "(is something else listening on that port?)"
    fi

    if [[ -n $user ]]; then
        local base="http://127.0.0.1:$port/v2/" code
        code=$(curl -s -o /dev/null --max-time 3 -w '%{http_code}' -u "$user:$pass" "$base")
        [[ $code == 200 ]] || die "$name: GET /v2/ with the correct credentials returned HTTP $code, expected 200"
        code=$(curl -s -o /dev/null --max-time 3 -w '%{http_code}' -u "$user:not-$pass" "$base")
        [[ $code == 401 ]] || die "$name: GET /v2/ with wrong credentials returned HTTP $code, expected 401"
        SUMMARY+=("$name 127.0.0.1:$port (auth $user) ok")
    else
        SUMMARY+=("$name 127.0.0.1:$port ok")
    fi
}

# Writes a tarball of a minimal root filesystem (static busybox + applet
# symlinks) to stdout. Fixed owners/mtimes keep the layer reproducible.
base_rootfs_tar() {
    local root
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root"
    chmod 1777 "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    local applet
    for applet in "${BASE_APPLETS[@]}"; do
        ln -s busybox "$root/bin/$applet"
    done
    cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
    tar -C "$root" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - .
    rm -rf "$root"
}

# smoke_test SOCK: the engine can actually create and run containers.
smoke_test() {
    local sock=$1 out
    out=$(timeout 60 docker -H "unix://$sock" run --rm --network none "$BASE_IMAGE" sh -c 'echo ok' 2>&1) ||
        die "running a container from $BASE_IMAGE on unix://$sock failed: $out"
    [[ $out == ok ]] || die "container on unix://$sock printed '$out', expected 'ok'"
}

# ensure_base_image SOCK [SOURCE_SOCK]
# Imports the image, or copies it from SOURCE_SOCK so that every engine holds
# the same image ID. A container smoke test runs only when something changed.
ensure_base_image() {
    local sock=$1 source_sock=${2:-}
    if dk "$sock" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        return
    fi
    if [[ -n $source_sock ]]; then
        log "copying $BASE_IMAGE to unix://$sock"
        dk "$source_sock" save "$BASE_IMAGE" | dk "$sock" load -q >/dev/null ||
            die "could not copy $BASE_IMAGE from unix://$source_sock to unix://$sock"
    else
        [[ -x /bin/busybox ]] || die "/bin/busybox is missing (package busybox-static)"
        log "importing $BASE_IMAGE into unix://$sock"
        base_rootfs_tar | dk "$sock" import --change 'CMD ["sh"]' - "$BASE_IMAGE" >/dev/null ||
            die "docker import of $BASE_IMAGE into unix://$sock failed"
    fi
    smoke_test "$sock"
}

# manifest_exists REPO [USER:PASS]
manifest_exists() {
    local url=$1 creds=${2:-}
    local args=(-fsS -o /dev/null --max-time 10 -H "Accept: $MANIFEST_ACCEPT")
    [[ -n $creds ]] && args+=(-u "$creds")
    curl "${args[@]}" "$url" 2>/dev/null
}

# push_once SOCK REGISTRY(host:port) REPO [USER PASS]
# Pushes $BASE_IMAGE as REGISTRY/REPO:latest unless the registry already has it.
push_once() {
    local sock=$1 registry=$2 repo=$3 user=${4:-} pass=${5:-}
    local target=$registry/$repo:latest creds=""
    [[ -n $user ]] && creds="$user:$pass"
    if manifest_exists "http://$registry/v2/$repo/manifests/latest" "$creds"; then
        return
    fi

    log "pushing $BASE_IMAGE to $target"
    # A throwaway client config, so the login never lands in root's ~/.docker.
    local cfg
    cfg=$(mktemp -d)
    TMP_PATHS+=("$cfg")
    if [[ -n $user ]]; then
        # Captured: on success the CLI only warns about the (temporary) plain-text store.
        local out
        out=$(printf '%s' "$pass" |
            docker --config "$cfg" -H "unix://$sock" login -u "$user" --password-stdin "$registry" 2>&1) ||
            die "docker login to $registry as $user failed: $out"
    fi
    dk "$sock" tag "$BASE_IMAGE" "$target"
    docker --config "$cfg" -H "unix://$sock" push -q "$target" >/dev/null ||
        die "docker push $target failed"
    # Drop the extra tag so the engine's image list stays as the tests expect.
    dk "$sock" rmi "$target" >/dev/null
    rm -rf "$cfg"
    manifest_exists "http://$registry/v2/$repo/manifests/latest" "$creds" ||
        die "pushed $target but the registry does not serve its manifest"
}

main() {
    while (($#)); do
        case $1 in
        --no-engine-b) WITH_ENGINE_B=0 ;;
        --bench) WITH_BENCH=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage
            die "unknown argument: $1"
            ;;
        esac
        shift
    done

    ((EUID == 0)) || die "must run as root"
    mkdir -p "$STATE_DIR" "$RUN_DIR" "$LOG_DIR"

    # Serialise concurrent runs (e.g. `make run` and a test session) so no
    # service gets started twice.
    exec 9>"$RUN_DIR/local-services.lock"
    flock -w 300 9 || die "another local-services.sh run holds $RUN_DIR/local-services.lock"

    ensure_packages
    ensure_postgres
    ensure_database
    ensure_redis

    ensure_engine engine-a "$ENGINE_A_SOCK" /var/lib/docker /var/run/docker \
        /var/run/docker.pid "$LOG_DIR/dockerd-a.log"
    if ((WITH_ENGINE_B)); then
        ensure_engine engine-b "$ENGINE_B_SOCK" "$STATE_DIR/docker-b" "$RUN_DIR/docker-b-exec" \
            "$RUN_DIR/docker-b.pid" "$LOG_DIR/dockerd-b.log"
    fi

    ensure_registry registry-a "$REGISTRY_A_PORT" registry_a_up
    ensure_registry registry-b "$REGISTRY_B_PORT" registry_b_up "$REGISTRY_B_USER" "$REGISTRY_B_PASS"

    ensure_base_image "$ENGINE_A_SOCK"
    if ((WITH_ENGINE_B)); then
        ensure_base_image "$ENGINE_B_SOCK" "$ENGINE_A_SOCK"
    fi

    # library/busybox on the mirror lets engines resolve a plain `busybox:latest`.
    push_once "$ENGINE_A_SOCK" "127.0.0.1:$REGISTRY_A_PORT" library/busybox
    # Builds pull every FROM image (a build may use only what its hub could pull itself), so
    # the base image the tests build on is on the mirror too, under its own name.
    push_once "$ENGINE_A_SOCK" "127.0.0.1:$REGISTRY_A_PORT" imagejobs/busybox
    push_once "$ENGINE_A_SOCK" "127.0.0.1:$REGISTRY_B_PORT" private/busybox \
        "$REGISTRY_B_USER" "$REGISTRY_B_PASS"
    SUMMARY+=("base image $BASE_IMAGE ok")

    printf '%s\n' "${SUMMARY[@]}"
}

main "$@"
