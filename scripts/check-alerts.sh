#!/usr/bin/env bash
# Checks and unit-tests the Prometheus alert rules of llm-proxy with the real
# promtool (Debian's `prometheus` package): syntax, then each alert firing and
# not firing on the input series of deploy/prometheus/alerts_test.yml.
set -euo pipefail
cd "$(dirname "$0")/../deploy/prometheus"
promtool check rules alerts.yml
promtool test rules alerts_test.yml
