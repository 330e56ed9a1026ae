# cheops — see README.md. Every target works from a fresh clone.
SHELL   := /bin/bash
GO      ?= go
BIN     := bin/cheops
PKGS    := ./...
FUZZTIME ?= 200000x
FUZZSHORT ?= 15000x

.PHONY: all build install deps check-deps test vet unit fuzz bench demo e2e e2e-k8s e2e-openstack clean

all: build

# The version `cheops --version` and GET /v1/health report; without it
# (go build, go install) the binary derives one from its build information.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)

build:
	$(GO) build -ldflags "-X cheops/version.version=$(VERSION)" -o $(BIN) ./cmd/cheops

# `go install` with the version: cheops lands in $(go env GOBIN), else
# $(go env GOPATH)/bin; says so, and whether that directory is on PATH.
install:
	$(GO) install -ldflags "-X cheops/version.version=$(VERSION)" ./cmd/cheops
	@dir="$$($(GO) env GOBIN)"; dir="$${dir:-$$($(GO) env GOPATH)/bin}"; \
	echo "installed $$dir/cheops"; \
	case ":$$PATH:" in *":$$dir:"*) ;; *) echo "$$dir is not on PATH: export PATH=\"\$$PATH:$$dir\"";; esac

# What the tests run beside the agents (json-server, Chromium, HAProxy,
# etcd; nftables and iproute2 for make e2e), from Debian and npm; root or
# sudo. The binary itself installs nothing.
deps:
	contrib/install-deps.sh

# make test installs a program its tests need when it is missing (root
# or sudo; it fails at once, saying what, when it cannot), unless
# CHEOPS_ALLOW_SKIP=1: then the tests that need it skip, and the summary
# says so.
check-deps:
	@contrib/install-deps.sh --check || [ "$$CHEOPS_ALLOW_SKIP" = 1 ] || \
		{ echo "deps: installing them (contrib/install-deps.sh)"; contrib/install-deps.sh; }

vet:
	$(GO) vet $(PKGS)

# Race-enabled tests of every package (fuzz targets run their seed
# corpora), then one line: passed, failed, skipped and why
# (contrib/testsummary).
unit:
	$(GO) build -o bin/testsummary ./contrib/testsummary
	set -o pipefail; $(GO) test -race -count=1 -timeout 12m -json $(PKGS) | bin/testsummary

# A short, bounded run of every fuzz target over its committed corpus and
# fresh inputs. Not part of make test: each target builds its package
# anew with fuzzing instrumentation (about a minute each on 2 cores); CI
# runs it after make test. The budgets are counts of inputs, not times:
# with a time, Go 1.26's fuzzing coordinator can fail a target with a
# bare "context deadline exceeded" at the deadline (go.dev/issue/75804,
# fixed in Go 1.27), as FuzzReadFrame did once here.
fuzz:
	$(GO) test ./scope -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=$(FUZZTIME)
	$(GO) test ./node -run='^$$' -fuzz='^FuzzDecodeRecord$$' -fuzztime=$(FUZZSHORT)
	$(GO) test ./crdt -run='^$$' -fuzz='^FuzzReadFrame$$' -fuzztime=$(FUZZSHORT)
	$(GO) test ./crdt -run='^$$' -fuzz='^FuzzParseBlock$$' -fuzztime=$(FUZZSHORT)
	$(GO) test ./catalog -run='^$$' -fuzz='^FuzzApply$$' -fuzztime=$(FUZZSHORT)

test: check-deps vet unit

# Real partitions: network namespaces, veth links, nftables cuts, agent
# processes and json-server in each namespace. Needs root, iproute2 and
# nftables (make deps installs them); fails naming what is missing
# otherwise.
e2e:
	$(GO) build -o bin/testsummary ./contrib/testsummary
	set -o pipefail; CHEOPS_FAULTS=1 $(GO) test -count=1 -timeout 15m -json ./test/faults | bin/testsummary -progress

# Real Kubernetes API servers, one per site, behind three agents, driven
# with plain kubectl (docs/kubernetes.md). Builds kube-apiserver,
# kube-controller-manager and kubectl v1.33.4 into a cache reused by later
# runs (CHEOPS_K8S_BIN, default ~/.cache/cheops/k8s/v1.33.4; ~11 min on 2
# cores when cold) and installs Debian's etcd-server when missing (root).
e2e-k8s:
	contrib/k8s/build.sh >/dev/null
	$(GO) build -o bin/testsummary ./contrib/testsummary
	set -o pipefail; CHEOPS_K8S=1 $(GO) test -race -count=1 -timeout 15m -json ./test/k8s | bin/testsummary -progress

# Real OpenStack Glance sites (Debian's glance-api, no Keystone), one per
# site, behind three agents, driven with the openstack CLI
# (docs/openstack.md). Installs glance-api and python3-openstackclient
# when missing (root); about 3 minutes on 2 cores.
e2e-openstack:
	contrib/openstack/glance-sites.sh install
	$(GO) build -o bin/testsummary ./contrib/testsummary
	set -o pipefail; CHEOPS_OPENSTACK=1 $(GO) test -race -count=1 -timeout 10m -run 'OpenStack' -json ./test/openstack | bin/testsummary -progress

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
