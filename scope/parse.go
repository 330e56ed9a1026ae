package scope

import (
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// Limits on what Parse accepts, so that hostile input costs bounded time and
// memory and never overflows the stack.
const (
	// MaxLength is the longest scope text accepted, in bytes. Real scopes
	// are a few hundred bytes; 64 KiB leaves room for generated ones.
	MaxLength = 64 << 10
	// MaxDepth is the deepest nesting of parentheses accepted.
	MaxDepth = 64
	// MaxBindings is the largest number of services one scope may bind.
	MaxBindings = 1024
)

// ErrSyntax is wrapped by every error Parse returns.
var ErrSyntax = errors.New("scope: syntax error")

// SyntaxError says where parsing stopped and what it wanted there. Column
// counts characters (runes) from 1.
type SyntaxError struct {
	Column   int
	Expected string
	Found    string
	// Detail replaces "expected X, found Y" when the problem is not a
	// missing token (a limit, a duplicate service).
	Detail string
}

func (e *SyntaxError) Error() string {
	if e.Detail != "" {
		return fmt.Sprintf("scope: column %d: %s", e.Column, e.Detail)
	}
	return fmt.Sprintf("scope: column %d: expected %s, found %s", e.Column, e.Expected, e.Found)
}

// Unwrap lets errors.Is(err, ErrSyntax) match.
func (e *SyntaxError) Unwrap() error { return ErrSyntax }

// Parse reads a scope: either `{service: expr, ...}` or a bare expression,
// which then applies to the service being called.
func Parse(src string) (*Scope, error) {
	if len(src) > MaxLength {
		return nil, &SyntaxError{Column: 1, Detail: fmt.Sprintf("scope of %d bytes is longer than the limit of %d", len(src), MaxLength)}
	}
	if !utf8.ValidString(src) {
		return nil, &SyntaxError{Column: 1 + utf8.RuneCountInString(src[:firstInvalid(src)]), Detail: "invalid UTF-8"}
	}
	p := &parser{lex: lexer{src: src}}
	p.next()
	s, err := p.scope()
	if err != nil {
		return nil, err
	}
	return s, nil
}

// ParseExpr reads a bare expression such as `paris & berlin`.
func ParseExpr(src string) (Expr, error) {
	s, err := Parse(src)
	if err != nil {
		return nil, err
	}
	if len(s.Bindings) != 1 || s.Bindings[0].Service != "" {
		return nil, &SyntaxError{Column: 1, Expected: "site expression", Found: "'{'"}
	}
	return s.Bindings[0].Expr, nil
}

func firstInvalid(s string) int {
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size == 1 {
				return i
			}
		}
	}
	return len(s)
}

type parser struct {
	lex   lexer
	tok   token
	depth int
}

func (p *parser) next() { p.tok = p.lex.next() }

func (p *parser) fail(expected string) error {
	return &SyntaxError{Column: p.tok.col, Expected: expected, Found: p.tok.describe()}
}

func (p *parser) expect(k kind, what string) error {
	if p.tok.kind != k {
		return p.fail(what)
	}
	p.next()
	return nil
}

func (p *parser) scope() (*Scope, error) {
	if p.tok.kind == tokEOF {
		return nil, p.fail("'{' or a site expression")
	}
	if p.tok.kind != tokLBrace {
		e, err := p.expr()
		if err != nil {
			return nil, err
		}
		if p.tok.kind != tokEOF {
			return nil, p.fail("'&', '|', ';' or end of input")
		}
		return &Scope{Bindings: []Binding{{Expr: e}}}, nil
	}
	p.next()
	s := &Scope{}
	seen := map[string]bool{}
	for {
		if p.tok.kind != tokIdent {
			return nil, p.fail("service name")
		}
		name, col := p.tok.text, p.tok.col
		if seen[name] {
			return nil, &SyntaxError{Column: col, Detail: fmt.Sprintf("service '%s' is bound twice", name)}
		}
		if len(s.Bindings) == MaxBindings {
			return nil, &SyntaxError{Column: col, Detail: fmt.Sprintf("more than %d services", MaxBindings)}
		}
		seen[name] = true
		p.next()
		if err := p.expect(tokColon, "':'"); err != nil {
			return nil, err
		}
		e, err := p.expr()
		if err != nil {
			return nil, err
		}
		s.Bindings = append(s.Bindings, Binding{Service: name, Expr: e})
		switch p.tok.kind {
		case tokComma:
			p.next()
			continue
		case tokRBrace:
			p.next()
			if p.tok.kind != tokEOF {
				return nil, p.fail("end of input")
			}
			return s, nil
		default:
			return nil, p.fail("'&', '|', ';', ',' or '}'")
		}
	}
}

// expr := alt (';' alt)*
func (p *parser) expr() (Expr, error) {
	return p.chain(tokSemi, p.alt, func(ts []Expr) Expr { return Else{Terms: ts} })
}

// alt := all ('|' all)*
func (p *parser) alt() (Expr, error) {
	return p.chain(tokBar, p.all, func(ts []Expr) Expr { return Any{Terms: ts} })
}

// all := atom ('&' atom)*
func (p *parser) all() (Expr, error) {
	return p.chain(tokAmp, p.atom, func(ts []Expr) Expr { return All{Terms: ts} })
}

// chain parses operands separated by op and flattens nested uses of the
// same operator, so that `(a & b) & c` and `a & b & c` are one node.
func (p *parser) chain(op kind, operand func() (Expr, error), build func([]Expr) Expr) (Expr, error) {
	first, err := operand()
	if err != nil {
		return nil, err
	}
	if p.tok.kind != op {
		return first, nil
	}
	terms := flatten(nil, first, op)
	for p.tok.kind == op {
		p.next()
		t, err := operand()
		if err != nil {
			return nil, err
		}
		terms = flatten(terms, t, op)
	}
	return build(terms), nil
}

func flatten(terms []Expr, e Expr, op kind) []Expr {
	switch op {
	case tokAmp:
		if a, ok := e.(All); ok {
			return append(terms, a.Terms...)
		}
	case tokBar:
		if a, ok := e.(Any); ok {
			return append(terms, a.Terms...)
		}
	case tokSemi:
		if a, ok := e.(Else); ok {
			return append(terms, a.Terms...)
		}
	}
	return append(terms, e)
}

// atom := SITE | '*' | around | '(' expr ')'
func (p *parser) atom() (Expr, error) {
	switch p.tok.kind {
	case tokStar:
		p.next()
		return Every{}, nil
	case tokLParen:
		if p.depth == MaxDepth {
			return nil, &SyntaxError{Column: p.tok.col, Detail: fmt.Sprintf("parentheses nested deeper than %d", MaxDepth)}
		}
		p.depth++
		p.next()
		e, err := p.expr()
		if err != nil {
			return nil, err
		}
		if err := p.expect(tokRParen, "'&', '|', ';' or ')'"); err != nil {
			return nil, err
		}
		p.depth--
		return e, nil
	case tokIdent:
		name := p.tok.text
		p.next()
		if name == "around" && p.tok.kind == tokLParen {
			return p.around()
		}
		return Site{Name: name}, nil
	default:
		return nil, p.fail("site name")
	}
}

// around := 'around' '(' SITE ',' DURATION ')', with 'around' consumed.
func (p *parser) around() (Expr, error) {
	p.next() // '('
	if p.tok.kind != tokIdent {
		return nil, p.fail("site name")
	}
	center := p.tok.text
	p.next()
	if err := p.expect(tokComma, "','"); err != nil {
		return nil, err
	}
	if p.tok.kind != tokNumber {
		return nil, p.fail("duration such as 10ms")
	}
	d, err := time.ParseDuration(p.tok.text)
	if err != nil || d <= 0 {
		return nil, p.fail("positive duration such as 10ms")
	}
	p.next()
	if err := p.expect(tokRParen, "')'"); err != nil {
		return nil, err
	}
	return Around{Center: center, Within: d}, nil
}

type kind int

const (
	tokEOF kind = iota
	tokIdent
	tokNumber
	tokLBrace
	tokRBrace
	tokLParen
	tokRParen
	tokColon
	tokComma
	tokAmp
	tokBar
	tokSemi
	tokStar
	tokInvalid
)

type token struct {
	kind kind
	text string
	col  int
}

func (t token) describe() string {
	switch t.kind {
	case tokEOF:
		return "end of input"
	case tokIdent, tokNumber:
		return "'" + t.text + "'"
	case tokInvalid:
		return strconv.QuoteRune([]rune(t.text)[0])
	default:
		return "'" + t.text + "'"
	}
}

// lexer splits scope text into tokens, tracking the rune column.
type lexer struct {
	src string
	pos int // byte offset
	col int // rune column of pos, from 0
}

func (l *lexer) peek() (rune, int) {
	if l.pos >= len(l.src) {
		return -1, 0
	}
	return utf8.DecodeRuneInString(l.src[l.pos:])
}

func (l *lexer) advance(size int) {
	l.pos += size
	l.col++
}

func (l *lexer) next() token {
	for {
		r, size := l.peek()
		if r == ' ' || r == '\t' || r == '\n' || r == '\r' {
			l.advance(size)
			continue
		}
		break
	}
	start, col := l.pos, l.col+1
	r, size := l.peek()
	if r < 0 {
		return token{kind: tokEOF, col: col}
	}
	if k, ok := punctuation[r]; ok {
		l.advance(size)
		return token{kind: k, text: string(r), col: col}
	}
	switch {
	case isLetter(r):
		for {
			l.advance(size)
			r, size = l.peek()
			if !isNameRune(r) {
				break
			}
		}
		return token{kind: tokIdent, text: l.src[start:l.pos], col: col}
	case isDigit(r) || r == '.' && l.digitAfter(size):
		// A duration: digits, dots and unit letters (µ included), as Go
		// writes them: 10ms, 1.5s, .5s, 1h2m.
		for {
			l.advance(size)
			r, size = l.peek()
			if !(isLetter(r) || isDigit(r) || r == '.' || r == 'µ' || r == 'μ') {
				break
			}
		}
		return token{kind: tokNumber, text: l.src[start:l.pos], col: col}
	default:
		l.advance(size)
		return token{kind: tokInvalid, text: string(r), col: col}
	}
}

// digitAfter reports whether a digit follows the current rune, of size
// bytes.
func (l *lexer) digitAfter(size int) bool {
	return l.pos+size < len(l.src) && isDigit(rune(l.src[l.pos+size]))
}

var punctuation = map[rune]kind{
	'{': tokLBrace, '}': tokRBrace, '(': tokLParen, ')': tokRParen,
	':': tokColon, ',': tokComma, '&': tokAmp, '|': tokBar, ';': tokSemi, '*': tokStar,
}

func isLetter(r rune) bool { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' }
func isDigit(r rune) bool  { return r >= '0' && r <= '9' }
