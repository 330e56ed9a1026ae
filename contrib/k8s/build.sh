#!/usr/bin/env bash
# Builds the real Kubernetes binaries the kube end-to-end tests run —
# kube-apiserver, kube-controller-manager and kubectl, all from
# k8s.io/kubernetes v1.33.4 and its staging modules at v0.33.4 (see go.mod
# here) — into a cache directory keyed by version, and makes sure etcd is
# installed (Debian's etcd-server). A cache that already holds the three
# binaries is reused as is.
#
#   contrib/k8s/build.sh          # prints the cache directory on its last line
#
# Environment:
#   CHEOPS_K8S_BIN    the cache directory (default $HOME/.cache/cheops/k8s/v1.33.4)
#   GO                the go command (default go)
#
# Cost on 2 cores from empty module and build caches: about 5 minutes,
# ≈750 MB of modules and ≈3 GB of build cache; seconds when warm.
set -euo pipefail
cd "$(dirname "$0")"

version=v1.33.4
major=1
minor=33
out="${CHEOPS_K8S_BIN:-$HOME/.cache/cheops/k8s/$version}"
GO="${GO:-go}"
bins=(kube-apiserver kube-controller-manager kubectl)

have_all() {
	for b in "${bins[@]}"; do
		[ -x "$out/$b" ] || return 1
	done
}

if have_all; then
	echo "k8s: $version binaries cached in $out" >&2
else
	echo "k8s: building ${bins[*]} $version into $out (minutes on a cold cache)" >&2
	mkdir -p "$out"
	tmp="$(mktemp -d "$out/.build.XXXXXX")"
	trap 'rm -rf "$tmp"' EXIT
	ldflags="-s -w"
	for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
		ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
	done
	for b in "${bins[@]}"; do
		[ -x "$out/$b" ] && continue
		start=$(date +%s)
		CGO_ENABLED=0 "$GO" build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$tmp/$b" "k8s.io/kubernetes/cmd/$b"
		mv "$tmp/$b" "$out/$b"
		echo "k8s: built $b in $(( $(date +%s) - start )) s" >&2
	done
fi

# etcd: Debian's etcd-server (3.4) is enough for API-level tests.
if ! command -v etcd >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "k8s: installing etcd-server with apt-get" >&2
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y -qq --no-install-recommends etcd-server >/dev/null ||
			{ apt-get update -qq && apt-get install -y -qq --no-install-recommends etcd-server >/dev/null; }
	else
		echo "k8s: etcd is missing; install Debian's etcd-server (as root: apt-get install etcd-server)" >&2
		exit 1
	fi
fi

echo "$out"
