#!/usr/bin/env bash
# Build the container image imagejobs:latest (and imagejobs:<version>) on engine A from
# deploy/Dockerfile (`make image`; the image tests call it too).
#
# The build context is a staging folder, build/image: the pinned dependencies as wheels made
# here (so the build reaches no package index) and the project's wheel; nothing else of the
# work tree. apt inside the build reaches Debian through the host's network (--network host:
# the engines have no bridge). Unchanged inputs give the same context, so a second run is
# all cache.
#
# Usage (root): deploy/build-image.sh
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

ENGINE=unix:///var/run/docker.sock
IMAGE=imagejobs
CONTEXT=build/image
# The dev venv (make install): its pip makes the wheels, for the same Python 3.11.
PYTHON=.venv/bin/python

log() { echo "build-image: $*" >&2; }
die() { echo "build-image: ERROR: $*" >&2; exit 1; }

# pip, its chatter kept in build/pip.log and shown only when it fails.
pip_logged() {
    "$PYTHON" -m pip "$@" >build/pip.log 2>&1 || {
        tail -n 30 build/pip.log >&2
        die "pip $1 failed (build/pip.log)"
    }
}

# The dependency wheels, made again only when deploy/constraints.txt changed.
stage_wheels() {
    if cmp -s deploy/constraints.txt "$CONTEXT/constraints.txt" && [[ -d $CONTEXT/wheels ]]; then
        return
    fi
    log "making wheels of deploy/constraints.txt"
    rm -rf "$CONTEXT/wheels" "$CONTEXT/constraints.txt"
    pip_logged wheel --no-deps --wheel-dir "$CONTEXT/wheels" --requirement deploy/constraints.txt
    cp deploy/constraints.txt "$CONTEXT/constraints.txt"
}

# The project's wheel. Its file times come from the last commit (SOURCE_DATE_EPOCH), so the same
# sources give the same bytes and the layer that installs it stays cached.
stage_project() {
    local out
    out=$(mktemp -d)
    # setuptools reuses build/lib, which would carry deleted modules into the wheel.
    rm -rf build/lib build/bdist.*
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 315532800) \
        pip_logged wheel --no-deps --wheel-dir "$out" .
    local wheel
    wheel=$(find "$out" -name 'imagejobs-*.whl' -print -quit)
    [[ -n $wheel ]] || die "pip wheel made no wheel of the project"
    mkdir -p "$CONTEXT/dist"
    if ! cmp -s "$wheel" "$CONTEXT/dist/$(basename "$wheel")"; then
        rm -f "$CONTEXT"/dist/*.whl
        mv "$wheel" "$CONTEXT/dist/"
    fi
    rm -rf "$out"
}

main() {
    ((EUID == 0)) || die "must run as root"
    mkdir -p "$CONTEXT"
    # One build at a time: two would stage into the same folder.
    exec 9>build/.image.lock
    flock -w 1800 9 || die "another build holds build/.image.lock"

    bash deploy/base-image.sh
    stage_wheels
    stage_project

    local version revision
    version=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
    revision=$(git describe --always --dirty 2>/dev/null || echo unknown)
    log "docker build $IMAGE:latest ($version, $revision)"
    DOCKER_BUILDKIT=0 docker -H "$ENGINE" build --network host --file deploy/Dockerfile \
        --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
        --tag "$IMAGE:latest" --tag "$IMAGE:$version" "$CONTEXT"

    docker -H "$ENGINE" image ls "$IMAGE:latest" --format "$IMAGE:latest {{.ID}} {{.Size}}"
}

main "$@"
