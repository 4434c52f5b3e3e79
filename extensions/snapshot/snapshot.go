// Package snapshot shares small stats snapshots among the instances of a
// cluster, for the dashboard's cluster view: each instance puts its own
// every few seconds while someone watches, and a dashboard reads them all.
//
// A Store is safe for concurrent use. It holds no goroutines; every call
// is one bounded round trip. The backend is Redis (redis.go); an instance
// alone needs no Store.
package snapshot

import (
	"context"
	"time"
)

// MaxInstances bounds how many snapshots All returns, so a dashboard's
// read stays bounded however many instances share the key space.
const MaxInstances = 64

// Store shares snapshots, opaque JSON documents, by instance.
type Store interface {
	// Put stores instance's snapshot, replacing its previous one; it is
	// dropped by All once ttl has passed without another Put, so an
	// instance that stopped disappears from the cluster view.
	Put(ctx context.Context, instance string, snap []byte, ttl time.Duration) error

	// All returns the snapshots put within their ttl, at most
	// MaxInstances, in no particular order.
	All(ctx context.Context) ([][]byte, error)

	// Watch marks the cluster as watched for ttl: instances then put
	// their snapshots. Watched reports whether a mark is live.
	Watch(ctx context.Context, ttl time.Duration) error
	Watched(ctx context.Context) (bool, error)
}
