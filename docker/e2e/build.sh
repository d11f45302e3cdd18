#!/usr/bin/env bash
# Sourced by docker/e2e.sh: builds the gloss image with podman on the local base image, with pip
# reaching what the host's pip reaches. The host's pip configuration (`pip config list`: index,
# extra indexes, wheel folders, CA bundle, constraints) travels as the standard PIP_* build
# arguments, and each local folder or file it names is mounted read-only under /host for the build only
# (a `simple` index by its parent folder, where its files lie), so nothing of this host stays in the image.
#   build_image TAG TARGET TORCH_SPEC
pip_build_args() {
    local key value path
    while IFS= read -r line; do
        key=${line%%=*}; key=${key##*.}; value=${line#*=}; value=${value#\'}; value=${value%\'}
        case $key in
            index-url|extra-index-url|find-links|cert|constraint) ;;
            *) continue ;;
        esac
        local mounted=()
        for path in $value; do  # each local path is mounted under /host and named there
            local scheme=""
            [[ $path == file://* ]] && scheme=file:// && path=${path#file://}
            mounted+=("$scheme/host$path")
            path=${path%/}
            [ "${path##*/}" = simple ] && path=${path%/simple}  # a file index links to its ../files
            [ -e "$path" ] && printf -- '-v\n%s:/host%s:ro\n' "$path" "$path"
        done
        echo "--build-arg"
        echo "PIP_$(echo "$key" | tr a-z- A-Z_)=${mounted[*]}"
    done < <("$REPO/.venv/bin/python" -m pip config list 2>/dev/null | grep -E '^global\.')
}

build_image() {
    local tag=$1 target=$2 torch_spec=$3 log="$E2E_CACHE/build-${1//[:\/]/_}.log"
    local -a pip_args
    mapfile -t pip_args < <(pip_build_args)
    step "building $tag (target $target, TORCH_SPEC=$torch_spec; log: $log)"
    podman build --layers --target "$target" -f "$REPO/docker/Dockerfile" -t "$tag" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg TORCH_SPEC="$torch_spec" "${pip_args[@]}" \
        "$REPO" >"$log" 2>&1 || { tail -40 "$log"; return 1; }
}
