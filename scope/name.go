package scope

import (
	"errors"
	"fmt"
)

// NamePattern is the grammar of the SITE and SERVICE tokens of a scope,
// as a regular expression: a letter, then letters, digits, '_', '.' or '-'.
// Every name cheops accepts (a site in a trust file or --site, a service in
// --service, a site in a resource's replica set) follows it, so that any
// name can be written in a scope.
const NamePattern = `[A-Za-z][A-Za-z0-9_.-]*`

// ErrBadName is wrapped by the errors CheckName returns.
var ErrBadName = errors.New("scope: bad name")

// ValidName reports whether s is a SITE or SERVICE token of the scope
// grammar: exactly what the parser reads as one name (NamePattern).
// "around" is a valid name: it is a keyword only when '(' follows it.
func ValidName(s string) bool {
	if s == "" || !isLetter(rune(s[0])) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if r := rune(s[i]); !isNameRune(r) {
			return false
		}
	}
	return true
}

// isNameRune reports whether r may follow the first letter of a name.
func isNameRune(r rune) bool {
	return isLetter(r) || isDigit(r) || r == '_' || r == '.' || r == '-'
}

// CheckName returns nil when name is valid (ValidName), else an error
// wrapping ErrBadName that says what kind of name (site, service) was
// wrong and the grammar it must follow:
//
//	site name "x y" must match [A-Za-z][A-Za-z0-9_.-]*
func CheckName(kind, name string) error {
	if ValidName(name) {
		return nil
	}
	return &NameError{Kind: kind, Name: name}
}

// NameError is the error of CheckName.
type NameError struct {
	Kind string // "site", "service"
	Name string // the name refused
}

func (e *NameError) Error() string {
	return fmt.Sprintf("%s name %q must match %s", e.Kind, e.Name, NamePattern)
}

// Unwrap lets errors.Is(err, ErrBadName) match.
func (e *NameError) Unwrap() error { return ErrBadName }
