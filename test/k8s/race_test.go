package k8s

import (
	"cheops/internal/testkit"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"
)

// TestKubectlRacesConverge: kubectl merge patches, JSON patches and
// applies of one configmap, sent at the same moments through the agents
// of two clusters, leave both clusters with the same object once nothing
// is pending — the order every replica's executor enforces.
func TestKubectlRacesConverge(t *testing.T) {
	w := newWorld(t, "a", "b")
	const ns = "/api/v1/namespaces/race"
	const cm = ns + "/configmaps/rc"
	ab := w.via("a", "{kube: a & b}")
	w.kubectl(ab, "create", "namespace", "race")
	w.kubectl(ab, "create", "-n", "race", "configmap", "rc", "--from-literal=k=v0")
	w.waitField([]string{"a", "b"}, cm, "data.k", "v0")

	var wg sync.WaitGroup
	for client := range 6 {
		s := []string{"a", "b"}[client%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			via := w.via(s, "")
			file := filepath.Join(t.TempDir(), "rc.yaml")
			for i := range 4 {
				i += 10 * client
				var args []string
				switch i % 3 {
				case 0:
					args = []string{"patch", "-n", "race", "configmap", "rc", "-p", fmt.Sprintf(`{"data":{"k":"%s-%d","%s":"%d"}}`, s, i, s, i)}
				case 1:
					args = []string{"patch", "-n", "race", "configmap", "rc", "--type=json", "-p", fmt.Sprintf(`[{"op":"replace","path":"/data/k","value":"%s-json-%d"}]`, s, i)}
				default:
					manifest := fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: rc\ndata:\n  k: %s-apply-%d\n  applied-by: %s\n", s, i, s)
					if err := os.WriteFile(file, []byte(manifest), 0o644); err != nil {
						t.Error(err)
						return
					}
					args = []string{"apply", "-n", "race", "-f", file}
				}
				if out, err := w.kubectlErr(via, args...); err != nil {
					t.Errorf("kubectl %v through %s: %v\n%s", args, s, err, out)
				}
			}
		}()
	}
	wg.Wait()

	id, ok := w.sites["a"].agent.Catalog().LookupLocal("kube", "a", cm)
	if !ok {
		t.Fatal("a's catalog does not record the configmap")
	}
	testkit.Eventually(t, 60*time.Second, "nothing pending and the clusters equal", func() error {
		for _, s := range []string{"a", "b"} {
			res, err := w.sites[s].agent.Catalog().Get(t.Context(), id)
			if err != nil {
				return err
			}
			for site, v := range res.PerSite {
				if len(v.Pending) > 0 {
					return fmt.Errorf("%s sees %s owing %v", s, site, v.Pending)
				}
			}
		}
		objA, objB := w.sites["a"].kube.get(t, cm), w.sites["b"].kube.get(t, cm)
		for _, f := range []string{"data", "metadata.annotations", "metadata.labels"} {
			if x, y := field(objA, f), field(objB, f); !reflect.DeepEqual(x, y) {
				return fmt.Errorf("%s differs: a %v, b %v", f, x, y)
			}
		}
		return nil
	})
}
