#!/usr/bin/env bash
# The repository's deploy files checked by their own tools (no service, broker or Postgres
# needed): the Prometheus config, the alert rules with their unit tests (each alert fires on the
# series that should fire it, not before its `for`, not on the healthy series beside it), and the
# compose file against the compose schema (no Docker engine needed). scripts/test.sh runs it;
# scripts/ensure-test-tools.sh installs promtool and docker-compose. What the files must say to
# agree with each other and with the service is checked by tests/it/observability/deploy.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "promtool check config deploy/prometheus.yml" >&2
promtool check config deploy/prometheus.yml
echo "promtool test rules deploy/alerts.test.yml" >&2
(cd deploy && promtool test rules alerts.test.yml)
echo "docker-compose config --quiet" >&2
docker-compose --file docker-compose.yml config --quiet
