#!/bin/sh
# Start a throwaway slapd on loopback and load the fixtures. Prints the PID on stdout.
# Env: LDAP_DIR (state dir, default: this dir), LDAP_PORT (3389), LDAPS_PORT (3636),
#      BULK_USERS (1200).
set -eu
SRC=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$SRC/../../.." && pwd)
DIR=${LDAP_DIR:-$SRC}
PORT=${LDAP_PORT:-3389}
TLSPORT=${LDAPS_PORT:-3636}
BULK=${BULK_USERS:-1200}
mkdir -p "$DIR/run" "$DIR/certs"
rm -rf "$DIR/data"; mkdir -p "$DIR/data"
sh "$SRC/../mkcert.sh" "$DIR/certs" "DNS:localhost,IP:127.0.0.1"
sed -e "s#@LDAP_DIR@#$DIR#g" -e "s#@SRC@#$SRC#g" "$SRC/slapd.conf.in" > "$DIR/run/slapd.conf"
# -d 0 keeps slapd in the foreground, so $! is the real PID
slapd -d 0 -h "ldap://127.0.0.1:$PORT/ ldaps://127.0.0.1:$TLSPORT/" \
      -f "$DIR/run/slapd.conf" > "$DIR/run/slapd.log" 2>&1 &
echo $! > "$DIR/run/slapd.bgpid"
i=0
until ldapsearch -x -H "ldap://127.0.0.1:$PORT/" -b "" -s base namingContexts >/dev/null 2>&1; do
  i=$((i+1)); [ $i -lt 200 ] || { cat "$DIR/run/slapd.log" >&2; exit 1; }; sleep 0.05
done
URL="ldap://127.0.0.1:$PORT/"
ADM="-x -H $URL -D cn=admin,dc=example,dc=com -w secret"
# shellcheck disable=SC2086
ldapmodify -a $ADM -f "$ROOT/fixtures/directory/openldap.ldif" >/dev/null
# shellcheck disable=SC2086
sh "$ROOT/fixtures/directory/gen-bulk.sh" openldap "$BULK" | ldapmodify -a $ADM >/dev/null
cat "$DIR/run/slapd.bgpid"
