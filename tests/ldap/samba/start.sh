#!/bin/sh
# Start the provisioned DC (single process, foreground, backgrounded here), wait for LDAP,
# load the fixtures over LDAPS (unicodePwd needs TLS) and print the PID on stdout.
# Env: SAMBA_DIR (state dir, default: this dir), BULK_USERS (1200).
set -eu
SRC=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$SRC/../../.." && pwd)
DIR=${SAMBA_DIR:-$SRC}
BULK=${BULK_USERS:-1200}
ADMINPASS=${SAMBA_ADMINPASS:-Passw0rd!Lab}
samba -i -M single -s "$DIR/state/etc/smb.conf" > "$DIR/state/log/samba.out" 2>&1 &
echo $! > "$DIR/state/run/samba.bgpid"
i=0
until ldapsearch -x -H ldap://127.0.0.1:389/ -b "" -s base defaultNamingContext >/dev/null 2>&1; do
  i=$((i+1)); [ $i -lt 300 ] || { cat "$DIR/state/log/samba.out" >&2; exit 1; }; sleep 0.1
done
export LDAPTLS_CACERT="$DIR/certs/ca.crt"
# fixtures are loaded once per provisioned state (a restart keeps them)
if [ ! -f "$DIR/state/fixtures.loaded" ]; then
ldapmodify -a -x -H ldaps://127.0.0.1:636 -D Administrator@EXAMPLE.TEST -w "$ADMINPASS" \
  -f "$ROOT/fixtures/directory/ad.ldif" >/dev/null
sh "$ROOT/fixtures/directory/gen-bulk.sh" ad "$BULK" \
  | ldapmodify -a -x -H ldaps://127.0.0.1:636 -D Administrator@EXAMPLE.TEST -w "$ADMINPASS" >/dev/null
touch "$DIR/state/fixtures.loaded"
fi
cat "$DIR/state/run/samba.bgpid"
