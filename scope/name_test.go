package scope

import (
	"errors"
	"regexp"
	"testing"
)

// ValidName, the NamePattern regular expression and the parser agree on
// what one name is.
func TestValidName(t *testing.T) {
	re := regexp.MustCompile(`^` + NamePattern + `$`)
	for _, s := range []string{
		"paris", "P", "a1", "site_2.eu-west", "around", "x-", "x.",
		"", "1paris", "_a", "-a", ".a", "a b", " a", "a ", "a&b", "a|b", "é", "aé", "a\n", "*", "a(b)", "a:b",
	} {
		got := ValidName(s)
		if want := re.MatchString(s); got != want {
			t.Errorf("ValidName(%q) = %v, NamePattern says %v", s, got, want)
		}
		e, err := ParseExpr(s)
		if parsed := err == nil && e == Expr(Site{Name: s}); got != parsed {
			t.Errorf("ValidName(%q) = %v, the parser reads one site: %v", s, got, parsed)
		}
		err = CheckName("site", s)
		if (err == nil) != got {
			t.Errorf("CheckName(%q) = %v, ValidName %v", s, err, got)
		}
		if err != nil && !errors.Is(err, ErrBadName) {
			t.Errorf("CheckName(%q) = %v, does not wrap ErrBadName", s, err)
		}
	}
	if got, want := CheckName("service", "a b").Error(), `service name "a b" must match [A-Za-z][A-Za-z0-9_.-]*`; got != want {
		t.Errorf("CheckName: %q, want %q", got, want)
	}
}
