#!/usr/bin/env bash
# measure.sh: image data through cheops agents against straight to one
# Glance, with the agents' peak memory; and `image list` over three sites
# against one. The figures of docs/openstack.md.
#
#   contrib/openstack/measure.sh [SIZE_MIB] [DIR]
#
# SIZE_MIB: the image's size (default 1024). DIR: where the sites, the
# agents and the image go (default: a new directory under /tmp, removed
# at the end; it needs about 4 × SIZE_MIB of disk). CHEOPS: the cheops
# binary (default: built from this tree with go build). RUNS: repetitions
# of each transfer (default 1).
#
# It starts three Glance sites (glance-sites.sh) and a `cheops agent` in
# front of each (a, b, c; separate processes), then, for one random file:
#
#   upload  direct            PUT to a's Glance
#   upload  local  {a}        PUT through a's agent, {glance: a}
#   upload  remote {a}        PUT through c's agent, {glance: a} (relayed to a's agent)
#   upload  local  {a & b}    PUT through a's agent, {glance: a & b} (both Glances store it)
#   download direct / local / remote   GET of the {a & b} image's data: from a's
#                             Glance, through a's agent, through c's agent {glance: a}
#   cli direct                `openstack image create --file` to a's Glance
#   cli {a & b}               the same through a's agent, {glance: a & b}
#                             (the CLI's start and the create included)
#
# Each line gives the seconds (curl's time_total), MiB/s, and each
# agent's peak resident set during that transfer (VmHWM, reset before it
# through /proc/PID/clear_refs), and whether the checksum matches. Then
# GET /v2/images and `openstack image list` (16 images on each site),
# the median of 20 and 5 runs: straight to a's Glance, through a's agent
# with {glance: a}, and with {glance: a & b & c}.
set -euo pipefail

size_mib=${1:-1024}
dir=${2:-}
runs=${RUNS:-1}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

die() { echo "measure: $*" >&2; exit 2; }
command -v glance-api >/dev/null || die "glance-api is not installed (run: $here/glance-sites.sh install)"
[[ $size_mib =~ ^[0-9]+$ && $size_mib -ge 1 ]] || die "SIZE_MIB must be a positive integer"

cleanup_dir=""
if [ -z "$dir" ]; then
	dir=$(mktemp -d /tmp/cheops-measure.XXXXXX)
	cleanup_dir=$dir
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	"$here/glance-sites.sh" stop "$dir/glance" || true
	[ -z "$cleanup_dir" ] || rm -rf "$cleanup_dir"
}
trap cleanup EXIT

cheops=${CHEOPS:-}
if [ -z "$cheops" ]; then
	cheops=$dir/cheops
	(cd "$root" && go build -o "$cheops" ./cmd/cheops)
fi

# free_base N: the first of N consecutive free loopback ports.
free_base() {
	python3 - "$1" <<'PY'
import socket, sys
n = int(sys.argv[1])
for _ in range(50):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); base = s.getsockname()[1]; s.close()
    ok = base + n < 65536
    for i in range(1, n):
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", base + i))
        except OSError:
            ok = False
        t.close()
    if ok:
        print(base); sys.exit(0)
sys.exit("no free ports")
PY
}

echo "# Glance sites" >&2
"$here/glance-sites.sh" start "$dir/glance" 3 "$(free_base 3)" >"$dir/sites.txt"
declare -A glance api pid
while IFS='=' read -r name url; do glance[$name]=$url; done <"$dir/sites.txt"

echo "# agents" >&2
for s in a b c; do
	args=(agent --site "$s" --data "$dir/agent-$s" --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 --trust-all
		--service "glance=${glance[$s]}" --service-kind glance=glance --replica-wait 30s --log-level warn
		--scope-name 'a={glance: a}' --scope-name 'ab={glance: a & b}' --scope-name 'abc={glance: a & b & c}')
	if [ "$s" != a ]; then args+=(--peer "$(head -1 "$dir/agent-a/addrs")"); fi
	"$cheops" "${args[@]}" 2>"$dir/agent-$s.log" &
	pid[$s]=$!
	pids+=("$!")
	deadline=$((SECONDS + 60))
	until [ -s "$dir/agent-$s/api" ] && [ -s "$dir/agent-$s/addrs" ]; do
		((SECONDS < deadline)) || { tail "$dir/agent-$s.log" >&2; die "agent $s did not start"; }
		sleep 0.1
	done
	api[$s]=$(cat "$dir/agent-$s/api")
done
deadline=$((SECONDS + 60))
for s in a b c; do
	until curl -fs "${api[$s]}/v1/health" | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["sites"].get("up", 0) != 3)'; do
		((SECONDS < deadline)) || die "agent $s does not see 3 sites up"
		sleep 0.2
	done
done

# json_field FIELD: a field of the JSON object on stdin.
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# create BASE NAME: a new image (no data) at BASE (a Glance, or an agent's
# /s/NAME/svc/glance), its id.
create() {
	curl -fsS -X POST -H 'Content-Type: application/json' \
		-d "{\"name\": \"$2\", \"disk_format\": \"raw\", \"container_format\": \"bare\"}" "$1/v2/images" | json_field id
}

# peaks: every agent's VmHWM in MiB; reset_peaks resets them.
peaks() {
	local s out=""
	for s in a b c; do
		out+="$s=$(awk '/^VmHWM:/ {printf "%.0f", $2 / 1024}' "/proc/${pid[$s]}/status") "
	done
	echo "${out% }"
}
reset_peaks() {
	local s
	for s in a b c; do echo 5 >"/proc/${pid[$s]}/clear_refs"; done
}

# report WHAT SECONDS OK
report() {
	printf '%-32s %6.2f s %8.1f MiB/s   peak RSS MiB: %-22s %s\n' "$1" "$2" \
		"$(python3 -c "print($size_mib / $2)")" "$(peaks)" "$3"
}

echo "# a $size_mib MiB random image" >&2
head -c "$((size_mib << 20))" /dev/urandom >"$dir/img.raw"
sum=$(md5sum "$dir/img.raw" | cut -d' ' -f1)
echo "size ${size_mib} MiB, md5 $sum; agents' resident set before: $(for s in a b c; do printf '%s=%s ' $s "$(awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/${pid[$s]}/status")"; done)MiB"
echo "CPU: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# upload WHAT CREATE_BASE PUT_BASE CHECK_SITES…: create, PUT the data,
# report, check each site's Glance has the checksum, delete.
upload() {
	local what=$1 cbase=$2 pbase=$3
	shift 3
	local id t ok=ok s got
	id=$(create "$cbase" "measure")
	reset_peaks
	t=$(curl -fsS -o /dev/null -w '%{time_total}' -X PUT -H 'Expect:' -H 'Content-Type: application/octet-stream' \
		-T "$dir/img.raw" "$pbase/v2/images/$id/file")
	for s in "$@"; do
		got=$(curl -fsS "${glance[$s]}/v2/images/$id" | json_field checksum)
		[ "$got" = "$sum" ] || ok="CHECKSUM MISMATCH on $s ($got)"
	done
	report "upload $what" "$t" "$ok"
	LAST_ID=$id
}

# download WHAT URL: GET the data, report, compare its md5.
download() {
	local t got
	rm -f "$dir/got"
	reset_peaks
	t=$(curl -fsS -o >(md5sum | cut -d' ' -f1 >"$dir/got.tmp" && mv "$dir/got.tmp" "$dir/got") -w '%{time_total}' "$2")
	until [ -s "$dir/got" ]; do sleep 0.05; done # md5sum finishing
	got=$(cat "$dir/got")
	report "download $1" "$t" "$([ "$got" = "$sum" ] && echo ok || echo "CHECKSUM MISMATCH ($got)")"
}

delete() { curl -fsS -o /dev/null -X DELETE "$1/v2/images/$2"; }

# cli WHAT ENDPOINT CHECK_SITES…: `openstack image create --file` of the
# image at ENDPOINT, timed from the CLI's start to its exit; report, check
# each site's Glance has the checksum.
cli() {
	local what=$1 base=$2
	shift 2
	local t0 t id ok=ok s got
	reset_peaks
	t0=$(date +%s.%N)
	id=$(openstack --os-auth-type none --os-endpoint "$base" image create --disk-format raw --container-format bare \
		--file "$dir/img.raw" measure-cli -f value -c id)
	t=$(python3 -c "print($(date +%s.%N) - $t0)")
	for s in "$@"; do
		got=$(curl -fsS "${glance[$s]}/v2/images/$id" | json_field checksum)
		[ "$got" = "$sum" ] || ok="CHECKSUM MISMATCH on $s ($got)"
	done
	report "cli $what" "$t" "$ok"
	LAST_ID=$id
}

agent() { echo "${api[$1]}/s/$2/svc/glance"; }

for ((r = 0; r < runs; r++)); do
	upload "direct" "${glance[a]}" "${glance[a]}" a
	delete "${glance[a]}" "$LAST_ID"
	upload "local {a}" "$(agent a a)" "$(agent a a)" a
	delete "$(agent a a)" "$LAST_ID"
	upload "remote {a} (through c)" "$(agent c a)" "$(agent c a)" a
	delete "$(agent a a)" "$LAST_ID"
	upload "local {a & b}" "$(agent a ab)" "$(agent a ab)" a b
	both=$LAST_ID
	download "direct" "${glance[a]}/v2/images/$both/file"
	download "local (a's agent)" "${api[a]}/svc/glance/v2/images/$both/file"
	download "remote (through c) {a}" "$(agent c a)/v2/images/$both/file"
	delete "$(agent a ab)" "$both"
	cli "direct" "${glance[a]}" a
	delete "${glance[a]}" "$LAST_ID"
	cli "{a & b} (a's agent)" "$(agent a ab)" a b
	delete "$(agent a ab)" "$LAST_ID"
done
rm -f "$dir/img.raw"

echo "# image list: 16 images on each site" >&2
for s in a b c; do
	for i in $(seq 1 16); do create "${glance[$s]}" "list-$s-$i" >/dev/null; done
done
# median N CMD…: the median wall time of N runs of CMD, in ms.
median() {
	local n=$1
	shift
	python3 - "$n" "$@" <<'PY'
import subprocess, sys, time
n, cmd = int(sys.argv[1]), sys.argv[2:]
ts = []
for _ in range(n):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    ts.append((time.perf_counter() - t) * 1000)
ts.sort()
print(f"{ts[len(ts) // 2]:.0f} ms (min {ts[0]:.0f}, max {ts[-1]:.0f})")
PY
}
count() { curl -fsS "$1/v2/images" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["images"]))'; }
for e in "straight to a's Glance|${glance[a]}" "agent a, {glance: a}|$(agent a a)" "agent a, {glance: a & b & c}|$(agent a abc)"; do
	name=${e%%|*} url=${e#*|}
	printf '%-34s %3s images  GET /v2/images p50 %-28s openstack image list p50 %s\n' "$name" "$(count "$url")" \
		"$(median 20 curl -fsS "$url/v2/images")" \
		"$(median 5 openstack --os-auth-type none --os-endpoint "$url" image list -f value)"
done
