# cheops — see README.md. Every target works from a fresh clone.
SHELL   := /bin/bash
GO      ?= go
BIN     := bin/cheops
PKGS    := ./...
FUZZTIME ?= 10s
FUZZSHORT ?= 5s

.PHONY: all build test vet unit fuzz bench demo e2e e2e-k8s e2e-openstack clean

all: build

# The version `cheops --version` and GET /v1/health report; without it
# (go build, go install) the binary derives one from its build information.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)

build:
	$(GO) build -ldflags "-X cheops/version.version=$(VERSION)" -o $(BIN) ./cmd/cheops

vet:
	$(GO) vet $(PKGS)

unit:
	$(GO) test -race -count=1 -timeout 12m $(PKGS)

# A short, bounded run of every fuzz target over its committed corpus and
# fresh inputs.
fuzz:
	$(GO) test ./scope -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=$(FUZZTIME)
	$(GO) test ./node -run='^$$' -fuzz='^FuzzDecodeRecord$$' -fuzztime=$(FUZZSHORT)
	$(GO) test ./crdt -run='^$$' -fuzz='^FuzzReadFrame$$' -fuzztime=$(FUZZSHORT)
	$(GO) test ./catalog -run='^$$' -fuzz='^FuzzApply$$' -fuzztime=$(FUZZSHORT)

test: vet unit fuzz

# Real partitions: network namespaces, veth links, nftables cuts, agent
# processes and json-server in each namespace. Needs root, iproute2 and
# nftables (.ci/run installs them); skips with a message otherwise.
e2e:
	CHEOPS_FAULTS=1 $(GO) test -count=1 -timeout 15m -v ./faults 2>&1 | grep -E '^(=== RUN|--- |\s+\S+_test.go|ok|FAIL|PASS|panic)'; exit $${PIPESTATUS[0]}

# Real Kubernetes API servers, one per site, behind three agents, driven
# with plain kubectl (docs/kubernetes.md). Builds kube-apiserver,
# kube-controller-manager and kubectl v1.33.4 into a cache reused by later
# runs (CHEOPS_K8S_BIN, default ~/.cache/cheops/k8s/v1.33.4; ~11 min on 2
# cores when cold) and installs Debian's etcd-server when missing (root).
e2e-k8s:
	contrib/k8s/build.sh >/dev/null
	CHEOPS_K8S=1 $(GO) test -race -count=1 -timeout 15m -v ./kube 2>&1 | grep -E '^(=== RUN|--- |\s+---|\s+\S+_test.go|ok|FAIL|PASS|panic)'; exit $${PIPESTATUS[0]}

# Real OpenStack Glance sites (Debian's glance-api, no Keystone), one per
# site, behind three agents, driven with the openstack CLI
# (docs/openstack.md). Installs glance-api and python3-openstackclient
# when missing (root); about 3 minutes on 2 cores.
e2e-openstack:
	contrib/openstack/glance-sites.sh install
	CHEOPS_OPENSTACK=1 $(GO) test -race -count=1 -timeout 10m -run 'OpenStack' -v ./glance 2>&1 | grep -E '^(=== RUN|--- |\s+---|\s+\S+_test.go|ok|FAIL|PASS|panic)'; exit $${PIPESTATUS[0]}

# Every scenario's quick profile (about 8 minutes on 2 cores); results and
# plots into bench/results. BENCHFLAGS=--full runs the long profiles.
# `go test -bench` figures: see bench/README.md.
BENCHFLAGS ?=
bench: build
	for s in selectivity scale forwarding availability convergence; do \
		./$(BIN) bench $$s --out bench/results $(BENCHFLAGS) || exit 1; done

# Three sites on loopback and a narrated scenario; the sites stay up until
# Ctrl-C. DEMOFLAGS=--exit-after-scenario exits when it ends.
demo: build
	./$(BIN) demo $(DEMOFLAGS)

clean:
	rm -rf bin
