package scope

import "strings"

// String prints the scope in canonical form: `{posts: paris & berlin}`, or
// the bare expression alone. Parse(s.String()) yields a Scope equal to s.
func (s *Scope) String() string {
	var b strings.Builder
	if len(s.Bindings) == 1 && s.Bindings[0].Service == "" {
		s.Bindings[0].Expr.write(&b)
		return b.String()
	}
	b.WriteByte('{')
	for i, bind := range s.Bindings {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(bind.Service)
		b.WriteString(": ")
		bind.Expr.write(&b)
	}
	b.WriteByte('}')
	return b.String()
}

// Format prints an expression in canonical form.
func Format(e Expr) string {
	var b strings.Builder
	e.write(&b)
	return b.String()
}

func (e Site) write(b *strings.Builder) { b.WriteString(e.Name) }

func (Every) write(b *strings.Builder) { b.WriteByte('*') }

func (e Around) write(b *strings.Builder) {
	b.WriteString("around(")
	b.WriteString(e.Center)
	b.WriteString(", ")
	b.WriteString(e.Within.String())
	b.WriteByte(')')
}

func (e All) write(b *strings.Builder)  { writeTerms(b, e.Terms, " & ", precAll) }
func (e Any) write(b *strings.Builder)  { writeTerms(b, e.Terms, " | ", precAny) }
func (e Else) write(b *strings.Builder) { writeTerms(b, e.Terms, " ; ", precElse) }

// writeTerms joins terms with op, parenthesising a term only when it binds
// looser than (or as loosely as) the operator around it.
func writeTerms(b *strings.Builder, terms []Expr, op string, prec int) {
	for i, t := range terms {
		if i > 0 {
			b.WriteString(op)
		}
		if t.precedence() <= prec {
			b.WriteByte('(')
			t.write(b)
			b.WriteByte(')')
			continue
		}
		t.write(b)
	}
}
