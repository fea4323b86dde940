#!/usr/bin/env bash
# Set up (if needed) and start the node on its embedded defaults: SQLite index + files under ./data,
# AE title DCMNODE, DIMSE on port 11112, HTTP on port 8080 (DICOMweb at /dicom-web, viewer at /).
# Extra arguments go to `dcmnode serve` (e.g. --host 0.0.0.0 to accept modalities on the network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/dcmnode serve "$@"
