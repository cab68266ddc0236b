#!/usr/bin/env bash
# First Let's Encrypt certificate for the compose deployment (docs/deploy.md, step 5), by the
# webroot method through the Nginx of compose.yaml — the same path renewals take.
#
# Nginx cannot start without a certificate, and certbot's webroot challenge needs Nginx: so this
# starts Nginx with a throw-away self-signed certificate, removes it (Nginx keeps it in memory),
# asks certbot for the real one, and reloads Nginx. Run from docker/, after filling in .env.
# STAGING=1 ./init-cert.sh uses Let's Encrypt's staging CA (for a dry run; untrusted
# certificate, no rate limits).
set -euo pipefail
cd "$(dirname "$0")"

if docker compose version >/dev/null 2>&1; then compose=(docker compose)
elif command -v docker-compose >/dev/null; then compose=(docker-compose)
else echo "init-cert: neither 'docker compose' nor 'docker-compose' is available" >&2; exit 1
fi

[ -f .env ] || { echo "init-cert: docker/.env is missing (cp env.example .env)" >&2; exit 1; }
set -a; . ./.env; set +a
: "${SERVER_NAME:?SERVER_NAME is not set in docker/.env}"
: "${ACME_EMAIL:?ACME_EMAIL is not set in docker/.env}"

live="letsencrypt/live/$SERVER_NAME"
if [ -f "letsencrypt/renewal/$SERVER_NAME.conf" ]; then
  echo "init-cert: certbot already manages $SERVER_NAME; renewals run in the certbot service."
  exit 0
fi

echo "== placeholder certificate for $SERVER_NAME (removed again below)"
mkdir -p "$live" certbot-www
openssl req -x509 -nodes -newkey rsa:2048 -days 1 -subj "/CN=$SERVER_NAME" \
  -keyout "$live/privkey.pem" -out "$live/fullchain.pem" 2>/dev/null

echo "== starting PostgreSQL, callsignal and Nginx"
"${compose[@]}" up -d --build nginx
# Nginx has loaded the placeholder; certbot refuses to write into a live/ directory it did not
# create, so it goes now.
rm -rf "$live"

echo "== asking Let's Encrypt for a certificate (HTTP-01 challenge via the webroot)"
"${compose[@]}" run --rm --entrypoint certbot certbot certonly \
  --webroot -w /var/www/certbot -d "$SERVER_NAME" \
  --email "$ACME_EMAIL" --agree-tos --no-eff-email --non-interactive \
  ${STAGING:+--staging}

echo "== reloading Nginx with the new certificate"
"${compose[@]}" exec nginx nginx -s reload
echo "== done: https://$SERVER_NAME/  — now: ${compose[*]} up -d   (starts certbot and coturn too)"
