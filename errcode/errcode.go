// Package errcode lists the machine-readable codes of cheops' errors. One
// mistake has one code, whoever reports it: the HTTP API puts it in its
// JSON errors ({"error": "...", "code": "..."}), the command line prints it
// after the message of the errors it finds itself (`cheops scope check`
// naming an unknown site says unknown_site, as an agent answering a
// request scoped to that site does).
//
// Of maps the errors of the pure packages (scope) to their codes, so that
// the command line and the HTTP API cannot name one mistake twice. Write
// is the one writer of the API's JSON errors, WriteJSON of its other JSON
// answers, so that every JSON body of the API has one form. The package
// depends on nothing but the standard library and scope, so that every
// package that answers HTTP requests can use it.
package errcode

import (
	"encoding/json"
	"errors"
	"net/http"

	"cheops/scope"
)

// Codes of mistakes in the input: HTTP 400 (404 for not_found, 413 for
// too_large), exit status 2 on the command line.
const (
	// BadScope: a scope that does not parse, or that cannot place the
	// request.
	BadScope = "bad_scope"
	// UnknownSite: a site name that no site of the membership, nor any
	// binding, answers to.
	UnknownSite = "unknown_site"
	// UnboundService: an explicit scope that does not place the called
	// service.
	UnboundService = "unbound_service"
	// BadInput: any other malformed argument or body.
	BadInput = "bad_input"
	// NotFound: an unknown resource, service or endpoint.
	NotFound = "not_found"
	// TooLarge: a body over the agent's limit.
	TooLarge = "too_large"
	// Unauthorized: the API's bearer token is missing or wrong.
	Unauthorized = "unauthorized"
	// BoundByConfig: an operator asked to change what only the agent's
	// configuration can change: forget a site binding of the trust
	// configuration, redefine or remove a configured scope name.
	BoundByConfig = "bound_by_config"
	// UnknownScope: a /s/{name}/ path or a scope name this agent does not
	// define (HTTP 404).
	UnknownScope = "unknown_scope"
)

// Codes of failures: HTTP 5xx, exit status 1.
const (
	// Unreachable: no site that could run the request is reachable.
	Unreachable = "unreachable"
	// SiteFailed: a site was asked and did not answer.
	SiteFailed = "site_failed"
	// OutcomeUnknown: a site was sent the request and did not answer in
	// time; it may have run there. Running it again is safe only for what
	// the agent deduplicates (attach, detach); look in the catalog first.
	OutcomeUnknown = "outcome_unknown"
	// Internal: a fault of the agent itself.
	Internal = "internal"
)

// Of returns the code of an error of the scope package (BadScope,
// UnknownSite, UnboundService, Unreachable), "" for any other error.
func Of(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, scope.ErrUnknownSite):
		return UnknownSite
	case errors.Is(err, scope.ErrNoBinding):
		return UnboundService
	case errors.Is(err, scope.ErrSyntax):
		return BadScope
	case errors.Is(err, scope.ErrUnreachable):
		return Unreachable
	}
	return ""
}

// Body is the JSON of every error answer of cheops' HTTP API, whichever
// package writes it (agent, forward, catalog).
type Body struct {
	Error string `json:"error"` // what went wrong, for a person
	Code  string `json:"code"`  // one of this package's codes, for a program
}

// Write answers w with status and an error in the API's format: a Body of
// msg and code, as indented JSON. It is the one error writer of the API.
func Write(w http.ResponseWriter, status int, code, msg string) {
	WriteJSON(w, status, Body{Error: msg, Code: code})
}

// WriteJSON answers w with status and v as indented JSON
// (application/json). Headers set on w before are kept. It is the one
// writer of the API's JSON answers; an encoding error, once the status is
// sent, cannot be reported and is dropped.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
