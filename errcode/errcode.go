// Package errcode lists the machine-readable codes of cheops' errors. One
// mistake has one code, whoever reports it: the HTTP API puts it in its
// JSON errors ({"error": "...", "code": "..."}), the command line prints it
// after the message of the errors it finds itself (`cheops scope check`
// naming an unknown site says unknown_site, as an agent answering a
// request scoped to that site does).
//
// The package has no dependencies, so that every package that writes
// errors can use it.
package errcode

// Codes of mistakes in the input: HTTP 400 (404 for not_found, 413 for
// too_large), exit status 2 on the command line.
const (
	// BadScope: a scope that does not parse, or that cannot place the
	// request.
	BadScope = "bad_scope"
	// UnknownSite: a site name that no site of the membership, nor any
	// binding, answers to.
	UnknownSite = "unknown_site"
	// BadInput: any other malformed argument or body.
	BadInput = "bad_input"
	// NotFound: an unknown resource, service or endpoint.
	NotFound = "not_found"
	// TooLarge: a body over the agent's limit.
	TooLarge = "too_large"
	// Unauthorized: the API's bearer token is missing or wrong.
	Unauthorized = "unauthorized"
	// BoundByConfig: an operator asked to forget a site binding that
	// only the trust configuration can change.
	BoundByConfig = "bound_by_config"
)

// Codes of failures: HTTP 5xx, exit status 1.
const (
	// Unreachable: no site that could run the request is reachable.
	Unreachable = "unreachable"
	// SiteFailed: a site was asked and did not answer.
	SiteFailed = "site_failed"
	// Internal: a fault of the agent itself.
	Internal = "internal"
)
