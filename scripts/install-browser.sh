#!/usr/bin/env bash
# Installs what the browser tests need, only when missing: Debian's chromium (Playwright drives
# it through executable_path; browsers are never downloaded) and a CJK font (without one,
# Chinese renders as empty boxes). Used by the Makefile and CI.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
compgen -G "/usr/share/fonts/opentype/noto/NotoSansCJK-*.ttc" >/dev/null || missing+=(fonts-noto-cjk)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "fedgate: please install: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
/usr/bin/chromium --version
