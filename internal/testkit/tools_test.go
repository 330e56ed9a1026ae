package testkit

import (
	"fmt"
	"strings"
	"testing"
)

// recorder is a testing.TB that records how a test ended, without
// ending the calling test.
type recorder struct {
	testing.TB
	failed, skipped bool
	msg             string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = true
	r.msg = fmt.Sprintf(format, args...)
}

func (r *recorder) Skip(args ...any) {
	r.skipped = true
	r.msg = fmt.Sprint(args...)
}

func TestMissingFailsUnlessAllowed(t *testing.T) {
	for _, allow := range []string{"", "0", "1"} {
		t.Setenv(AllowSkipEnv, allow)
		r := &recorder{TB: t}
		if got := Tool(r, "apt-get install nothing", "cheops-no-such-program"); got != "" {
			t.Fatalf("found %q", got)
		}
		if allow == "1" != r.skipped || allow == "1" == r.failed {
			t.Errorf("%s=%q: failed %v, skipped %v", AllowSkipEnv, allow, r.failed, r.skipped)
		}
		if !strings.Contains(r.msg, "cheops-no-such-program is not installed (apt-get install nothing") {
			t.Errorf("message %q", r.msg)
		}
	}
}

func TestToolFindsTheFirstPresent(t *testing.T) {
	t.Setenv(AllowSkipEnv, "")
	r := &recorder{TB: t}
	if got := Tool(r, "", "cheops-no-such-program", "go"); got == "" || r.failed || r.skipped {
		t.Errorf("Tool = %q, failed %v, skipped %v", got, r.failed, r.skipped)
	}
}
