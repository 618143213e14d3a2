#!/bin/sh
# Stop slapd by its PID only: TERM, wait up to 10 s, then KILL.
SRC=$(cd "$(dirname "$0")" && pwd)
DIR=${LDAP_DIR:-$SRC}
[ -f "$DIR/run/slapd.bgpid" ] || exit 0
P=$(cat "$DIR/run/slapd.bgpid")
kill -TERM "$P" 2>/dev/null || { rm -f "$DIR/run/slapd.bgpid"; exit 0; }
i=0; while kill -0 "$P" 2>/dev/null && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.1; done
kill -0 "$P" 2>/dev/null && kill -KILL "$P"
rm -f "$DIR/run/slapd.bgpid"
exit 0
