// Package openstack holds the end-to-end tests of OpenStack Glance behind
// cheops agents (package forward/glance): three real Glance sites
// (Debian's glance-api, started by contrib/openstack/glance-sites.sh),
// an in-process agent in front of each, driven with the real openstack
// CLI. They run with `make e2e-openstack` (CHEOPS_OPENSTACK=1) and skip
// with a message otherwise.
package openstack
