package agent

import (
	"cheops/forward"
	"cheops/forward/glance"
	"cheops/forward/kube"
)

// withRoutes gives a service of kind kube or glance its package's routes,
// unless it has routes of its own. Packages kube and glance build on
// forward, so forward cannot do it.
func withRoutes(svc forward.Service) forward.Service {
	if svc.Routes != nil {
		return svc
	}
	switch svc.Kind {
	case forward.KindKube:
		svc.Routes = kube.New(nil)
	case forward.KindGlance:
		svc.Routes = glance.Routes{}
	}
	return svc
}
