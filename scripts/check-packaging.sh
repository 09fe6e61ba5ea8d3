#!/usr/bin/env bash
# Checks what ships: the systemd unit (systemd-analyze verify, and an exposure score of at
# most 2.0 from systemd-analyze security), the reference config (it parses, and documents
# every option the code knows), the Prometheus alerts and Grafana dashboard (promtool, and
# only series the daemon exports), and the .deb (built from release binaries with cargo-deb;
# its file list, completions and man pages, conffiles and maintainer scripts).
#
# Runs as root in CI (CI=true, no systemd running: both systemd-analyze checks work offline)
# and by hand; idempotent. Installs what it needs only when missing: the systemd package (for
# systemd-analyze), the prometheus package (for promtool) and cargo-deb. Prints one PASS/FAIL
# line per check and a summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE=2.0
CARGO_DEB_VERSION=3.8.0

passed=0
failed=0
pass() { printf 'PASS: %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL: %s\n' "$*"; failed=$((failed + 1)); }
check() { # check "description" command...
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
step() { printf '\n==> %s (%ss so far)\n' "$*" "$SECONDS"; }

WORK=$(mktemp -d /tmp/outboxd-packaging.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

step "tools"
if ! command -v systemd-analyze >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "systemd-analyze is missing: run as root, or apt-get install systemd first"
        exit 1
    fi
    echo "installing systemd (for systemd-analyze)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq systemd >/dev/null
fi
if ! command -v promtool >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "promtool is missing: run as root, or apt-get install prometheus first"
        exit 1
    fi
    echo "installing prometheus (for promtool); its service is not started"
    export DEBIAN_FRONTEND=noninteractive
    # No init system here to start it, but a policy-rc.d makes sure of it.
    policy_added=false
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_added=true
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if $policy_added; then rm -f /usr/sbin/policy-rc.d; fi
fi
if ! cargo deb --version >/dev/null 2>&1; then
    # About 2 minutes on two cores.
    echo "installing cargo-deb $CARGO_DEB_VERSION"
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
echo "$(systemd-analyze --version | head -n1); $(cargo deb --version); $(promtool --version 2>&1 | head -n1)"

TARGET=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
REL="$TARGET/release"

step "release build of outboxd and outbox-migrate"
# A .deb ships release binaries. outbox-migrate lives in its own crate, so cargo-deb (which
# builds one package) cannot build it: build both here and package with --no-build.
cargo build --release --locked -p outbox-worker -p outbox-migrate

step "systemd units"
for unit in systemd/*.service systemd/*.timer systemd/*.socket; do
    [ -e "$unit" ] || continue
    name=$(basename "$unit")
    # verify checks that every Exec*= binary exists and is executable, and the units name
    # /usr/bin/outboxd and /usr/bin/outbox-migrate, where the .deb puts them. Rather than
    # install anything into /usr/bin, verify a copy whose paths point at the binaries just
    # built; everything else in the copy is byte for byte the shipped unit.
    mkdir -p "$WORK/units"
    sed -e "s#/usr/bin/outboxd\\b#$REL/outboxd#g" \
        -e "s#/usr/bin/outbox-migrate\\b#$REL/outbox-migrate#g" "$unit" >"$WORK/units/$name"
    # Warnings (an unknown or misspelled directive, a bad value) do not always change the
    # exit code of verify, so any output at all counts as a failure.
    if out=$(systemd-analyze verify "$WORK/units/$name" 2>&1) && [ -z "$out" ]; then
        pass "systemd-analyze verify $unit"
    else
        fail "systemd-analyze verify $unit"
        printf '%s\n' "$out" | sed 's/^/    /'
    fi
done

report=$(systemd-analyze security --offline=true --no-pager systemd/outboxd.service 2>&1 || true)
exposure=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for outboxd.service: \([0-9.]*\).*/\1/p')
if [ -z "$exposure" ]; then
    fail "systemd-analyze security: no overall exposure level in its output"
    printf '%s\n' "$report" | tail -n 20 | sed 's/^/    /'
elif awk -v e="$exposure" -v max="$MAX_EXPOSURE" 'BEGIN { exit !(e <= max) }'; then
    pass "exposure level of outboxd.service is $exposure (at most $MAX_EXPOSURE)"
else
    fail "exposure level of outboxd.service is $exposure, above $MAX_EXPOSURE; what counts:"
    printf '%s\n' "$report" | grep '✗' | sed 's/^/    /'
fi

step "reference config deploy/outboxd.toml"
# The shipped config reads its secrets from systemd credentials; point those at dummies.
mkdir -p "$WORK/creds"
printf 'dummy-pyun-app-secret\n' >"$WORK/creds/pyun-secret"
printf '%064d\n' 0 >"$WORK/creds/epeis-dynamic-key" # the DYNAMIC_KEY is 64 characters
printf 'dummy-lbbtech-token\n' >"$WORK/creds/lbbtech-token"
# The commented T/CEC example: an operator secret and three keys (data secret and IV are 16 bytes).
printf 'dummy-tcec-operator-secret\n' >"$WORK/creds/tcec-operator-secret"
printf '1234567890abcdef' >"$WORK/creds/tcec-data-secret"
printf '1234567890abcdef' >"$WORK/creds/tcec-data-secret-iv"
printf 'dummy-tcec-sig-secret\n' >"$WORK/creds/tcec-sig-secret"
sed "s#/run/credentials/outboxd.service/#$WORK/creds/#g" deploy/outboxd.toml >"$WORK/outboxd.toml"
if out=$(env -u RUST_LOG -u OUTBOXD_DATABASE_URL "$REL/outboxd" --config "$WORK/outboxd.toml" check-config 2>&1); then
    pass "deploy/outboxd.toml passes outboxd check-config: $out"
else
    fail "deploy/outboxd.toml fails outboxd check-config"
    printf '%s\n' "$out" | sed 's/^/    /'
fi
# Every `#key = value` line is a documented default: uncommented, they must parse too
# (config sections deny unknown keys, so a misspelled or misplaced option fails here).
sed -E -e 's/^#([a-z_]+ = )/\1/' -e 's/^#(\[[a-z_.]+\])$/\1/' "$WORK/outboxd.toml" >"$WORK/defaults.toml"
uncommented=$(diff "$WORK/outboxd.toml" "$WORK/defaults.toml" | grep -c '^>' || true)
if out=$(env -u RUST_LOG -u OUTBOXD_DATABASE_URL "$REL/outboxd" --config "$WORK/defaults.toml" check-config 2>&1) &&
    [ "$uncommented" -gt 30 ]; then
    pass "deploy/outboxd.toml with its $uncommented commented defaults uncommented passes check-config"
else
    fail "deploy/outboxd.toml with its $uncommented commented defaults uncommented fails check-config"
    printf '%s\n' "$out" | sed 's/^/    /'
fi
# Every field of the config structs (those that derive Deserialize: retry.rs also has plain
# structs) is documented (`kind` is spelled `type` in TOML).
config_fields() {
    awk '/#\[derive\(.*Deserialize/ { de = 1 }
         /^pub struct/ { inside = de; de = 0; next }
         /^}/ { inside = 0 }
         inside && /^ *pub [a-z_]+: / { f = $0; sub(/^ *pub /, "", f); sub(/:.*/, "", f); print f }' "$@"
}
missing=""
for field in $(config_fields crates/outbox-core/src/config.rs crates/outbox-core/src/retry.rs | sort -u); do
    [ "$field" = kind ] && field=type
    grep -Eq "(^|[^a-z_])$field([^a-z_]|$)" deploy/outboxd.toml || missing="$missing $field"
done
if [ -z "$missing" ]; then
    pass "deploy/outboxd.toml mentions every config option in crates/outbox-core"
else
    fail "deploy/outboxd.toml does not document:$missing"
fi

step "Prometheus alerts and Grafana dashboard"
check "promtool check rules deploy/prometheus/alerts.yml" promtool check rules deploy/prometheus/alerts.yml
check "promtool test rules deploy/prometheus/alerts_test.yml" promtool test rules deploy/prometheus/alerts_test.yml
check "deploy/grafana/outboxd.json is JSON" python3 -m json.tool deploy/grafana/outboxd.json /dev/null
# Every series the alerts and the dashboard use is one the daemon exports (a histogram's
# _bucket/_sum/_count series come from its base name).
unknown=""
for name in $(grep -ohE 'outboxd_[a-z_]+' deploy/prometheus/alerts.yml deploy/grafana/outboxd.json | sort -u); do
    base=$(sed -E 's/_(bucket|sum|count)$//' <<<"$name")
    grep -q "\"$name\"\|$name[ {]\|\"$base\"\|$base[ {]" crates/outbox-core/src/metrics.rs || unknown="$unknown $name"
done
if [ -z "$unknown" ]; then
    pass "the alerts and the dashboard use only series in crates/outbox-core/src/metrics.rs"
else
    fail "series not exported by crates/outbox-core/src/metrics.rs:$unknown"
fi

step "completions and man pages"
rm -rf "$REL/completions" "$REL/man"
mkdir -p "$REL/completions"
"$REL/outboxd" completions bash >"$REL/completions/outboxd.bash"
"$REL/outboxd" completions zsh >"$REL/completions/_outboxd"
"$REL/outboxd" completions fish >"$REL/completions/outboxd.fish"
"$REL/outboxd" man "$REL/man"
echo "$(ls "$REL/man" | wc -l) man pages, completions for bash, zsh and fish"

step ".deb"
rm -f "$TARGET"/debian/outboxd_*.deb "$TARGET"/debian/outboxd-dbgsym_*.ddeb
# CI only checks the package, so it takes the faster compression (10 s instead of 40 s,
# 20% larger); a package built by hand for shipping gets the default.
fast=()
[ -n "${CI:-}" ] && fast=(--fast)
cargo deb -p outbox-worker --no-build --quiet "${fast[@]}"
deb=$(ls -t "$TARGET"/debian/outboxd_*.deb | head -n1)
echo "built $deb ($(du -h "$deb" | cut -f1))"
dbgsym_built() { compgen -G "$TARGET/debian/outboxd-dbgsym_*.ddeb" >/dev/null; }
check "the outboxd-dbgsym package with the debug symbols is built too" dbgsym_built
dpkg-deb -c "$deb" >"$WORK/contents"
# `dpkg-deb -c` prints "mode owner/group size date time ./path".
has_file() { # has_file MODE PATH...: one of the paths is in the .deb with that mode
    local mode=$1
    shift
    local p
    for p in "$@"; do
        awk -v m="$mode" -v p="./${p#/}" '$1 == m && $6 == p { found = 1 } END { exit !found }' \
            "$WORK/contents" && return 0
    done
    return 1
}
check ".deb has /usr/bin/outboxd (0755)" has_file -rwxr-xr-x /usr/bin/outboxd
check ".deb has /usr/bin/outbox-migrate (0755)" has_file -rwxr-xr-x /usr/bin/outbox-migrate
check ".deb has the unit outboxd.service" \
    has_file -rw-r--r-- /lib/systemd/system/outboxd.service /usr/lib/systemd/system/outboxd.service
check ".deb has /etc/outboxd/outboxd.toml" has_file -rw-r--r-- /etc/outboxd/outboxd.toml
check ".deb has the install guide" has_file -rw-r--r-- /usr/share/doc/outboxd/INSTALL.md
check ".deb has the admin page screenshot OPERATIONS.md shows" has_file -rw-r--r-- /usr/share/doc/outboxd/admin-page.png
check ".deb has the bash completion" has_file -rw-r--r-- /usr/share/bash-completion/completions/outboxd
check ".deb has the zsh completion" has_file -rw-r--r-- /usr/share/zsh/vendor-completions/_outboxd
check ".deb has the fish completion" has_file -rw-r--r-- /usr/share/fish/vendor_completions.d/outboxd.fish
check ".deb has the man page outboxd(1)" \
    has_file -rw-r--r-- /usr/share/man/man1/outboxd.1.gz /usr/share/man/man1/outboxd.1
check ".deb has a man page per subcommand (outboxd-dead-requeue(1))" \
    has_file -rw-r--r-- /usr/share/man/man1/outboxd-dead-requeue.1.gz /usr/share/man/man1/outboxd-dead-requeue.1
check ".deb has the Prometheus alerts" has_file -rw-r--r-- /usr/share/doc/outboxd/prometheus/alerts.yml
check ".deb has the Grafana dashboard" has_file -rw-r--r-- /usr/share/doc/outboxd/grafana/outboxd.json

dpkg-deb -x "$deb" "$WORK/root"
dpkg-deb -e "$deb" "$WORK/control"
unit_in_deb="$WORK/root/usr/lib/systemd/system/outboxd.service"
[ -e "$unit_in_deb" ] || unit_in_deb="$WORK/root/lib/systemd/system/outboxd.service"
check "the packaged unit is systemd/outboxd.service" cmp -s "$unit_in_deb" systemd/outboxd.service
check "the packaged config is deploy/outboxd.toml" cmp -s "$WORK/root/etc/outboxd/outboxd.toml" deploy/outboxd.toml
stripped() { # no .debug_* section in any of the files
    local f
    # (.debug_gdb_scripts, a few bytes of gdb pretty-printer hints, is not debug info.)
    for f; do [ "$(readelf -S "$f" | grep -cE '\.debug_(info|line|str|abbrev|ranges)')" -eq 0 ] || return 1; done
}
check "the packaged binaries are stripped (symbols are in outboxd-dbgsym)" \
    stripped "$WORK/root/usr/bin/outboxd" "$WORK/root/usr/bin/outbox-migrate"
check "the packaged outboxd runs" "$WORK/root/usr/bin/outboxd" --version
check "the packaged outbox-migrate runs" "$WORK/root/usr/bin/outbox-migrate" --version
# Every program the unit runs is in the .deb or in the base system.
exec_ok=true
for prog in $(sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\([^ ]*\).*/\1/p' systemd/outboxd.service | sort -u); do
    if [ -e "$WORK/root$prog" ] || [ -x "$prog" ]; then :; else
        echo "    $prog (run by the unit) is neither in the .deb nor on this system"
        exec_ok=false
    fi
done
check "every Exec*= program of the unit is shipped or in the base system" $exec_ok

dpkg-deb -I "$deb" >"$WORK/info"
check "conffiles lists /etc/outboxd/outboxd.toml" grep -qx '/etc/outboxd/outboxd.toml' "$WORK/control/conffiles"
check "the package is named outboxd" test "$(dpkg-deb -f "$deb" Package)" = outboxd
check "Depends names adduser (the postinst creates the user)" grep -qw adduser <<<"$(dpkg-deb -f "$deb" Depends)"
maint_ok=true
for s in postinst postrm prerm; do
    f="$WORK/control/$s"
    if [ ! -x "$f" ]; then echo "    $s is missing or not executable"; maint_ok=false; continue; fi
    sh -n "$f" || { echo "    $s: shell syntax error"; maint_ok=false; }
    if grep -q '#DEBHELPER#' "$f"; then echo "    $s: #DEBHELPER# was not replaced"; maint_ok=false; fi
done
check "maintainer scripts are present, valid sh, with the systemd snippets filled in" $maint_ok
check "postinst creates the outboxd system user" grep -q 'adduser --system.* outboxd' "$WORK/control/postinst"
check "postinst reloads systemd and restarts a running service on upgrade" \
    grep -q 'deb-systemd-invoke' "$WORK/control/postinst"
echo "control:"
sed 's/^/    /' "$WORK/info" | grep -E '^ +(Package|Version|Architecture|Depends|Installed-Size|Section):' || true
echo "files:"
awk '{ print "    " $1 " " $6 }' "$WORK/contents" | grep -v '/$'

printf '\ncheck-packaging: %ss\n' "$SECONDS"
printf '%d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
