#!/bin/bash
# Checks NGINX_TLS before the templates are rendered: `off` (the image's
# default), plain HTTP for a TLS proxy in front; `on`, nginx's own HTTPS with
# the certificate the acme service keeps (deploy/compose/https.yml). The
# template includes site/tls-$NGINX_TLS.conf.
# Run by: the nginx image's entrypoint, from /docker-entrypoint.d/ (Dockerfile).
# Copying it: nothing to change.
set -euo pipefail

case ${NGINX_TLS:-} in
    off) ;;
    on)
        if [[ ! -r /etc/nginx/certs/live/fullchain.pem ]]; then
            echo "16-tls.sh: NGINX_TLS=on, but there is no certificate in /etc/nginx/certs/live;" \
                "the acme service puts it there (deploy/compose/https.yml)" >&2
            exit 1
        fi
        ;;
    *)
        echo "16-tls.sh: NGINX_TLS must be on or off, not '${NGINX_TLS:-}'" >&2
        exit 1
        ;;
esac
