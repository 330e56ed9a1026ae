package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestScenarioConverges plays the whole demo and checks that it ends
// converged, with every step narrated.
func TestScenarioConverges(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := Run(ctx, Options{Out: &out, Dir: t.TempDir(), ExitAfterScenario: true}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{
		"sites: berlin=201, paris=201",
		"answered by berlin",
		"→ 404",
		"berlin still serves its copy locally: 200",
		"sites: berlin=pending, paris=200",
		"sites: berlin=201, paris=pending",
		"Converged:",
		"[buy bread and milk call mum]",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("narration lacks %q\n%s", want, text)
		}
	}
}
