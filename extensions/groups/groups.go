// Package groups keeps the membership of broadcast groups across every
// instance: who may join (capacity, the closed flag), with which role, and
// each group's metadata (docs/protocol.md §6.3).
//
// The Registry decides membership; frames travel elsewhere. The instance
// owning a connection knows its groups and roles, sends join, leave and
// members frames itself, and relays "__group:<name>" frames through the bus
// so every instance delivers them to its local members (a close frame also
// makes each instance drop its local members). A member is a connection:
// the Registry stores no identity.
//
// # Concurrency
//
// A Registry is safe for concurrent use. Join checks the closed flag and
// the capacity and inserts in one atomic step cluster-wide, so concurrent
// joins never overfill a group and none slips past a concurrent CloseGroup
// (docs/design.md, lesson L-02, L-22). The gateway serializes calls per
// connection.
//
// # Crashed instances
//
// Each instance refreshes its members every Config.Refresh; the members
// of an instance that stops refreshing expire after Config.TTL and then
// neither count nor block joins.
//
// # Backends
//
// Memory serves one instance. Redis (redis.go) serves a cluster: one hash
// slot per group, one Lua script per call, member expiry by the server's
// clock, and a heartbeat goroutine per registry. A Redis registry is a
// Closer: Close(ctx) stops it and removes its instance's members. Both run
// one conformance suite (groups_test.go).
package groups

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Role is a member's role in a group. Application events may go to all
// members or to the members of one role.
type Role string

// The roles of docs/protocol.md §6.3.
const (
	RoleMember Role = "member"
	RoleAdmin  Role = "admin"
	RoleViewer Role = "viewer"
)

// Valid reports whether r is one of the three roles. Roles come from API
// bodies, so the gateway checks them before calling a Registry.
func (r Role) Valid() bool {
	return r == RoleMember || r == RoleAdmin || r == RoleViewer
}

// Counts is how many members a group has in each role. It is all a members
// frame needs ([{"role":…},…] names no member), so a join costs the same in
// a group of ten and of ten thousand (the reference package returned every
// member's JSON from its join script, docs/design.md, lesson L-23).
type Counts struct {
	Member, Admin, Viewer int
}

// Total is the number of members.
func (c Counts) Total() int { return c.Member + c.Admin + c.Viewer }

// State is a group as the API shows it, read as one snapshot.
type State struct {
	Counts Counts
	Meta   json.RawMessage // a JSON object; nil when never set
	Closed bool
}

var (
	// ErrFull means the group already had its maximum number of members;
	// the connection did not join (subscribe answer FORBIDDEN, the "full"
	// event).
	ErrFull = errors.New("groups: group is full")

	// ErrClosed means the group was closed; it refuses every join.
	ErrClosed = errors.New("groups: group is closed")

	// ErrInvalidRole means Join was given a role that is not Valid; the
	// connection did not join. The gateway checks roles first, so this is
	// a caller's bug rather than a client's error.
	ErrInvalidRole = errors.New("groups: invalid role")
)

// Registry is the cluster-wide membership of groups. Group names and
// connection ids are opaque strings to it; the caller validates them.
type Registry interface {
	// Join adds connection connID to group with role, unless the group is
	// closed (ErrClosed) or already has maxMembers members (ErrFull;
	// maxMembers ≤ 0 means no limit), and returns the counts after the
	// join. The checks and the insert are one atomic step. Joining again
	// with the same connID changes its role and is never refused for
	// capacity. role must be Valid; otherwise Join returns an error
	// matching ErrInvalidRole and changes nothing.
	Join(ctx context.Context, group, connID string, role Role, maxMembers int) (Counts, error)

	// Leave removes connID from group and returns the counts after it; a
	// connection that was not a member changes nothing and is no error.
	Leave(ctx context.Context, group, connID string) (Counts, error)

	// State returns the group's counts, metadata and closed flag.
	State(ctx context.Context, group string) (State, error)

	// CloseGroup marks group closed and removes every member, atomically
	// with respect to Join. It is final: a closed group refuses joins for
	// the life of the registry's storage. Closing a closed group is no
	// error.
	CloseGroup(ctx context.Context, group string) error

	// SetMeta replaces the group's metadata with meta, a JSON object
	// stored byte for byte; a closed group keeps its metadata.
	SetMeta(ctx context.Context, group string, meta json.RawMessage) error
}

// Closer is implemented by a Registry that holds goroutines or
// connections. Close stops it, bounded by ctx, and releases what it holds;
// after Close, Join refuses every join and the other methods keep working.
type Closer interface {
	Close(ctx context.Context) error
}

// Defaults of Config.
const (
	// DefaultTTL is the reference package's memberTtl.
	DefaultTTL     = 120 * time.Second
	DefaultRefresh = 30 * time.Second
)

// Config is the part of a Registry's configuration every backend shares;
// backend configs embed it. The zero value is the default configuration.
type Config struct {
	// TTL is how long the members of an instance that stopped refreshing
	// them keep counting. Default: DefaultTTL.
	TTL time.Duration

	// Refresh is how often an instance refreshes its members; it must be
	// below TTL (constructors refuse such a Config). Default:
	// DefaultRefresh, or TTL/3 when that is shorter.
	Refresh time.Duration

	// Now is the clock for expiry in the memory backend; Redis uses the
	// server's clock. Default: time.Now.
	Now func() time.Time
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.TTL <= 0 {
		c.TTL = DefaultTTL
	}
	if c.Refresh <= 0 {
		c.Refresh = min(DefaultRefresh, c.TTL/3)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
