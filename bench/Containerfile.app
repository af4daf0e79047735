# The application layer of the benchmark image (see bench/pull.sh): ~20 MB of
# source files under /opt/app, made from the Python and Perl libraries of the
# OS image, each with a header line naming its release. Every 10th file takes
# APP_VERSION as its release, the others stay at release 1; so the image
# built with APP_VERSION=2 differs from APP_VERSION=1 in this one layer, in
# 10% of its files (plus /opt/app/MANIFEST).
ARG OS_IMAGE
FROM ${OS_IMAGE}

ARG APP_VERSION=1
RUN set -eu; \
    mkdir -p /opt/app; \
    find /usr/lib/python3.11 /usr/share/perl /usr/lib/x86_64-linux-gnu/perl \
        -type f \( -name '*.py' -o -name '*.pm' \) -size +1k -printf '%s %p\n' \
        | LC_ALL=C sort -k2 \
        | awk '{ t += $1; if (t > 20000000) exit; print $2 }' > /tmp/app-sources; \
    i=0; \
    while read -r f; do \
        i=$((i + 1)); \
        v=1; \
        if [ $((i % 10)) -eq 0 ]; then v=$APP_VERSION; fi; \
        d=/opt/app/$(printf '%02d' $((i % 40))); \
        mkdir -p "$d"; \
        { printf '# bench app file %d, release %s\n' "$i" "$v"; cat "$f"; } > "$d/$i-${f##*/}"; \
        printf '%d %s %s\n' "$i" "$v" "$d/$i-${f##*/}" >> /opt/app/MANIFEST; \
    done < /tmp/app-sources; \
    rm -f /tmp/app-sources; \
    echo "app files: $i"

LABEL org.opencontainers.image.version=app-${APP_VERSION}
