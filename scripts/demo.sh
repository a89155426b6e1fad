#!/usr/bin/env bash
set -euo pipefail
echo "demo: in progress"
