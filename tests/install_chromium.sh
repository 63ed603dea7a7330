#!/usr/bin/env bash
# Installs Debian's chromium for the viewer test, when missing. Never fails the build:
# where it cannot be installed, tests/test_viewer.py skips with the reason.
{ command -v chromium || command -v chromium-browser; } >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium: not root or no apt-get; the browser test will be skipped" >&2
  exit 0
fi
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
  >/dev/null 2>&1 || echo "install_chromium: apt-get install chromium failed; skipped" >&2
exit 0
