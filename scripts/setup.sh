#!/usr/bin/env bash
# Set up dcmnode on a fresh machine: a virtual environment in .venv with dcmnode and its dependencies.
#   bash scripts/setup.sh          the node
#   bash scripts/setup.sh --test   the node, the test dependencies and the Debian packages the tests use (dcmtk, dicom3tools, ...)
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# The node's own Debian packages: tesseract-ocr for Clean Pixel Data (OCR of burned-in text; without it the
# option refuses every instance with the reason).
# Optional for the node: without root or apt the setup goes on and says so (the tests' setup below insists).
if ! command -v tesseract >/dev/null; then
  echo "setup: installing Debian packages for the node (tesseract-ocr)"
  if ! { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      tesseract-ocr >/dev/null; }; then
    echo "setup: could not install tesseract-ocr; de-identification with clean-pixel-data will refuse instances" >&2
  fi
fi

if [[ $want_test -eq 1 ]]; then
  missing=()
  command -v tesseract >/dev/null || missing+=(tesseract-ocr)
  command -v storescu >/dev/null || missing+=(dcmtk)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v npm >/dev/null || missing+=(npm)
  command -v Orthanc >/dev/null || missing+=(orthanc)
  command -v dciodvfy >/dev/null || missing+=(dicom3tools)
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "setup: installing Debian packages for the tests (${missing[*]})"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # The real OHIF viewer for the browser test: @ohif/app from the npm registry ships a prebuilt dist/.
  # (Its onnxruntime and microscopy bundles, 150 MB, are never loaded by the test and are left out.)
  OHIF_VERSION=3.13.2
  ohif=".cache/ohif/$OHIF_VERSION"
  if [[ ! -f "$ohif/package/dist/index.html" ]]; then
    echo "setup: fetching @ohif/app@$OHIF_VERSION (prebuilt viewer) for the browser test"
    mkdir -p "$ohif"
    (cd "$ohif" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null \
      && tar -xzf "ohif-app-$OHIF_VERSION.tgz" --exclude='package/dist/ort' \
           --exclude='package/dist/dicom-microscopy-viewer' && rm "ohif-app-$OHIF_VERSION.tgz")
  fi
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi

extras=""
[[ $want_test -eq 1 ]] && extras="[test]"
stamp=".venv/.dcmnode-installed$extras"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  echo "setup: installing dcmnode$extras and its dependencies into .venv"
  # The CPU build of torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/pip install -q "torch==2.13.0"
  .venv/bin/pip install -q -e ".$extras"
  touch "$stamp"
fi
