// Package scope is the scope language of cheops: where each service's part
// of a request runs.
//
// A scope such as {posts: paris & berlin, images: around(paris, 10ms)} binds
// services to expressions over sites: '&' replicates, '|' chooses the nearest
// reachable site, ';' falls back, '*' is every known site and around(site, d)
// is one site within round-trip time d of site. '&' binds tighter than '|',
// which binds tighter than ';'. A bare expression (paris & berlin) places
// whichever service is called.
//
// # Parsing and printing
//
// Parse turns text into a Scope, and String prints it back in canonical
// form: one space around operators, ", " between bindings, the fewest
// parentheses the precedence allows, chains of one operator flattened.
// Parse(s.String()) equals s for every scope Parse returns.
//
// Errors are *SyntaxError values, wrapping ErrSyntax, that give the column
// (counted in characters, that is runes, from 1) and what was expected:
//
//	scope: column 9: expected site name, found '&'
//
// Parse bounds its input (MaxLength bytes, MaxDepth nested parentheses,
// MaxBindings services) and reports a breach as an error; it never panics.
//
// # Planning
//
// Scope.Plan resolves a service's expression against a membership View
// (the known sites, their state, the round-trip times between them and the
// local site) into a Plan: the target sites, which are required and which
// are standbys, the ';' alternatives and which was chosen, and why every
// other site was left out. See Scope.Plan for the rules.
//
// Everything here is a pure function of its arguments: no network, no
// clock, no randomness, so plans are the same on every call and every
// site that sees the same view.
package scope
