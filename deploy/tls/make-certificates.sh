#!/bin/sh
# Certificates for a local stack, into directory $1 (kept if already there):
#   ca.crt                  a throwaway CA (trust it: grpcurl -cacert ca.crt)
#   server.crt, server.key  the service's, for localhost, spoke and 127.0.0.1
#                           (SPOKE_TLS_CERT_FILE, SPOKE_TLS_KEY_FILE)
#   client.crt, client.key  a client's, for mutual TLS (SPOKE_TLS_CLIENT_CA_FILE=ca.crt)
# The server's certificate allows client use too: under mutual TLS, `spoke-grpc health`
# presents it. Files are owned by $OWNER (default 10001:10001, the image's user; empty: no
# chown). Not for production: use your own CA or cert-manager there.
set -eu
dir=${1:?usage: make-certificates.sh DIRECTORY}
owner=${OWNER-10001:10001}
mkdir -p "$dir"
if [ -s "$dir/server.crt" ]; then
    echo "certificates already in $dir"
    exit 0
fi
cd "$dir"
new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
issue() {  # name, subject, extensions
    new_key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm "$1.csr" "$1.ext"
}
new_key ca.key
openssl req -x509 -new -key ca.key -subj "/CN=spoke local CA" -days 825 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.crt
issue client "/CN=spoke local client" "extendedKeyUsage=clientAuth"
# Last: its presence means the set is complete.
issue server "/CN=spoke" "subjectAltName=DNS:localhost,DNS:spoke,IP:127.0.0.1
extendedKeyUsage=serverAuth,clientAuth"
rm -f ca.srl ca.key  # nothing more is issued from it
chmod 0600 ./*.key
chmod 0644 ./*.crt
[ -z "$owner" ] || chown "$owner" ./*.key ./*.crt
echo "certificates written to $dir"
