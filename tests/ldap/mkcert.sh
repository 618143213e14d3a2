#!/bin/sh
# Make a test CA and a server certificate it signs (rustls refuses a self-signed CA
# certificate used as the server's own: CaUsedAsEndEntity).
# Usage: mkcert.sh CERTDIR SUBJECT_ALT_NAMES   e.g. "DNS:localhost,IP:127.0.0.1"
# Writes ca.crt, server.key (0600), server.crt; does nothing if server.crt exists.
set -eu
D=$1
SAN=$2
[ -f "$D/server.crt" ] && [ -f "$D/ca.crt" ] && exit 0
mkdir -p "$D"
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -keyout "$D/ca.key" -out "$D/ca.crt" \
  -subj "/CN=imd test CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$D/server.key" -out "$D/server.csr" \
  -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$SAN" > "$D/ext.cnf"
openssl x509 -req -in "$D/server.csr" -CA "$D/ca.crt" -CAkey "$D/ca.key" -CAcreateserial \
  -days 3650 -out "$D/server.crt" -extfile "$D/ext.cnf" 2>/dev/null
chmod 600 "$D/server.key" "$D/ca.key"
rm -f "$D/server.csr" "$D/ext.cnf"
