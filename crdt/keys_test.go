package crdt

import (
	"testing"

	dshelp "github.com/ipfs/boxo/datastore/dshelp"
	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	mh "github.com/multiformats/go-multihash"
)

// The group's keys, built as strings, are the keys the path-cleaning
// construction gives, for every kind of name groupName accepts: the
// layout of stores written before must not move.
func TestGroupKeysAsCleaned(t *testing.T) {
	sum, err := mh.Sum([]byte("a block"), mh.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	c := cid.NewCidV1(cid.DagProtobuf, sum)
	for _, name := range []string{"paris", "berlin,paris", "s01,s02,s99", "a.b,c-d", "x..y", ".", ".."} {
		cleanedGroup := ds.NewKey("/g").ChildString(name)
		if got := groupPrefix(name); got != cleanedGroup {
			t.Errorf("groupPrefix(%q) = %q, want %q", name, got, cleanedGroup)
		}
		g := &Group{name: name}
		cleanedCRDT := cleanedGroup.ChildString("crdt")
		if got := g.crdtPrefix(); got != cleanedCRDT {
			t.Errorf("crdtPrefix of %q = %q, want %q", name, got, cleanedCRDT)
		}
		want := cleanedCRDT.ChildString(processedNamespace).ChildString(dshelp.MultihashToDsKey(c.Hash()).String())
		if got := g.processedKey(c); got != want {
			t.Errorf("processedKey in %q = %q, want %q", name, got, want)
		}
	}
}

// BenchmarkProcessedKey: the key read for every head an announcement
// names.
func BenchmarkProcessedKey(b *testing.B) {
	sum, _ := mh.Sum([]byte("a block"), mh.SHA2_256, -1)
	c := cid.NewCidV1(cid.DagProtobuf, sum)
	g := &Group{name: "s01,s17,s42"}
	b.ReportAllocs()
	for b.Loop() {
		_ = g.processedKey(c)
	}
}
