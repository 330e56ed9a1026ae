package scope

import (
	"strings"
	"time"
)

// Scope is a parsed scope: one binding per service, or a single bare
// expression that applies to whichever service is called.
type Scope struct {
	Bindings []Binding
}

// Binding ties a service to the expression that places it. Service is empty
// for a bare expression.
type Binding struct {
	Service string
	Expr    Expr
}

// Expr is a node of a scope expression: Site, Every, Around, All, Any or
// Else.
type Expr interface {
	// precedence orders operators: Else < Any < All < atoms.
	precedence() int
	write(b *strings.Builder)
}

// Site names one site.
type Site struct{ Name string }

// Every is '*', every known site.
type Every struct{}

// Around is around(Center, Within): one site within round-trip time Within
// of Center, nearest first.
type Around struct {
	Center string
	Within time.Duration
}

// All is replication, 'a & b': every term runs.
type All struct{ Terms []Expr }

// Any is choice, 'a | b': exactly one term runs, the nearest reachable.
type Any struct{ Terms []Expr }

// Else is fallback, 'a ; b': the first term that can run.
type Else struct{ Terms []Expr }

const (
	precElse = iota + 1
	precAny
	precAll
	precAtom
)

func (Site) precedence() int   { return precAtom }
func (Every) precedence() int  { return precAtom }
func (Around) precedence() int { return precAtom }
func (All) precedence() int    { return precAll }
func (Any) precedence() int    { return precAny }
func (Else) precedence() int   { return precElse }

// For returns the expression that places service: its own binding, else the
// bare expression. ok is false when neither exists.
func (s *Scope) For(service string) (Expr, bool) {
	var bare Expr
	for _, b := range s.Bindings {
		if b.Service == service {
			return b.Expr, true
		}
		if b.Service == "" {
			bare = b.Expr
		}
	}
	return bare, bare != nil
}

// Services lists the services the scope binds, in written order. A bare
// expression contributes no name.
func (s *Scope) Services() []string {
	var out []string
	for _, b := range s.Bindings {
		if b.Service != "" {
			out = append(out, b.Service)
		}
	}
	return out
}

// Sites lists every site an expression names explicitly, in first-seen
// order, without duplicates. '*' contributes nothing: it depends on
// membership.
func Sites(e Expr) []string {
	var out []string
	seen := map[string]bool{}
	var walk func(Expr)
	add := func(name string) {
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	walk = func(e Expr) {
		switch e := e.(type) {
		case Site:
			add(e.Name)
		case Around:
			add(e.Center)
		case All:
			for _, t := range e.Terms {
				walk(t)
			}
		case Any:
			for _, t := range e.Terms {
				walk(t)
			}
		case Else:
			for _, t := range e.Terms {
				walk(t)
			}
		}
	}
	walk(e)
	return out
}
