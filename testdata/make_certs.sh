#!/usr/bin/env bash
# Regenerates the throwaway TLS material in this folder (committed; rerun only
# to replace it). Nothing here protects anything: every key is public.
#
#   ca.pem, ca-key.pem            test CA (self-signed, CA:TRUE)
#   server.pem, server-key.pem    leaf signed by ca.pem: CN=localhost,
#                                 SAN DNS:localhost, IP:127.0.0.1, IP:::1
#   other-ca.pem                  an unrelated CA ("untrusted server" tests)
#   other.pem, other-key.pem      leaf signed by other-ca.pem, same names
#   not-a-cert.pem                garbage text (bad --tls-cert / --ca tests)
#
# CA + leaf, not one self-signed cert: rustls (Deno's TLS) rejects a CA
# certificate presented as the server's end-entity certificate. Keys are EC
# P-256 in PKCS#8 PEM ("BEGIN PRIVATE KEY"); validity is 100 years.
#
# usage: bash testdata/make_certs.sh   (needs openssl; installs it with apt
# when missing and running as root)
set -euo pipefail

DAYS=36500
OUT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v openssl >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq openssl >/dev/null
  else
    echo "error: openssl not found (install it: apt-get install openssl)" >&2
    exit 1
  fi
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# new_key FILE: EC P-256 private key, PKCS#8 PEM.
new_key() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
    -out "$WORK/raw.pem"
  openssl pkcs8 -topk8 -nocrypt -in "$WORK/raw.pem" -out "$1"
}

# serial: a random positive 120-bit serial number (no .srl file left behind).
serial() { echo "0x$(openssl rand -hex 15)"; }

cat >"$WORK/ext.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF

# make_ca CERT KEY CN
make_ca() {
  new_key "$2"
  openssl req -new -x509 -config "$WORK/ext.cnf" -extensions ca \
    -key "$2" -subj "/O=tcpecho tests/CN=$3" -days "$DAYS" \
    -set_serial "$(serial)" -sha256 -out "$1"
}

# make_leaf CERT KEY CA_CERT CA_KEY
make_leaf() {
  new_key "$2"
  openssl req -new -config "$WORK/ext.cnf" -key "$2" \
    -subj "/O=tcpecho tests/CN=localhost" -out "$WORK/leaf.csr"
  openssl x509 -req -in "$WORK/leaf.csr" -CA "$3" -CAkey "$4" \
    -set_serial "$(serial)" -days "$DAYS" -sha256 \
    -extfile "$WORK/ext.cnf" -extensions leaf -out "$1" 2>/dev/null
}

make_ca "$OUT/ca.pem" "$OUT/ca-key.pem" "tcpecho test CA"
make_leaf "$OUT/server.pem" "$OUT/server-key.pem" "$OUT/ca.pem" "$OUT/ca-key.pem"

# The other CA's key is not kept: nothing needs to sign with it again.
make_ca "$OUT/other-ca.pem" "$WORK/other-ca-key.pem" "tcpecho untrusted CA"
make_leaf "$OUT/other.pem" "$OUT/other-key.pem" "$OUT/other-ca.pem" \
  "$WORK/other-ca-key.pem"

printf 'this is not a certificate\n' >"$OUT/not-a-cert.pem"

openssl verify -CAfile "$OUT/ca.pem" "$OUT/server.pem" >/dev/null
openssl verify -CAfile "$OUT/other-ca.pem" "$OUT/other.pem" >/dev/null
if openssl verify -CAfile "$OUT/ca.pem" "$OUT/other.pem" >/dev/null 2>&1; then
  echo "error: other.pem verifies against ca.pem" >&2
  exit 1
fi
echo "wrote ca.pem ca-key.pem server.pem server-key.pem other-ca.pem" \
  "other.pem other-key.pem not-a-cert.pem to $OUT" >&2
