#!/usr/bin/env bash
# Upgrade the locked development/CI stack on purpose: resolve the newest versions within pyproject.toml's ranges in
# a fresh venv, write them to requirements/lock.txt (its comment header kept), and run the README's test command
# on them. If the tests pass, commit the lock (and say what changed); if not, fix the code or narrow the ranges in
# pyproject.toml first. Then `bash scripts/setup.sh` brings .venv to the new lock.
#   bash scripts/refresh-lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(mktemp -d)/venv
HARNESS_UNLOCKED=1 VENV="$VENV" bash scripts/setup.sh
NEW=$(mktemp)
grep '^#' requirements/lock.txt > "$NEW"
# a CPU build of torch says +cpu in its version; the lock names the release, which the same file satisfies
"$VENV/bin/python" -m pip freeze --exclude-editable --all | sed -E 's/^(torch==[^+]+)\+cpu$/\1/' >> "$NEW"
diff <(grep -v '^#' requirements/lock.txt) <(grep -v '^#' "$NEW") || true  # what changes
mv "$NEW" requirements/lock.txt
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pytest -q
echo "tests pass on the new lock: commit requirements/lock.txt, then run bash scripts/setup.sh"
