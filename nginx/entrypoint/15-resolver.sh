#!/bin/sh
# Writes nginx's `resolver` directive: which DNS server nginx asks for the
# app's address (NGINX_UPSTREAM), and for how long it trusts an answer.
# Run by: the nginx image's entrypoint, from /docker-entrypoint.d/ (Dockerfile),
# before it renders the templates; the result, conf.d/00-resolver.conf, is
# included at the http level by nginx.conf.
# Copying it: nothing to change. NGINX_RESOLVER overrides the server, which is
# otherwise the first nameserver of /etc/resolv.conf: Docker's embedded DNS
# (127.0.0.11) under compose, the cluster's DNS on Kubernetes.
# https://nginx.org/en/docs/http/ngx_http_core_module.html#resolver
set -euo pipefail

server=${NGINX_RESOLVER:-$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf)}
if [ -z "$server" ]; then
    echo "$0: no nameserver in /etc/resolv.conf; set NGINX_RESOLVER" >&2
    exit 1
fi
case $server in
    \[*) ;;                        # [2001:db8::53] as given
    *:*) server="[$server]" ;;     # an IPv6 address needs brackets here
esac
# valid=2s: a replaced app container is found within two seconds; the
# rollout (deploy/compose/rollout.sh) waits longer than that between steps.
cat > /etc/nginx/conf.d/00-resolver.conf <<CONF
resolver  $server  valid=2s;
resolver_timeout  3s;
CONF
echo "$0: resolver $server"
