#!/bin/bash
# The Strict-Transport-Security value for what nginx answers itself (static
# files, its own error pages): exactly the one Django sends on pages, computed
# from the same variables with the same defaults (app/config/settings.py):
#   DJANGO_HTTPS [true when SITE_DOMAINS names a site, else false],
#   DJANGO_HSTS_SECONDS [31536000 with DJANGO_HTTPS, else 0],
#   DJANGO_HSTS_INCLUDE_SUBDOMAINS [DJANGO_HTTPS], DJANGO_HSTS_PRELOAD [false].
# Run by: the nginx image's entrypoint, from /docker-entrypoint.d/ (Dockerfile),
# before nginx starts. It writes $app_strict_transport_security into
# conf.d/00-strict-transport-security.conf (empty: no header), which the site
# (site/app.conf) sends only over https (nginx's own, or as the trusted proxy
# says), as Django does.
# Copying it: nothing to change; give nginx the five variables the app gets.
# A value the app would refuse to start with stops nginx too.
set -euo pipefail

conf=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}/00-strict-transport-security.conf

# A variable as django-environ reads it (config/env.py): unset, the default;
# set, its value, even empty. Spaces at either end do not count.
read_setting() {
    if [[ -v $1 ]]; then
        local value=${!1}
        value=${value#"${value%%[![:space:]]*}"}
        printf '%s' "${value%"${value##*[![:space:]]}"}"
    else
        printf '%s' "$2"
    fi
}

# A whole number as Python's int() reads it: a sign, digits, single underscores between them.
is_int() {
    [[ $1 =~ ^[+-]?[0-9]+(_[0-9]+)*$ ]]
}

# env.bool: a whole number is true unless zero; otherwise true, on, ok, y, yes
# or 1 in any case is true, and anything else (the empty value too) false.
read_flag() {
    local value
    value=$(read_setting "$1" "$2")
    if is_int "$value"; then
        if [[ $value == *[1-9]* ]]; then echo true; else echo false; fi
        return
    fi
    case ${value,,} in
        true | on | ok | y | yes | 1) echo true ;;
        *) echo false ;;
    esac
}

# SITE_DOMAINS: names separated by commas; blanks between them do not count.
site_domains=$(read_setting SITE_DOMAINS "")
https_default=false
if [[ -n ${site_domains//[,[:space:]]/} ]]; then https_default=true; fi
https=$(read_flag DJANGO_HTTPS "$https_default")
default_seconds=0
if [[ $https == true ]]; then default_seconds=31536000; fi
seconds=$(read_setting DJANGO_HSTS_SECONDS "$default_seconds")
if ! is_int "$seconds"; then
    echo "$0: DJANGO_HSTS_SECONDS=$seconds is not a whole number of seconds (the app refuses it too)" >&2
    exit 1
fi
# As Python prints the number: no plus sign, no underscores, no leading zeros.
digits=${seconds//[+_-]/}
digits=${digits#"${digits%%[!0]*}"}
if [[ $seconds == -* && -n $digits ]]; then digits="-$digits"; fi

# django.middleware.security.SecurityMiddleware: no header for 0 seconds.
value=""
if [[ -n $digits ]]; then
    value="max-age=$digits"
    if [[ $(read_flag DJANGO_HSTS_INCLUDE_SUBDOMAINS "$https") == true ]]; then value+="; includeSubDomains"; fi
    if [[ $(read_flag DJANGO_HSTS_PRELOAD false) == true ]]; then value+="; preload"; fi
fi

cat >"$conf" <<CONF
# Written by /docker-entrypoint.d/19-strict-transport-security.sh when the
# container starts: the Strict-Transport-Security the app sends over https,
# from DJANGO_HTTPS and DJANGO_HSTS_* (empty: none).
map \$host \$app_strict_transport_security {
    default  "$value";
}
CONF
echo "$0: Strict-Transport-Security over https: ${value:-none}"
