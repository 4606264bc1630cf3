#!/usr/bin/env bash
# Installs what the tests run besides the service, when it is missing:
#
# - prometheus, promtool   (Debian package prometheus): a real server scrapes the service, and
#                          promtool lints /metrics and checks deploy/prometheus.yml;
# - docker-compose         (Debian package docker-compose): validates docker-compose.yml
#                          (`config` reads and checks the file; it needs no Docker engine);
# - PyYAML for /usr/bin/python3 (Debian package python3-yaml, which docker-compose depends on):
#                          reads docker-compose.yml into JSON for the test's own checks;
# - stunnel4, openssl      (Debian packages stunnel4, openssl): tests/it/security.rs puts TLS in
#                          front of a Tansu broker (whose own TLS does not come up) and makes
#                          the certificates.
#
# Idempotent: `apt-get update` runs at most once, and only when something is missing. Needs root
# (or sudo) only in that case.
set -euo pipefail

declare -A package_of=(
  [prometheus]=prometheus
  [promtool]=prometheus
  [docker-compose]=docker-compose
  [stunnel4]=stunnel4
  [openssl]=openssl
)

missing=()
for tool in prometheus promtool docker-compose stunnel4 openssl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    package=${package_of[$tool]}
    case " ${missing[*]-} " in
      *" $package "*) ;;
      *) missing+=("$package") ;;
    esac
  fi
done
if ! /usr/bin/python3 -c 'import yaml' >/dev/null 2>&1; then
  missing+=(python3-yaml)
fi

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
  else
    echo "need root to install: ${missing[*]}" >&2
    exit 1
  fi
fi

printf '== installing %s\n' "${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

for tool in prometheus promtool docker-compose stunnel4 openssl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "$tool is still missing after installing ${missing[*]}" >&2
    exit 1
  fi
done
if ! /usr/bin/python3 -c 'import yaml' >/dev/null 2>&1; then
  echo "/usr/bin/python3 cannot import yaml after installing ${missing[*]}" >&2
  exit 1
fi
