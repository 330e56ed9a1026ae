package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"cheops/catalog"
	"cheops/internal/testkit"
)

// The catalogs agree when the last site of a replica set got the last
// operation of the set the catalogs finally hold; resources held before
// the heal do not count, and an operation seen early at one site does
// not hide a late one at another.
func TestViewAgreementIsTheLastCompletion(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	heal := time.Now()
	at := func(n int) time.Time { return heal.Add(ms(n)) }
	v := &viewTimeline{
		start:   heal,
		visible: map[string]map[string]time.Time{"a": {"r2": at(30)}, "b": {}},
		ops: map[string]map[string]time.Time{
			"a": {"o1": at(10), "o3": at(40)},
			"b": {"o1": at(20), "o3": at(90), "o9": at(500)}, // o9: not an operation of an expected resource
		},
		resyncs: map[string]int{},
	}
	res := func(id string, ops ...string) catalog.Resource {
		r := catalog.Resource{ID: id}
		for _, o := range ops {
			r.Operations = append(r.Operations, catalog.Operation{ID: o})
		}
		return r
	}
	cats := map[string][]catalog.Resource{
		"a": {res("r1", "o1"), res("r2", "o2", "o3"), res("r0", "o0")},
		"b": {res("r1", "o1"), res("r2", "o2", "o3"), res("r0", "o0")},
	}
	want := map[string][]string{"r0": {"a", "b"}, "r1": {"a", "b"}, "r2": {"a", "b"}}
	va := v.agreement(cats, want)
	if va.At != ms(90) {
		t.Fatalf("agreement at %v, want 90ms (o3 reaching b)", va.At)
	}
	if va.Late != 4 {
		t.Fatalf("%d late resource-site pairs, want 4 (r0 was held before the heal)", va.Late)
	}
	if va.BySite["a"].At != ms(40) || va.BySite["b"].At != ms(90) {
		t.Fatalf("per site: %+v", va.BySite)
	}
}

// The sampler counts the CPU a process used between two instants, from a
// sample taken before the first one (sampleCPU samples before it
// returns: a sampler started just before a heal covers the heal).
func TestCPUSamplerCoversTheInterval(t *testing.T) {
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/stat", os.Getpid())); err != nil {
		t.Skip("no /proc")
	}
	self, err := os.FindProcess(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Sites: []*Site{{Name: "s00", agent: &exec.Cmd{Process: self}}}}
	s := sampleCPU(context.Background(), c, 5*time.Millisecond)
	defer s.stop()
	from := time.Now()
	// Burn 300 ms of CPU, by this process's own count.
	var x uint64
	for start := SelfCPU(); SelfCPU()-start < 300*time.Millisecond; {
		for i := range 100000 {
			x += uint64(i) * x
		}
	}
	_ = x
	to := time.Now()
	testkit.Eventually(t, 5*time.Second, "a sample after the interval", func() error {
		if s.between(from, to) == 0 {
			return errors.New("no sample after the interval yet")
		}
		return nil
	})
	if got := s.between(from, to); got < 250*time.Millisecond {
		t.Fatalf("%v of CPU counted for a loop that used 300 ms", got)
	}
}
