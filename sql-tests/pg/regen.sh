#!/usr/bin/env bash
# Regenerates the expected results of sql-tests/slt/pg/*.slt from a throwaway
# PostgreSQL 15 on 127.0.0.1 (initdb and pg_ctl on PATH; run as the postgres
# user when this runs as root). The same files then run against Tidebase in
# `cargo test`, so anyone can check that Tidebase gives PostgreSQL's answers.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
as=()
if [ "$(id -u)" = 0 ]; then
    chown postgres "$tmp"
    as=(runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as[@]}" initdb -A trust -U postgres -D "$tmp/data" >/dev/null
"${as[@]}" pg_ctl -w -D "$tmp/data" -l "$tmp/log" \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $tmp -c TimeZone=UTC" start >/dev/null
trap '"${as[@]}" pg_ctl -m immediate -D "$tmp/data" stop >/dev/null; rm -rf "$tmp"' EXIT
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
    files=(slt/pg/*.slt)
fi
cargo run -q -p tidebase-sql-tests --bin regen -- \
    "host=127.0.0.1 port=$port user=postgres dbname=postgres" "${files[@]}"
