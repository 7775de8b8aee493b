#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Where Apptainer is not installed (it is not packaged for Debian 12), run the image the way
# `apptainer run --cleanenv niaffine.sif ...` would, from the docker-archive that
# containers/niaffine.def bootstraps from:
#
#   scripts/sif-standin.sh niaffine-docker.tar [--bind SRC:DST[:ro]]... -- niaffine --version
#
# It flattens the archive's layers into a folder (as `apptainer build` does), then runs the
# command in it with the root filesystem read-only (a SIF is), a private /tmp and /dev/shm, the environment
# cleared (--cleanenv) and rebuilt from the image's ENV then the definition's %environment,
# as the calling uid or SIF_UID (Apptainer runs as the caller, never as the image's USER).
# Needs root (unshare, mount, chroot). The flattened tree is kept in SIF_ROOTFS for reruns.
# This is a stand-in: it checks what the image and the definition file promise, not Apptainer.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
archive=${1:?usage: $0 ARCHIVE [--bind SRC:DST[:ro]]... -- COMMAND...}
shift
rootfs=${SIF_ROOTFS:-${archive%.tar}-rootfs}
run_uid=${SIF_UID:-$(id -u)}
def_file=${SIF_DEF:-$REPO/containers/niaffine.def}
binds=()
while (($#)); do
    case $1 in
        --bind | -B) binds+=("$2"); shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
(($#)) || { echo "no command given" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "run as root (unshare/mount/chroot)" >&2; exit 1; }

manifest_value() {  # manifest_value EXPR: a value from manifest.json
    tar -xOf "$archive" manifest.json | python3 -c "import json, sys; m = json.load(sys.stdin)[0]; $1"
}

if [[ ! -f $rootfs/.flattened || $archive -nt $rootfs/.flattened ]]; then
    echo "flattening $archive into $rootfs" >&2
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    while read -r layer; do
        # OCI whiteouts: .wh.NAME hides NAME of the layers below, .wh..wh..opq a folder's content
        while IFS= read -r entry; do
            entry=${entry#./}
            dir=$(dirname "$entry") name=$(basename "$entry")
            if [[ $name == .wh..wh..opq ]]; then
                find "$rootfs/$dir" -mindepth 1 -maxdepth 1 -exec rm -rf {} + 2>/dev/null || true
            elif [[ $name == .wh.* ]]; then
                rm -rf "${rootfs:?}/$dir/${name#.wh.}"
            fi
        done < <(tar -xOf "$archive" "$layer" | tar -t | grep -E '(^|/)\.wh\.' || true)
        tar -xOf "$archive" "$layer" | tar -x -C "$rootfs" --numeric-owner
        find "$rootfs" -name '.wh.*' -delete
    done < <(manifest_value 'print("\n".join(m["Layers"]))')
    config=$(manifest_value 'print(m["Config"])')
    tar -xOf "$archive" "$config" | python3 -c '
import json, shlex, sys
env = json.load(sys.stdin)["config"].get("Env") or []
print("\n".join("export " + shlex.quote(item) for item in env))' >"$rootfs/.docker-env.sh"
    # the definition's %environment section, as Apptainer sources it after the image's ENV
    awk '/^%environment/{on=1; next} /^%/{on=0} on' "$def_file" >"$rootfs/.def-env.sh"
    touch "$rootfs/.flattened"
fi

mounts=""
for bind in "${binds[@]}"; do
    IFS=: read -r src dst mode <<<"$bind"
    mounts+="mkdir -p '$rootfs$dst' && mount --bind '$src' '$rootfs$dst' && "
    [[ ${mode:-} == ro ]] && mounts+="mount -o remount,bind,ro '$rootfs$dst' && "
done
command=$(printf '%q ' "$@")
inner="set -e; . /.docker-env.sh; . /.def-env.sh; cd /tmp; exec $command"
unshare --mount --pid --fork bash -c "
set -euo pipefail
mount --make-rprivate /
mount --bind '$rootfs' '$rootfs'
mount -t proc proc '$rootfs/proc'
mount -t tmpfs -o mode=1777 tmpfs '$rootfs/tmp'
mount --rbind /dev '$rootfs/dev'
mount -t tmpfs -o mode=1777 tmpfs '$rootfs/dev/shm'
$mounts true
mount -o remount,bind,ro '$rootfs'
exec chroot --userspec=$run_uid:$run_uid '$rootfs' /usr/bin/env -i \
    HOME=/tmp USER=user TERM=dumb /bin/bash -c $(printf '%q' "$inner")
"
