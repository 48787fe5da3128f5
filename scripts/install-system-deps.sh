#!/usr/bin/env bash
# Installs the Debian packages fedgate's tooling needs (Node.js/npm for buf, Unbound for the
# DNS Response Policy Zone test), only when missing.
set -euo pipefail
missing=()
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v pg_isready >/dev/null 2>&1 || missing+=(postgresql-client)
{ command -v unbound || test -x /usr/sbin/unbound; } >/dev/null 2>&1 || missing+=(unbound)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "fedgate: please install: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
