// Package k8s holds the end-to-end tests of Kubernetes API servers behind
// cheops agents (package forward/kube): in-process agents in front of a
// fake API server, which run under `make test`, and in front of real
// kube-apiserver processes driven with kubectl, which run with `make
// e2e-k8s` (CHEOPS_K8S=1) and skip with a message otherwise.
package k8s
