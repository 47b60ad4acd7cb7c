#!/usr/bin/env bash
# The programs the test suite drives that pip cannot install: a real
# redis-server (Sentinel and Cluster modes included) and redis-cli (it creates
# the test cluster), headless Chromium and its driver for the browser tests,
# HAProxy for the scale-out tests, Node.js and npm for the JavaScript
# package's test (npm pack, TypeScript), Graphviz' dot for the documentation's
# diagrams. `make test` runs this first; `make docs` runs it with the pairs it
# needs as arguments (command:package ...), checking those alone. As root on a
# Debian-like system it installs what is missing; anywhere else it names the
# missing packages and how to install them, in one line, and stops before
# anything runs.
set -euo pipefail

# command to look for : Debian package that provides it
wanted=(redis-server:redis-server redis-cli:redis-tools chromium:chromium chromedriver:chromium-driver haproxy:haproxy node:nodejs npm:npm dot:graphviz)
[ $# -gt 0 ] && wanted=("$@")

missing=()
for pair in "${wanted[@]}"; do
    command=${pair%%:*} package=${pair#*:}
    command -v "$command" >/dev/null 2>&1 || [ -x "/usr/sbin/$command" ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "make needs the Debian packages ${missing[*]}: install them with" \
         "'sudo apt-get install -y ${missing[*]}' (or your system's equivalent), then run make again" >&2
    exit 1
fi

echo "Installing the Debian packages the tests need: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
# Debian starts the packaged services; the tests run their own, on free ports.
for service in redis-server haproxy; do
    service "$service" stop >/dev/null 2>&1 || true
done
