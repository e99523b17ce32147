#!/usr/bin/env bash
# A local development CA and a server certificate for localhost, 127.0.0.1 and ::1.
# Usage: scripts/certs.sh [DIR]   (default: certs/, which git ignores). Existing files are kept.
# For development and tests only: production uses real certificates (see the README).
set -euo pipefail
dir="${1:-certs}"
mkdir -p "$dir"
cd "$dir"
if [[ -s server-chain.pem && -s server.key && -s ca.pem ]]; then
  exit 0
fi
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -subj "/CN=edge-warden development CA" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
cat > server.ext <<'EXT'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 397 \
  -extfile server.ext -out server.pem 2>/dev/null
cat server.pem ca.pem > server-chain.pem
rm -f server.csr server.ext ca.srl
chmod 644 ca.pem server.pem server-chain.pem
echo "certificates in $dir/: ca.pem (trust this in clients), server-chain.pem, server.key"
