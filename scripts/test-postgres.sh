#!/usr/bin/env bash
# Start a throwaway PostgreSQL on 127.0.0.1 for the store tests and print its SQLAlchemy URL.
# Prints nothing (and the PostgreSQL tests skip) when no server can be installed or started here.
set -u
pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pgbin)" ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >/dev/null 2>&1 || exit 0
fi
bin=$(pgbin)
[ -n "$bin" ] && id postgres >/dev/null 2>&1 || exit 0
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d /tmp/scanqc-pg.XXXXXX)
chown postgres "$dir"
# initdb refuses to run as root: run the cluster as the postgres user, trust auth on loopback only.
su postgres -s /bin/sh -c "'$bin/initdb' -D '$dir/data' -A trust -U postgres >'$dir/initdb.log' 2>&1" || exit 0
su postgres -s /bin/sh -c "'$bin/pg_ctl' -D '$dir/data' -l '$dir/server.log' -w -o \"-h 127.0.0.1 -p $port -k $dir\" start >/dev/null 2>&1" || exit 0
echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
