#!/usr/bin/env bash
# Make `FROM debian:bookworm-slim` resolvable on engine A where no registry but the local mirror
# is reachable: when the engine can neither find it nor pull it, build a Debian 12 root file
# system with debootstrap from the machine's apt sources, slim it as the official image is, and
# push it to the mirror (127.0.0.1:5000, the engines' Docker Hub mirror) as library/debian.
# Elsewhere the same FROM pulls the ordinary image. Idempotent; a second run does nothing.
#
# Usage (root): deploy/base-image.sh
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

IMAGE=debian:bookworm-slim
MIRROR=127.0.0.1:5000
ENGINE=unix:///var/run/docker.sock
SUITE=bookworm
LOCK=/var/run/imagejobs/base-image.lock
MANIFEST_ACCEPT='application/vnd.docker.distribution.manifest.v2+json'

log() { echo "base-image: $*" >&2; }
die() { echo "base-image: ERROR: $*" >&2; exit 1; }
dk() { docker -H "$ENGINE" "$@"; }

mirror_has_it() {
    curl -fsS -o /dev/null --max-time 10 -H "Accept: $MANIFEST_ACCEPT" \
        "http://$MIRROR/v2/library/debian/manifests/${IMAGE#debian:}" 2>/dev/null
}

# The Debian mirror the machine's own apt uses, so debootstrap needs no other network.
apt_mirror() {
    local uri
    uri=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
    [[ -n $uri ]] || uri=$(awk '$1 == "deb" && $3 == "'$SUITE'" {print $2; exit}' \
        /etc/apt/sources.list 2>/dev/null)
    echo "${uri:-http://deb.debian.org/debian}"
}

# What debuerreotype does to make the -slim variant and to suit apt to image layers.
slim_rootfs() {
    local root=$1
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# The slim variant: documentation, manual pages and translations are left out (copyrights stay).
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
    find "$root/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$root"/usr/share/{groff,info,linda,locale,man}/* "$root/usr/share/lintian/overrides"

    echo 'force-unsafe-io' >"$root/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::GzipIndexes "true";' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
    echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
    echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
    # No service starts from a package's postinst inside an image.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"

    # The sources the official image has, in place of debootstrap's one-line list.
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

    # Left by the build, not part of an image: caches, logs, this host's names.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
        "$root"/var/lib/dpkg/*-old "$root"/tmp/* "$root"/var/tmp/* "$root"/root/.bash_history
    find "$root/var/log" -type f -delete
    : >"$root/etc/machine-id"
    rm -f "$root/etc/hostname" "$root/etc/resolv.conf" "$root/etc/hosts"
}

build_and_push() {
    command -v debootstrap >/dev/null || {
        log "installing debootstrap"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    } || die "apt-get install debootstrap failed"

    local root mirror
    WORK=$(mktemp -d /var/tmp/imagejobs-base.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
    root=$WORK/rootfs
    mirror=$(apt_mirror)
    log "no $IMAGE to be had; debootstrap --variant=minbase $SUITE from $mirror"
    debootstrap --variant=minbase "$SUITE" "$root" "$mirror" >"$WORK/debootstrap.log" 2>&1 || {
        tail -n 20 "$WORK/debootstrap.log" >&2
        die "debootstrap failed"
    }
    slim_rootfs "$root"

    log "importing as $IMAGE and pushing to $MIRROR/library/$IMAGE"
    tar -C "$root" --numeric-owner --sort=name -cf - . |
        dk import --change 'CMD ["bash"]' - "$IMAGE" >/dev/null || die "docker import failed"
    dk tag "$IMAGE" "$MIRROR/library/$IMAGE"
    dk push -q "$MIRROR/library/$IMAGE" >/dev/null || die "docker push to $MIRROR failed"
    # The plain name stays; the mirror's name was only the way there.
    dk rmi "$MIRROR/library/$IMAGE" >/dev/null
    mirror_has_it || die "pushed $IMAGE but $MIRROR does not serve its manifest"
}

main() {
    ((EUID == 0)) || die "must run as root"
    mkdir -p "$(dirname "$LOCK")"
    exec 9>"$LOCK"
    flock -w 900 9 || die "another run holds $LOCK"

    if mirror_has_it; then
        return
    fi
    # Elsewhere the engine holds it or pulls it from Docker Hub.
    if dk image inspect "$IMAGE" >/dev/null 2>&1 || dk pull -q "$IMAGE" >/dev/null 2>&1; then
        return
    fi
    build_and_push
}

main "$@"
