#!/usr/bin/env bash
# Installs the programs cheops' tests and benchmarks run beside the agents,
# on Debian or Ubuntu (apt-get, and npm for json-server). The cheops binary
# itself needs none of them and installs nothing.
#
#   contrib/install-deps.sh            # install what is missing (root, or sudo)
#   contrib/install-deps.sh --check    # list what `make test` needs and lacks;
#                                      # exit 1 if anything is missing
#
# What needs what:
#   json-server  (npm json-server@0.17.4)  the REST application behind the agents
#                                          of end-to-end tests and benchmarks
#   chromium     (Debian chromium)         the browser test of the web view
#   haproxy      (Debian haproxy)          the reverse proxy `cheops bench forwarding`
#                                          compares with (and its test)
#   etcd         (Debian etcd-server)      the store `cheops bench availability`
#                                          compares with (and its test); make e2e-k8s
#   nft, ip      (Debian nftables, iproute2)  make e2e: namespaces and link cuts
#
# `make deps` runs it; .ci/run runs it on a fresh machine before the tests.
set -euo pipefail

JSON_SERVER=json-server@0.17.4

# program:Debian package, for what `make test` needs ...
test_tools=(json-server:npm chromium:chromium haproxy:haproxy etcd:etcd-server)
# ... and what `make e2e` needs besides.
e2e_tools=(nft:nftables ip:iproute2)

missing() {
	local out=()
	for t in "$@"; do
		command -v "${t%%:*}" >/dev/null 2>&1 || out+=("$t")
	done
	echo "${out[@]}"
}

if [ "${1:-}" = --check ]; then
	lack=$(missing "${test_tools[@]}")
	if [ -z "$lack" ]; then
		echo "deps: make test has what it needs (json-server, chromium, haproxy, etcd)"
		exit 0
	fi
	for t in $lack; do
		if [ "${t%%:*}" = json-server ]; then
			how="npm install --global $JSON_SERVER"
		else
			how="apt-get install ${t#*:}"
		fi
		echo "deps: make test needs ${t%%:*}, which is not installed ($how)" >&2
	done
	echo "deps: install them with contrib/install-deps.sh (make deps), or set CHEOPS_ALLOW_SKIP=1 to skip the tests that need them" >&2
	exit 1
fi
if [ $# -gt 0 ]; then
	echo "usage: $0 [--check]" >&2
	exit 2
fi

lack=$(missing "${test_tools[@]}" "${e2e_tools[@]}")
if [ -z "$lack" ]; then
	echo "deps: nothing to install"
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "deps: no apt-get here; install by hand: $lack (json-server: npm install --global $JSON_SERVER)" >&2
	exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
	SUDO=sudo
fi

pkgs=()
for t in $lack; do
	pkgs+=("${t#*:}")
done
# json-server comes from npm, which Debian packages.
if [[ " $lack " == *" json-server:"* ]] && command -v npm >/dev/null 2>&1; then
	pkgs=("${pkgs[@]/npm}")
fi
read -r -a pkgs <<<"${pkgs[*]}"

if [ ${#pkgs[@]} -gt 0 ]; then
	echo "deps: apt-get install ${pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq
	$SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
if ! command -v json-server >/dev/null 2>&1; then
	echo "deps: npm install --global $JSON_SERVER"
	$SUDO npm install --global --no-audit --no-fund "$JSON_SERVER" >/dev/null
fi

lack=$(missing "${test_tools[@]}" "${e2e_tools[@]}")
if [ -n "$lack" ]; then
	echo "deps: still missing after the install: $lack" >&2
	exit 1
fi
echo "deps: installed"
