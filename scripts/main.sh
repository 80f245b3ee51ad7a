#!/usr/bin/env bash
# The README's main command: sets up .venv (scripts/setup.sh, idempotent), then runs the main
# job: ERM, HGP and Hutchinson on the embedded ColoredDigits benchmark (no download), 3 trial
# seeds, the documented default hparams. Prints the results table and writes the plots under
# runs/main/report/. Resumable: rerun it to finish an interrupted job or reprint the report.
# Extra arguments go to `hessalign main` (e.g. --output-dir DIR, --jobs N).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/hessalign main "$@"
