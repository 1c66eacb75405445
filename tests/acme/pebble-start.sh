#!/bin/bash
# Starts Pebble, Let's Encrypt's test CA, for the test command's HTTPS tests
# (tests/compose.acme.yml, tests/test_https.py). Never part of a deployment.
#
# Pebble's ACME API is itself HTTPS: this makes a CA for it, whose certificate
# the acme service trusts (REQUESTS_CA_BUNDLE, from the pebble-ca volume). The
# certificates Pebble issues chain to a root of its own, made anew at each
# start and served at https://pebble:15000/roots/0. Pebble checks each HTTP-01
# challenge for real, on port 8080 of the name's address: nginx's plain HTTP
# port on the test network.
set -euo pipefail
out=/srv/pebble-ca
work=$(mktemp -d)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=Pebble API test CA" -keyout "$work/ca.key" -out "$work/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=pebble" \
    -keyout "$work/key.pem" -out "$work/api.csr" 2>/dev/null
openssl x509 -req -in "$work/api.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -days 30 -out "$work/cert.pem" \
    -extfile <(printf '%s\n' "subjectAltName=DNS:pebble,DNS:localhost,IP:127.0.0.1" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" "basicConstraints=critical,CA:FALSE") 2>/dev/null
install -m 0644 "$work/ca.pem" "$out/ca.pem"

cat > "$work/pebble.json" <<JSON
{
  "pebble": {
    "listenAddress": "0.0.0.0:14000",
    "managementListenAddress": "0.0.0.0:15000",
    "certificate": "$work/cert.pem",
    "privateKey": "$work/key.pem",
    "httpPort": 8080,
    "tlsPort": 8443,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false
  }
}
JSON
exec pebble -config "$work/pebble.json"
