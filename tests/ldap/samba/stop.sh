#!/bin/sh
# Stop the DC by its PID only: TERM, wait up to 10 s, then KILL (samba stops its children).
SRC=$(cd "$(dirname "$0")" && pwd)
DIR=${SAMBA_DIR:-$SRC}
F="$DIR/state/run/samba.bgpid"
[ -f "$F" ] || exit 0
P=$(cat "$F")
kill -TERM "$P" 2>/dev/null || { rm -f "$F"; exit 0; }
i=0; while kill -0 "$P" 2>/dev/null && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.1; done
kill -0 "$P" 2>/dev/null && kill -KILL "$P"
rm -f "$F"
exit 0
