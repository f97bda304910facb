#!/usr/bin/env bash
# Makes sure a PostgreSQL server for dpsd's tests runs on this machine and
# prints the DSN to use, and nothing else, on standard output:
#
#   export DPSD_TEST_POSTGRES="$(bash scripts/ensure-postgres.sh)"
#
# 1. If a server answers on 127.0.0.1:$DPSD_PG_PORT (default 5432) and lets
#    user postgres in without a password, it is used.
# 2. Otherwise Debian's postgresql package is installed when no initdb is
#    found (apt-get, as root or through sudo), and a cluster of the
#    project's own is created with trust authentication in $DPSD_PG_DIR
#    (default /var/tmp/dpsd-postgres), listening on 127.0.0.1 only: on
#    $DPSD_PG_PORT when that port is free, else on $DPSD_PG_FALLBACK_PORT
#    (default 55432), for a machine whose own server wants a password.
#    An existing cluster there is started if it is stopped.
# 3. The test database $DPSD_PG_DB (default dpsd_test) is created if missing.
#
# Idempotent: a second run finds everything in place and only prints the
# DSN. Tests give every test a fresh schema of its own in that database.
# To stop the project's cluster: pg_ctl -D "$DPSD_PG_DIR/data" stop (as the
# postgres user when run as root).
set -euo pipefail

port="${DPSD_PG_PORT:-5432}"
fallback_port="${DPSD_PG_FALLBACK_PORT:-55432}"
pgdir="${DPSD_PG_DIR:-/var/tmp/dpsd-postgres}"
db="${DPSD_PG_DB:-dpsd_test}"
host=127.0.0.1

log() { printf 'ensure-postgres: %s\n' "$*" >&2; }

as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		log "need root to run: $*"
		return 1
	fi
}

# bindir prints the directory of the newest installed server binaries.
bindir() {
	local d
	d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
	if [ -n "$d" ] && [ -x "$d/initdb" ]; then
		echo "$d"
		return 0
	fi
	if command -v initdb >/dev/null 2>&1; then
		dirname "$(command -v initdb)"
		return 0
	fi
	return 1
}

# answers PORT: a server accepts connections on 127.0.0.1:PORT.
answers() {
	if command -v pg_isready >/dev/null 2>&1; then
		pg_isready -q -h "$host" -p "$1" -t 3
	else
		# Without client tools, a TCP connect is the best available sign.
		timeout 3 bash -c "exec 3<>/dev/tcp/$host/$1" 2>/dev/null
	fi
}

# can_login PORT: user postgres gets in without a password.
can_login() {
	command -v psql >/dev/null 2>&1 || return 1
	PGCONNECT_TIMEOUT=5 psql -w -X -q -h "$host" -p "$1" -U postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1
}

# ensure_db PORT: the test database exists.
ensure_db() {
	local exists
	exists="$(PGCONNECT_TIMEOUT=5 psql -w -X -q -h "$host" -p "$1" -U postgres -d postgres -tAc \
		"SELECT 1 FROM pg_database WHERE datname = '$db'")"
	if [ "$exists" != "1" ]; then
		log "creating database $db"
		# A concurrent run may win the race; the check after settles it.
		PGCONNECT_TIMEOUT=5 psql -w -X -q -h "$host" -p "$1" -U postgres -d postgres \
			-c "CREATE DATABASE \"$db\"" >/dev/null 2>&1 || true
		exists="$(PGCONNECT_TIMEOUT=5 psql -w -X -q -h "$host" -p "$1" -U postgres -d postgres -tAc \
			"SELECT 1 FROM pg_database WHERE datname = '$db'")"
		if [ "$exists" != "1" ]; then
			log "could not create database $db"
			return 1
		fi
	fi
}

print_dsn() {
	echo "postgres://postgres@$host:$1/$db?sslmode=disable"
}

install_server() {
	if bindir >/dev/null && command -v psql >/dev/null 2>&1; then
		return 0
	fi
	log "PostgreSQL server binaries not found: installing Debian's postgresql package"
	export DEBIAN_FRONTEND=noninteractive
	as_root apt-get update -qq
	# The package's own cluster may or may not start (no init system in a
	# container); either way the project's cluster below does not depend on it.
	as_root apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null
	bindir >/dev/null || {
		log "initdb not found after installing postgresql"
		return 1
	}
}

# as_owner runs a command as the user that owns the project's cluster:
# PostgreSQL refuses to run as root, so root runs it as user postgres.
as_owner() {
	if [ "$(id -u)" -eq 0 ]; then
		if ! id postgres >/dev/null 2>&1; then
			log "user postgres does not exist (is the postgresql package installed?)"
			return 1
		fi
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# own_cluster PORT: the project's cluster runs on 127.0.0.1:PORT.
own_cluster() {
	local p="$1" bin data
	bin="$(bindir)"
	data="$pgdir/data"
	if [ "$(id -u)" -eq 0 ]; then
		mkdir -p "$pgdir"
		chown postgres: "$pgdir"
		chmod 700 "$pgdir"
	else
		mkdir -p -m 700 "$pgdir"
	fi
	if [ ! -s "$data/PG_VERSION" ]; then
		log "creating the project's cluster in $data"
		as_owner "$bin/initdb" -D "$data" --auth=trust --username=postgres \
			--encoding=UTF8 --locale=C >"$pgdir/initdb.log" 2>&1 || {
			cat "$pgdir/initdb.log" >&2
			return 1
		}
	fi
	if as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
		# Running, perhaps on another port from an earlier run.
		local running
		running="$(sed -n 4p "$data/postmaster.pid" 2>/dev/null || true)"
		if [ -n "$running" ] && [ "$running" != "$p" ]; then
			log "the project's cluster already runs on port $running; using it"
			echo "$running"
			return 0
		fi
	else
		log "starting the project's cluster on $host:$p"
		# Socket in the data directory: /var/run/postgresql may not exist
		# or belong to another server.
		as_owner "$bin/pg_ctl" -D "$data" -l "$pgdir/server.log" -w -t 60 \
			-o "-c listen_addresses=$host -p $p -c unix_socket_directories=$data" start >/dev/null || {
			tail -n 50 "$pgdir/server.log" >&2 || true
			return 1
		}
	fi
	echo "$p"
}

if answers "$port" && can_login "$port"; then
	ensure_db "$port"
	print_dsn "$port"
	exit 0
fi

install_server
# Installing the package may have started its own server on the port.
if answers "$port" && can_login "$port"; then
	ensure_db "$port"
	print_dsn "$port"
	exit 0
fi

use_port="$port"
if answers "$port"; then
	log "a server on $host:$port does not let user postgres in without a password; using the project's own cluster on port $fallback_port"
	use_port="$fallback_port"
fi
use_port="$(own_cluster "$use_port")"
for _ in $(seq 1 30); do
	answers "$use_port" && break
	sleep 1
done
if ! can_login "$use_port"; then
	log "cannot log in to the project's cluster on $host:$use_port (see $pgdir/server.log)"
	exit 1
fi
ensure_db "$use_port"
print_dsn "$use_port"
