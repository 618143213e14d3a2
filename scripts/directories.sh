#!/bin/sh
# Test directory servers for the connector tests: OpenLDAP (slapd on 127.0.0.1:3389/3636) and a
# Samba AD DC (127.0.0.1:389/636, one per machine), both loopback only, stopped by PID.
#   scripts/directories.sh start DIR   install packages if missing, start both, load fixtures,
#                                      print `export NAME=value` lines on stdout (including
#                                      the admin binds the sync tests write the directories with:
#                                      TEST_OPENLDAP_ADMIN_*, TEST_SAMBA_ADMIN_*)
#   scripts/directories.sh stop DIR    stop both by PID
# Running `start` twice reuses servers that still answer. Progress goes to stderr.
# Usage in a shell:  eval "$(scripts/directories.sh start /tmp/imd-dirs)"
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CMD=${1:-}
DIR=${2:-}
[ -n "$CMD" ] && [ -n "$DIR" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
LDAP_PORT=${LDAP_PORT:-3389}
LDAPS_PORT=${LDAPS_PORT:-3636}
export LDAP_DIR="$DIR/openldap" SAMBA_DIR="$DIR/samba" LDAP_PORT LDAPS_PORT
# the rootdn of tests/ldap/openldap/slapd.conf.in is cn=admin / secret; the DC's Administrator
# password is the one tests/ldap/samba/setup.sh provisions (SAMBA_ADMINPASS)
SAMBA_ADMIN_PASSWORD=${SAMBA_ADMINPASS:-Passw0rd!Lab}

log() { echo "directories: $*" >&2; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  if command -v slapd >/dev/null && command -v ldapsearch >/dev/null && command -v samba >/dev/null \
     && command -v samba-tool >/dev/null && [ -d /usr/share/samba/setup/ad-schema ]; then
    return
  fi
  log "installing slapd, ldap-utils and the Samba AD DC packages"
  export DEBIAN_FRONTEND=noninteractive
  # keep apt from starting the system slapd/smbd (which would take *:389)
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  fi
  apt-get update >&2
  apt-get install -y --no-install-recommends slapd ldap-utils openssl \
    samba samba-ad-dc samba-ad-provision winbind krb5-user >&2
}

start() {
  install_packages
  mkdir -p "$LDAP_DIR" "$SAMBA_DIR"
  if alive "$LDAP_DIR/run/slapd.bgpid" \
     && ldapsearch -x -H "ldap://127.0.0.1:$LDAP_PORT/" -b "" -s base >/dev/null 2>&1; then
    log "slapd already running (pid $(cat "$LDAP_DIR/run/slapd.bgpid"))"
  else
    log "starting slapd on 127.0.0.1:$LDAP_PORT/$LDAPS_PORT and loading fixtures"
    "$ROOT/tests/ldap/openldap/start.sh" >/dev/null
  fi
  if alive "$SAMBA_DIR/state/run/samba.bgpid" \
     && ldapsearch -x -H ldap://127.0.0.1:389/ -b "" -s base >/dev/null 2>&1; then
    log "samba already running (pid $(cat "$SAMBA_DIR/state/run/samba.bgpid"))"
  else
    if [ ! -f "$SAMBA_DIR/state/fixtures.loaded" ]; then
      log "provisioning the Samba AD DC (EXAMPLE.TEST)"
      "$ROOT/tests/ldap/samba/setup.sh"
    fi
    log "starting samba on 127.0.0.1:389/636 (fixtures loaded once per provision)"
    "$ROOT/tests/ldap/samba/start.sh" >/dev/null
  fi
  cat <<EOT
export TEST_OPENLDAP_URL=ldap://127.0.0.1:$LDAP_PORT
export TEST_OPENLDAPS_URL=ldaps://127.0.0.1:$LDAPS_PORT
export TEST_OPENLDAP_CA=$LDAP_DIR/certs/ca.crt
export TEST_OPENLDAP_BIND_DN=cn=imd-reader,ou=service,dc=example,dc=com
export TEST_OPENLDAP_BIND_PASSWORD='Reader!Pass1'
export TEST_OPENLDAP_BASE=dc=example,dc=com
export TEST_OPENLDAP_ADMIN_DN=cn=admin,dc=example,dc=com
export TEST_OPENLDAP_ADMIN_PASSWORD='secret'
export TEST_SAMBA_URL=ldap://127.0.0.1:389
export TEST_SAMBA_LDAPS_URL=ldaps://127.0.0.1:636
export TEST_SAMBA_CA=$SAMBA_DIR/certs/ca.crt
export TEST_SAMBA_BIND_DN='CN=imd-reader,OU=Service,DC=example,DC=test'
export TEST_SAMBA_BIND_PASSWORD='Reader!Pass1'
export TEST_SAMBA_BASE=DC=example,DC=test
export TEST_SAMBA_ADMIN_DN='CN=Administrator,CN=Users,DC=example,DC=test'
export TEST_SAMBA_ADMIN_PASSWORD='$SAMBA_ADMIN_PASSWORD'
export TEST_SAMBA_CONF=$SAMBA_DIR/state/etc/smb.conf
EOT
}

stop() {
  log "stopping slapd and samba"
  "$ROOT/tests/ldap/openldap/stop.sh"
  "$ROOT/tests/ldap/samba/stop.sh"
}

case "$CMD" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
