package crdt

import (
	"fmt"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
)

// topicPrefix starts the pubsub topic of every group.
const topicPrefix = "/cheops/crdt/1/"

// groupName is the canonical name of a site set: sorted, deduplicated,
// comma-separated.
func groupName(sites []string) (string, []string, error) {
	if len(sites) == 0 {
		return "", nil, fmt.Errorf("%w: a group needs at least one site", ErrBadGroup)
	}
	s := slices.Clone(sites)
	slices.Sort(s)
	s = slices.Compact(s)
	for _, name := range s {
		if name == "" || strings.ContainsAny(name, ",/ ") {
			return "", nil, fmt.Errorf("%w: bad site name %q", ErrBadGroup, name)
		}
	}
	return strings.Join(s, ","), s, nil
}

// groupTopic is the pubsub topic of a group: its members' peer ids.
func groupTopic(peers []peer.ID) string {
	ids := make([]string, len(peers))
	for i, p := range peers {
		ids[i] = p.String()
	}
	slices.Sort(ids)
	return topicPrefix + strings.Join(ids, ",")
}

// TopicAllows reports whether peer p may subscribe to topic: true only
// for a group topic that names p. It decides from the topic alone.
func TopicAllows(topic string, p peer.ID) bool {
	rest, ok := strings.CutPrefix(topic, topicPrefix)
	if !ok || p == "" {
		return false
	}
	id := p.String()
	for _, member := range strings.Split(rest, ",") {
		if member == id {
			return true
		}
	}
	return false
}
