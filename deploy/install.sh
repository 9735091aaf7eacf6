#!/usr/bin/env bash
# Installs the convoy coordinator and/or worker as systemd services on this machine.
# Run as root from a checkout after `cargo build --release`. See deploy/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/install.sh [OPTIONS]

Installs convoy-coordinator and/or convoy-worker with convoy-rank (and the convoy
CLI, when built)
into /usr/local/bin, their systemd units into /etc/systemd/system and example
settings into /etc/convoy (existing settings files are never overwritten), creates
the system user convoy, then enables and starts the services.

Options:
  --bin-dir DIR       where the built binaries are (default: target/release of this checkout)
  --role ROLE         coordinator, worker or both (default: both)
  --worker-name NAME  the worker's name and unit instance, convoy-worker@NAME.service
                      (default: this machine's host name)
  --prefix DIR        install under DIR instead of / (for testing); implies --no-start
                      and skips creating the user
  --no-start          do not run systemctl (no daemon-reload, enable or start)
  -h, --help          show this help
EOF
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

say() {
    echo "install.sh: $*"
}

deploy_dir=$(cd "$(dirname "$0")" && pwd -P)
bin_dir="$(cd "$deploy_dir/.." && pwd -P)/target/release"
role=both
worker_name=
prefix=/
no_start=0

# Takes the value of an option given as `--opt VALUE` or `--opt=VALUE`.
need_value() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then
        die "$1 needs a value (see --help)"
    fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir|--role|--worker-name|--prefix)
            need_value "$@"
            opt=$1 val=$2
            shift 2
            ;;
        --bin-dir=*|--role=*|--worker-name=*|--prefix=*)
            opt=${1%%=*} val=${1#*=}
            [ -n "$val" ] || die "$opt needs a value (see --help)"
            shift
            ;;
        --no-start) no_start=1; shift; continue ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    case "$opt" in
        --bin-dir) bin_dir=$val ;;
        --role) role=$val ;;
        --worker-name) worker_name=$val ;;
        --prefix) prefix=$val ;;
    esac
done

case "$role" in
    coordinator) roles=(coordinator) ;;
    worker) roles=(worker) ;;
    both) roles=(coordinator worker) ;;
    *) die "--role must be coordinator, worker or both, not '$role'" ;;
esac
has_role() {
    local r
    for r in "${roles[@]}"; do
        [ "$r" = "$1" ] && return 0
    done
    return 1
}

if has_role worker; then
    [ -n "$worker_name" ] || worker_name=$(uname -n)
    # The name becomes a unit instance (convoy-worker@NAME.service) and a file name.
    [[ "$worker_name" =~ ^[A-Za-z0-9][A-Za-z0-9_.:-]*$ ]] ||
        die "worker name '$worker_name' may contain only letters, digits, '.', '_', ':' and '-' (use --worker-name)"
fi

# Strip trailing slashes; root is "" when installing into /.
while [ "${prefix%/}" != "$prefix" ]; do prefix=${prefix%/}; done
root=$prefix
if [ -n "$root" ]; then
    case "$root" in /*) ;; *) root="$(pwd -P)/$root" ;; esac
    no_start=1
fi

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    die "must be run as root (or with --prefix DIR to install into a test directory)"
fi

[ -d "$bin_dir" ] || die "$bin_dir not found: build with cargo build --release first, or pass --bin-dir"
bin_dir=$(cd "$bin_dir" && pwd -P)

binaries=()
units=()
has_role coordinator && binaries+=(convoy-coordinator) && units+=(convoy-coordinator.service)
# The worker starts each rank as convoy-rank, which it finds beside its own binary.
has_role worker && binaries+=(convoy-worker convoy-rank) && units+=(convoy-worker@.service)
for b in "${binaries[@]}"; do
    [ -f "$bin_dir/$b" ] || die "$bin_dir/$b not found: build with cargo build --release first"
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is not executable"
done
for u in "${units[@]}"; do
    [ -f "$deploy_dir/systemd/$u" ] || die "$deploy_dir/systemd/$u not found: run install.sh from a convoy checkout"
done
# The CLI is optional here: installed when it was built, so `convoy status` works.
if [ -x "$bin_dir/convoy" ]; then
    binaries+=(convoy)
fi

if [ "$no_start" -eq 0 ]; then
    command -v systemctl >/dev/null || die "systemctl not found: this needs systemd (or pass --no-start)"
fi

# 1. The service user. A fixed system user (not DynamicUser=) so that the state in
#    /var/lib/convoy keeps its owner across restarts and upgrades.
if [ -z "$root" ]; then
    if getent passwd convoy >/dev/null; then
        say "user convoy exists, kept"
    else
        nologin=/usr/sbin/nologin
        [ -x "$nologin" ] || nologin=/sbin/nologin
        if getent group convoy >/dev/null; then
            group_opt=(--gid convoy)
        else
            group_opt=(--user-group)
        fi
        useradd --system "${group_opt[@]}" --home-dir /var/lib/convoy --no-create-home \
            --shell "$nologin" --comment "convoy training services" convoy
        say "created system user and group convoy"
    fi
else
    say "--prefix given: not creating user convoy"
fi

# 2. Binaries.
install -d -m 0755 "$root/usr/local/bin"
for b in "${binaries[@]}"; do
    install -m 0755 "$bin_dir/$b" "$root/usr/local/bin/$b"
    say "installed $root/usr/local/bin/$b"
done

# 3. Units.
install -d -m 0755 "$root/etc/systemd/system"
for u in "${units[@]}"; do
    install -m 0644 "$deploy_dir/systemd/$u" "$root/etc/systemd/system/$u"
    say "installed $root/etc/systemd/system/$u"
done

# 4. Settings: example files only where none exist; an admin's settings are kept.
#    Mode 0640: systemd reads them as root, and they may come to hold secrets.
install -d -m 0755 "$root/etc/convoy"
envs=()
has_role coordinator && envs+=(coordinator.env)
has_role worker && envs+=(worker.env)
for e in "${envs[@]}"; do
    if [ -e "$root/etc/convoy/$e" ]; then
        say "kept existing $root/etc/convoy/$e"
    else
        install -m 0640 "$deploy_dir/config/$e" "$root/etc/convoy/$e"
        say "installed example settings $root/etc/convoy/$e"
    fi
done

# 5. Tokens and TLS: the coordinator's bootstrap administrator token, the cluster's join
#    token and its CA with the coordinator's certificate (`convoy tls init`), made here once
#    (never replaced), secrets mode 0600 and owned by convoy, which the daemons require. A
#    worker machine needs the coordinator machine's join.token and tls/ca.pem.
new_token() {
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'
}
make_token() {
    local path=$1
    if [ -e "$path" ]; then
        say "kept existing $path"
        return
    fi
    (umask 077 && new_token >"$path")
    [ -n "$root" ] || chown convoy: "$path"
    say "created $path (mode 0600)"
}
if has_role coordinator; then
    make_token "$root/etc/convoy/admin.token"
    make_token "$root/etc/convoy/join.token"
    tls_dir="$root/etc/convoy/tls"
    if [ -e "$tls_dir/ca.pem" ]; then
        say "kept existing $tls_dir"
    elif [ -x "$bin_dir/convoy" ]; then
        out=$("$bin_dir/convoy" tls init --out "$tls_dir" --host "$(uname -n)" 2>&1) ||
            die "convoy tls init: $out"
        [ -n "$root" ] || chown -R convoy: "$tls_dir"
        say "created a CA and certificates in $tls_dir (valid for $(uname -n), localhost and 127.0.0.1; add names with convoy tls init --host)"
    else
        say "no convoy CLI in $bin_dir to make certificates with: put the coordinator's certificate, key and CA in $tls_dir (see deploy/README.md)"
    fi
fi
for f in join.token tls/ca.pem; do
    if has_role worker && [ ! -e "$root/etc/convoy/$f" ]; then
        say "copy the coordinator machine's /etc/convoy/$f to $root/etc/convoy/$f (owner convoy) before starting the worker"
    fi
done

# 6. Enable and start.
services=()
has_role coordinator && services+=(convoy-coordinator.service)
has_role worker && services+=("convoy-worker@$worker_name.service")
if [ "$no_start" -eq 1 ]; then
    say "not running systemctl; to start: systemctl daemon-reload && systemctl enable --now ${services[*]}"
else
    systemctl daemon-reload
    say "ran systemctl daemon-reload"
    for s in "${services[@]}"; do
        # enable --now leaves a running service alone, so after an upgrade it would
        # keep running the old binary; say so rather than restart (a worker restart
        # kills its ranks).
        was_active=0
        systemctl is-active --quiet "$s" && was_active=1
        systemctl enable --now "$s"
        if [ "$was_active" -eq 1 ]; then
            say "enabled $s; it was already running: systemctl restart $s to run the new binary"
        else
            say "enabled and started $s"
        fi
    done
fi

say "done. Next: edit $root/etc/convoy/*.env for this cluster (see deploy/README.md), then systemctl restart ${services[*]}"
