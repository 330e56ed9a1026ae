#!/usr/bin/env bash
# glance-sites.sh: N OpenStack Glance sites on loopback, no Keystone.
#
#   glance-sites.sh install             # Debian: glance-api, python3-openstackclient (root)
#   glance-sites.sh start DIR N [PORT]  # sites a, b, c, … on PORT, PORT+1, … (default 9292)
#   glance-sites.sh stop DIR [NAME…]    # stops what start started in DIR (only the named sites: a b …), returns once they exited
#
# start prints one line per site, NAME=URL, and leaves them in DIR/sites.
# Each site has its own directory DIR/NAME: glance-api.conf, an sqlite
# database, the file store (images/) and its log. The API runs with
# [paste_deploy] flavor = (the unauthenticated pipeline: every caller is
# an admin without a project), one worker, on 127.0.0.1 only. Then:
#
#   openstack --os-auth-type none --os-endpoint http://127.0.0.1:9292 image list
set -euo pipefail

die() { echo "glance-sites: $*" >&2; exit 2; }

install_packages() {
	if command -v glance-api >/dev/null && command -v glance-manage >/dev/null && command -v openstack >/dev/null; then
		return 0
	fi
	command -v apt-get >/dev/null || die "glance-api and openstack are missing and there is no apt-get"
	local sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo"
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -qq
	# The packages' own service is not wanted: policy-rc.d (in containers)
	# or systemd starts it on 9292; it is stopped below.
	$sudo apt-get install -y -qq --no-install-recommends glance-api python3-openstackclient >/dev/null
	if command -v systemctl >/dev/null && systemctl is-active --quiet glance-api 2>/dev/null; then
		$sudo systemctl disable --now glance-api || true
	fi
}

# conf NAME DIR PORT writes a site's configuration.
conf() {
	local name=$1 dir=$2 port=$3
	cat >"$dir/glance-api.conf" <<CONF
# Glance site $name, made by contrib/openstack/glance-sites.sh
[DEFAULT]
bind_host = 127.0.0.1
bind_port = $port
workers = 1
log_file = $dir/glance-api.log
use_stderr = false
image_cache_dir = $dir/cache
node_staging_uri = file://$dir/staging

[database]
connection = sqlite:///$dir/glance.sqlite

[paste_deploy]
flavor =
config_file = /etc/glance/glance-api-paste.ini

[glance_store]
stores = file
default_store = file
filesystem_store_datadir = $dir/images/

[oslo_concurrency]
lock_path = $dir/lock
CONF
}

start() {
	local root=$1 n=$2 port=${3:-9292}
	[[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -le 26 ]] || die "N must be 1 to 26, got $n"
	command -v glance-api >/dev/null || die "glance-api is not installed (run: $0 install)"
	mkdir -p "$root"
	root=$(cd "$root" && pwd)
	: >"$root/sites"
	local i
	for ((i = 0; i < n; i++)); do
		local name dir p
		name=$(printf "\\x$(printf %x $((97 + i)))")
		dir=$root/$name
		p=$((port + i))
		mkdir -p "$dir/images" "$dir/cache" "$dir/lock" "$dir/staging"
		conf "$name" "$dir" "$p"
		# db_sync takes ~10 s of one core: the first site's database is
		# made once and copied (the schema holds no site's data yet).
		if ((i == 0)); then
			glance-manage --config-file "$dir/glance-api.conf" db_sync >"$dir/db_sync.log" 2>&1 ||
				{ tail -20 "$dir/db_sync.log" >&2; die "$name: glance-manage db_sync failed"; }
		else
			cp "$root/a/glance.sqlite" "$dir/glance.sqlite"
		fi
		# A process group of its own (its pid), which stop waits on.
		setsid glance-api --config-file "$dir/glance-api.conf" >"$dir/stdout.log" 2>&1 &
		echo $! >"$dir/pid"
		echo "$name=http://127.0.0.1:$p" >>"$root/sites"
	done
	# Wait until each lists its images (180 s at most: db_sync first, slow on a loaded machine).
	local line
	while read -r line; do
		local url=${line#*=} deadline=$((SECONDS + 180))
		until curl -fs -o /dev/null "$url/v2/images" 2>/dev/null; do
			if ((SECONDS > deadline)); then
				tail -20 "$root/${line%%=*}/glance-api.log" >&2 || true
				die "${line%%=*}: no answer at $url within 180 s"
			fi
			sleep 0.2
		done
	done <"$root/sites"
	cat "$root/sites"
}

stop() {
	local root=$1 pidfile
	shift
	local pidfiles=("$root"/*/pid)
	if (($# > 0)); then
		pidfiles=()
		local name
		for name in "$@"; do pidfiles+=("$root/$name/pid"); done
	fi
	local groups=()
	for pidfile in "${pidfiles[@]}"; do
		[ -e "$pidfile" ] || continue
		local pid
		pid=$(cat "$pidfile")
		# The parent ends its worker. (Ending the worker first would
		# have the parent fork another, left behind.)
		kill "$pid" 2>/dev/null || true
		groups+=("$pid")
		rm -f "$pidfile"
	done
	# Return once every process of theirs has exited, so that the caller
	# may remove DIR: a Glance still shutting down writes its log, sqlite
	# journal or staging files into it. 20 s, then KILL.
	local deadline=$((SECONDS + 20))
	while running "${groups[@]}"; do
		if ((SECONDS > deadline)); then
			for pid in "${groups[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
			deadline=$((SECONDS + 5))
			while running "${groups[@]}" && ((SECONDS <= deadline)); do sleep 0.1; done
			return 0
		fi
		sleep 0.1
	done
}

# running PGID… succeeds while a process of one of the process groups
# runs (a zombie, ended but not reaped by its new parent, does not count).
# It reads /proc itself: procps is not on every machine.
running() {
	(($# > 0)) || return 1
	local want=" $* " f line state ppid pgid
	for f in /proc/[0-9]*/stat; do
		read -r line <"$f" 2>/dev/null || continue # ended since the glob
		# pid (comm) state ppid pgrp …: comm may hold spaces and parentheses.
		read -r state ppid pgid _ <<<"${line##*) }"
		if [[ $want == *" $pgid "* && $state != Z ]]; then
			return 0
		fi
	done
	return 1
}

case ${1:-} in
install) install_packages ;;
start) [ $# -ge 3 ] || die "usage: $0 start DIR N [PORT]"; start "$2" "$3" "${4:-9292}" ;;
stop) [ $# -ge 2 ] || die "usage: $0 stop DIR [NAME…]"; shift; stop "$@" ;;
*) die "usage: $0 install | start DIR N [PORT] | stop DIR [NAME…]" ;;
esac
