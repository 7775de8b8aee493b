#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Build the niaffine image from a local base through the repository's Dockerfile with podman,
# then check it: labels, `--version`/`--help` with `--read-only --network none`, a non-root user
# whose home any uid can write, and the demo dataset run inside it with no network.
#
#   scripts/test-container.sh [--no-build] [--no-demo] [--save-archive FILE]
#
# Environment (defaults in brackets):
#   BASE_IMAGE       base of both Dockerfile stages [localhost/debian-local:bookworm]; the
#                    localhost/debian-local:<suite> images are made here with debootstrap
#   IMAGE            tag of the image built [localhost/niaffine:test]
#   TORCH_WHEELS     a folder with a CPU torch wheel, mounted into the build as PIP_FIND_LINKS
#                    [/opt/wheels when it exists]; TORCH_INDEX_URL and TORCH_VERSION pass through
#   HOST_CA          CA bundle mounted for pip inside the build [/etc/ssl/certs/ca-certificates.crt]
#   DEBIAN_MIRROR    for debootstrap [the machine's apt mirror, else http://deb.debian.org/debian]
#   CONTAINER_WORK   scratch folder (rootfs, logs, outputs) [/var/tmp/niaffine-container]
#   CONTAINERS_CONF  podman settings [containers/containers.conf: runc, lowered ulimits]
#   DEMO_NPROCS      --nprocs of the demo run [2]; DEMO_ARGS more demo options (e.g. --tiny)
#   DEMO_MAX_ERROR_MM  tolerance of the ground-truth check of the demo's transforms [3]
#   HOST_PYTHON      a Python with niaffine's dependencies, for the version and that check
#                    [.venv/bin/python]
#
# Exit status: 0 all checks passed, 1 a check failed, 77 the image was built and checked but the
# demo was skipped because this niaffine has no BIDS-App entry point or demo generator yet.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-local:bookworm}
IMAGE=${IMAGE:-localhost/niaffine:test}
WORK=${CONTAINER_WORK:-/var/tmp/niaffine-container}
HOST_CA=${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}
DEMO_NPROCS=${DEMO_NPROCS:-2}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$REPO/containers/containers.conf}
if [[ -z ${TORCH_WHEELS+x} && -d /opt/wheels ]]; then TORCH_WHEELS=/opt/wheels; fi

BUILD=1 DEMO=1 ARCHIVE=""
while (($#)); do
    case $1 in
        --no-build) BUILD=0 ;;
        --no-demo) DEMO=0 ;;
        --save-archive) ARCHIVE=$2; shift ;;
        -h | --help) sed -n '3,26p' "$0" | sed -E 's/^# ?//'; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[test-container %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
pass() { log "ok: $*"; }

command -v podman >/dev/null || fail "podman not installed (apt-get install -y podman buildah runc)"
mkdir -p "$WORK"

# --------------------------------------------------------------------------------- base image
debian_mirror() {
    local uri
    uri=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
        /etc/apt/sources.list.d 2>/dev/null | grep -oE 'https?://[^ ]+' | head -n1 || true)
    echo "${DEBIAN_MIRROR:-${uri:-http://deb.debian.org/debian}}"
}

make_base() {
    local suite rootfs
    [[ $BASE_IMAGE == localhost/debian-local:* ]] \
        || fail "base image $BASE_IMAGE not found (and only localhost/debian-local:<suite> is made here)"
    command -v debootstrap >/dev/null || fail "debootstrap not installed (apt-get install -y debootstrap)"
    suite=${BASE_IMAGE##*:}
    rootfs=$WORK/rootfs-$suite
    if [[ ! -x $rootfs/usr/bin/apt-get ]]; then
        log "debootstrap $suite from $(debian_mirror) into $rootfs"
        rm -rf "$rootfs"
        debootstrap --variant=minbase "$suite" "$rootfs" "$(debian_mirror)" >"$WORK/debootstrap.log" 2>&1 \
            || fail "debootstrap failed: $WORK/debootstrap.log"
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    log "podman import $rootfs as $BASE_IMAGE"
    tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
}

if ! podman image exists "$BASE_IMAGE"; then
    make_base
fi
pass "base image $BASE_IMAGE"

# ------------------------------------------------------------------------------------- build
VCS_REF=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
PY=${HOST_PYTHON:-$REPO/.venv/bin/python}
[[ -x $PY ]] || PY=python3
if [[ -z ${VERSION:-} ]]; then
    VERSION=$( (cd "$REPO" && "$PY" -m setuptools_scm 2>/dev/null | tail -n1) || true)
fi
VERSION=${VERSION:-0.1.0.dev0}

if ((BUILD)); then
    args=(
        build --isolation=chroot --format docker --layers -f "$REPO/Dockerfile" -t "$IMAGE"
        --build-arg "BASE_IMAGE=$BASE_IMAGE"
        --build-arg "VERSION=$VERSION"
        --build-arg "VCS_REF=$VCS_REF"
        --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    )
    if [[ -f $HOST_CA ]]; then
        args+=(-v "$HOST_CA:/host-ca.crt:ro" --build-arg PIP_CERT=/host-ca.crt)
    fi
    if [[ -n ${TORCH_WHEELS:-} ]]; then
        args+=(-v "$TORCH_WHEELS:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels)
    fi
    [[ -n ${TORCH_INDEX_URL:-} ]] && args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
    [[ -n ${TORCH_VERSION:-} ]] && args+=(--build-arg "TORCH_VERSION=$TORCH_VERSION")
    log "podman ${args[*]} $REPO  (log: $WORK/build.log)"
    SECONDS=0
    podman "${args[@]}" "$REPO" >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; fail "build"; }
    pass "built $IMAGE in ${SECONDS}s"
fi

# ------------------------------------------------------------------------------------ checks
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "image size: $((size / 1024 / 1024)) MiB"
label() { podman image inspect --format "{{index .Labels \"org.opencontainers.image.$1\"}}" "$IMAGE"; }
if ((!BUILD)); then  # an image built earlier: check it against its own labels
    VERSION=$(label version) VCS_REF=$(label revision)
fi
[[ $(label version) == "$VERSION" ]] || fail "label version is '$(label version)', expected $VERSION"
[[ $(label revision) == "$VCS_REF" ]] || fail "label revision is '$(label revision)', expected $VCS_REF"
pass "labels version=$VERSION revision=$VCS_REF"

RO=(run --rm --read-only --network none)
podman run --rm --entrypoint python "$IMAGE" -c 'import niaffine' \
    || fail "niaffine cannot be imported in the image"
has_app=1
podman run --rm --entrypoint python "$IMAGE" -c 'import niaffine.bidsapp.run' 2>/dev/null || has_app=0

if ((has_app)); then
    out=$(podman "${RO[@]}" "$IMAGE" --version 2>&1) || fail "--version: $out"
    [[ $out == *"$VERSION"* ]] || fail "--version printed '$out', expected $VERSION"
    pass "--version (read-only, no network): $out"
    out=$(podman "${RO[@]}" "$IMAGE" --help 2>&1) || fail "--help: $out"
    [[ $out == *participant* ]] || fail "--help does not mention participant"
    pass "--help (read-only, no network)"
    out=$(podman "${RO[@]}" -u 4321:4321 "$IMAGE" --version 2>&1) || fail "--version as uid 4321: $out"
    pass "--version as an arbitrary uid (read-only): $out"
else
    log "SKIP --version/--help: niaffine.bidsapp.run is not in this niaffine yet"
fi

uid=$(podman run --rm --entrypoint id "$IMAGE" -u)
[[ $uid != 0 ]] || fail "the image runs as root"
pass "default user uid $uid"
podman run --rm -u 4321:4321 --network none --entrypoint python "$IMAGE" -c '
import os, pathlib, tempfile
home = pathlib.Path.home()
assert str(home) == "/home/niaffine", home
(home / "probe.txt").write_text("ok")
(home / ".cache" / "probe").mkdir(parents=True, exist_ok=True)
assert os.environ["OMP_NUM_THREADS"] == "1"
import matplotlib.pyplot, nipype, torch, deepbet  # noqa: F401 - import cost only
print("home writable by uid", os.getuid(), "; torch", torch.__version__)
' || fail "home not writable by an arbitrary uid, or an import failed"
pass "home writable by uid 4321; imports work with no network"

# ------------------------------------------------------------------------------------ demo
# The README's demo (`python -m niaffine.demo`: generate the dataset, participant and group
# levels) inside the image: read-only root filesystem, no network, an arbitrary uid.
has_demo=1
podman run --rm --entrypoint python "$IMAGE" -c 'import niaffine.demo' 2>/dev/null || has_demo=0
if ((DEMO)) && ((has_app && has_demo)); then
    out_dir=$WORK/demo-out
    rm -rf "$out_dir"
    mkdir -p "$out_dir"
    chmod 0777 "$out_dir"
    run_as=(run --rm --read-only --network none -u 4321:4321 -v "$out_dir:/out")
    log "python -m niaffine.demo /out/demo --nprocs $DEMO_NPROCS ${DEMO_ARGS:-} (read-only, no network, uid 4321)"
    SECONDS=0
    # shellcheck disable=SC2086 # DEMO_ARGS is a list of words
    podman "${run_as[@]}" --entrypoint python "$IMAGE" -m niaffine.demo /out/demo \
        --nprocs "$DEMO_NPROCS" ${DEMO_ARGS:-} >"$WORK/demo.log" 2>&1 \
        || { tail -n 40 "$WORK/demo.log" >&2; fail "python -m niaffine.demo (log: $WORK/demo.log)"; }
    pass "demo in ${SECONDS}s"
    bids=$out_dir/demo/bids
    deriv=$out_dir/demo/derivatives
    [[ -f $deriv/dataset_description.json ]] || fail "no dataset_description.json in the derivatives"
    nsub=$(find "$bids" -maxdepth 1 -name 'sub-*' -type d | wc -l)
    nsubout=$(find "$deriv" -maxdepth 1 -name 'sub-*' -type d | wc -l)
    nxfm=$(find "$deriv" -name '*_xfm.txt' | wc -l)
    nhtml=$(find "$deriv" -maxdepth 1 -name 'sub-*.html' | wc -l)
    ((nsub > 0 && nsubout == nsub)) || fail "$nsub subjects in, $nsubout subject folders out"
    ((nhtml == nsub)) || fail "$nhtml subject reports for $nsub subjects"
    [[ -f $deriv/group/index.html ]] || fail "no group report"
    if [[ -n $(find "$deriv/logs" -name 'crash-*' 2>/dev/null) ]]; then
        fail "crash files in $deriv/logs"
    fi
    pass "demo outputs: $nsubout subjects, $nxfm transforms, $nhtml subject reports, group report"
    # the entry point on the same outputs: group level again, read-only image
    podman "${run_as[@]}" "$IMAGE" /out/demo/bids /out/demo/derivatives group \
        >>"$WORK/demo.log" 2>&1 || fail "niaffine group through the entry point"
    pass "entry point: niaffine /out/demo/bids /out/demo/derivatives group"
    # accuracy against the demo's ground truth, read by the host's niaffine
    if PYTHONPATH=$REPO "$PY" -c 'import niaffine.io' 2>/dev/null; then
        PYTHONPATH=$REPO "$PY" "$REPO/scripts/check_demo_outputs.py" "$deriv" "$bids" \
            --max-error-mm "${DEMO_MAX_ERROR_MM:-3}" 2>&1 | tee -a "$WORK/demo.log" >&2 \
            || fail "demo transforms against the ground truth"
        pass "demo transforms match the ground truth"
    else
        log "SKIP ground-truth check: no host Python with niaffine ($PY; set HOST_PYTHON)"
    fi
fi

if [[ -n $ARCHIVE ]]; then
    rm -f "$ARCHIVE"
    podman save --format docker-archive -o "$ARCHIVE" "$IMAGE"
    pass "docker-archive $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1)) for apptainer build"
fi

if ((DEMO)) && ! ((has_app && has_demo)); then
    log "SKIP demo: niaffine.bidsapp.run or niaffine.demo is not in this niaffine yet"
    exit 77
fi
log "all container checks passed"
