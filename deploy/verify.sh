#!/usr/bin/env bash
# Checks the systemd units in deploy/systemd/ with `systemd-analyze verify`.
#
# Usage: deploy/verify.sh BIN_DIR
#   BIN_DIR  directory holding built convoy-coordinator and convoy-worker binaries
#            (e.g. target/debug); verify rejects a unit whose ExecStart= binary is
#            missing, so the units are checked against these instead of
#            /usr/local/bin.
#
# Works on copies in a temporary directory: /usr/local/bin/ is rewritten to BIN_DIR,
# and a template unit (NAME@.service) is checked as the instance NAME@ci.service.
# Fails when systemd-analyze exits non-zero or prints any line about our units;
# lines about other units (dependencies such as multi-user.target) are shown but
# do not fail the check. Needs no root and no running systemd.
set -euo pipefail

die() {
    echo "verify.sh: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: deploy/verify.sh BIN_DIR (the directory holding convoy-coordinator and convoy-worker)"
[ -d "$1" ] || die "$1 is not a directory"
bin_dir=$(cd "$1" && pwd -P)
case "$bin_dir" in
    *[[:space:]]*) die "BIN_DIR must not contain whitespace (it is written into ExecStart=): $bin_dir" ;;
esac
for b in convoy-coordinator convoy-worker; do
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found or not executable: build it first (cargo build)"
done
command -v systemd-analyze >/dev/null || die "systemd-analyze not found (it comes with systemd)"

unit_src=$(cd "$(dirname "$0")/systemd" && pwd -P)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/convoy-verify.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# --recursive-errors=no (systemd >= 250) makes warnings about the named unit, and
# only that unit, give a non-zero exit status. Older versions exit 0 on warnings, so
# the output filter below is what catches them there.
args=(verify --man=no)
if systemd-analyze --help 2>/dev/null | grep -q -- '--recursive-errors'; then
    args+=(--recursive-errors=no)
fi

# Escape the replacement for sed: backslash, ampersand and the '#' delimiter.
bin_repl=$(printf '%s/' "$bin_dir" | sed 's/[\\&#]/\\&/g')

failed=0
checked=0
for src in "$unit_src"/*.service; do
    [ -e "$src" ] || die "no unit files in $unit_src"
    name=$(basename "$src")
    case "$name" in
        *@.service) unit="${name%@.service}@ci.service" ;;
        *) unit="$name" ;;
    esac
    sed "s#/usr/local/bin/#${bin_repl}#g" "$src" >"$tmp/$unit"

    set +e
    out=$(cd "$tmp" && systemd-analyze "${args[@]}" "$tmp/$unit" 2>&1)
    rc=$?
    set -e
    checked=$((checked + 1))

    # A line is about our unit when it names the copied file, the unit, or the
    # template it came from.
    ours=$(printf '%s\n' "$out" | grep -F -e "$tmp/" -e "$unit" -e "$name" || true)
    other=$(printf '%s\n' "$out" | grep -v -F -e "$tmp/" -e "$unit" -e "$name" | grep -v '^$' || true)

    if [ -n "$other" ]; then
        printf '%s\n' "$other" | sed "s#^#verify.sh: $name: ignored (not about this unit): #" >&2
    fi
    if [ "$rc" -ne 0 ] || [ -n "$ours" ]; then
        echo "verify.sh: $name: FAILED (systemd-analyze exit status $rc)" >&2
        if [ -n "$ours" ]; then
            # Point at the file in the repository, not the temporary copy.
            printf '%s\n' "$ours" | sed "s#$tmp/$unit#deploy/systemd/$name#g; s#^#  #" >&2
        fi
        failed=1
    else
        echo "verify.sh: $name: ok"
    fi
done

if [ "$failed" -ne 0 ]; then
    die "unit verification failed (line numbers refer to deploy/systemd/)"
fi
echo "verify.sh: $checked units ok ($(systemd-analyze --version | head -n 1))"
