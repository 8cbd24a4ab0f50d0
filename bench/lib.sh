# Shell functions the bench/ scripts share (sourced, not run).

# test_certificate DIR HOST: a test CA (DIR/ca.pem, DIR/ca.key) and a certificate for
# HOST signed by it (DIR/up.pem, DIR/up.key), ECDSA P-256 like the gateway's leaves,
# valid for two days. The CA is readable by all (cells and sandboxes trust it).
test_certificate() {
  local dir="$1" host="$2"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench test CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$host" \
    -keyout "$dir/up.key" -out "$dir/up.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$host" >"$dir/up.ext"
  openssl x509 -req -in "$dir/up.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/up.ext" -out "$dir/up.pem" 2>/dev/null
  chmod 644 "$dir/ca.pem"
}
