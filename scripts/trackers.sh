#!/bin/sh
# Python with TensorBoard and MLflow (the trackers reasonrl logs to), for the tests that read
# reasonrl's event files with TensorBoard's own reader and start a real MLflow server:
#   scripts/trackers.sh scripts/tensorboard_read.py RUN/tb
#   scripts/trackers.sh -m mlflow server --host 127.0.0.1 --port 5000
# On first use it makes its venv under the user cache from the hash-pinned trackers.txt.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
pins=$(sha256sum "$here/trackers.txt" | cut -c1-12)
venv="${XDG_CACHE_HOME:-$HOME/.cache}/reasonrl/venvs/trackers-$pins"
if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$(dirname "$venv")"
  tmp="$venv.tmp.$$"
  python3 -m venv "$tmp" >&2
  "$tmp/bin/python" -m pip install --quiet --require-hashes --no-deps -r "$here/trackers.txt" >&2
  mv "$tmp" "$venv" 2>/dev/null || rm -rf "$tmp" # another process made it first
fi
exec "$venv/bin/python" "$@"
