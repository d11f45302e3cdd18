#!/usr/bin/env bash
# Sourced by docker/e2e.sh: what podman needs on a Debian host with no image registry, each step
# skipped when already done (docs/cluster.md, "The end-to-end check"):
#   - the packages: podman, buildah, debootstrap, podman-compose, runc;
#   - CONTAINERS_CONF: runc (the host mixes cgroup v1 and v2, which crun refuses) and ulimits
#     within the host's caps (root cannot raise nofile past 20000 here);
#   - the base images, made with debootstrap from apt's own Debian mirror and imported without a registry:
#     localhost/gloss-base:bookworm (Debian bookworm, whose python3 is 3.11) and
#     localhost/gloss-postgres:bookworm (PostgreSQL on it, the official image's env interface).
# Sets E2E_CACHE, CONTAINERS_CONF, BASE_IMAGE, POSTGRES_IMAGE.
E2E_CACHE=${GLOSS_E2E_CACHE:-/var/cache/gloss-e2e}
BASE_IMAGE=localhost/gloss-base:bookworm
POSTGRES_IMAGE=localhost/gloss-postgres:bookworm
mkdir -p "$E2E_CACHE"

step() { printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

install_packages() {
    local missing=()
    for tool in podman buildah debootstrap podman-compose runc; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    step "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah debootstrap podman-compose runc >/dev/null
}

write_containers_conf() {
    export CONTAINERS_CONF="$E2E_CACHE/containers.conf"
    cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
}

debian_mirror() {  # the mirror apt's own sources name
    local mirror
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -1 | tr -d ' ')
    echo "${mirror:-http://deb.debian.org/debian}"
}

import_base_image() {
    podman image exists "$BASE_IMAGE" && return 0
    step "making $BASE_IMAGE with debootstrap"
    local rootfs="$E2E_CACHE/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$(debian_mirror)" >"$E2E_CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$E2E_CACHE/debootstrap.log"; return 1; }
    tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
}

build_postgres_image() {  # podman's layer cache makes this a no-op when nothing changed
    step "building $POSTGRES_IMAGE"
    podman build --layers -q --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$POSTGRES_IMAGE" \
        -f "$REPO/docker/e2e/postgres.Dockerfile" "$REPO/docker/e2e" >/dev/null
}

install_packages
write_containers_conf
import_base_image
build_postgres_image
