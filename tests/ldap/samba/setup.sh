#!/bin/sh
# Provision a fresh test domain EXAMPLE.TEST (NetBIOS EXAMPLE) into $SAMBA_DIR/state (~4 s).
set -eu
SRC=$(cd "$(dirname "$0")" && pwd)
DIR=${SAMBA_DIR:-$SRC}
ADMINPASS=${SAMBA_ADMINPASS:-Passw0rd!Lab}
rm -rf "$DIR/state"
mkdir -p "$DIR/certs"
sh "$SRC/../mkcert.sh" "$DIR/certs" "DNS:localhost,DNS:dc1.example.test,DNS:example.test,IP:127.0.0.1"
# samba refuses a group/world-readable key
chmod 600 "$DIR/certs/server.key"
samba-tool domain provision --targetdir="$DIR/state" \
  --realm=EXAMPLE.TEST --domain=EXAMPLE --host-name=dc1 \
  --server-role=dc --dns-backend=NONE --use-rfc2307 \
  --adminpass="$ADMINPASS" \
  --option="interfaces = lo" --option="bind interfaces only = yes" \
  --option="ldb:nosync = true" > "$DIR/provision.log" 2>&1 \
  || { tail -20 "$DIR/provision.log" >&2; exit 1; }
sed "s#@DIR@#$DIR#g" "$SRC/smb.conf.in" > "$DIR/state/etc/smb.conf"
mkdir -p "$DIR/state/cache" "$DIR/state/run" "$DIR/state/log"
