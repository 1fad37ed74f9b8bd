package config

import (
	"errors"
	"fmt"
	"os/user"
	"slices"
	"strconv"

	"github.com/switchyard-project/switchyard/internal/settings"
)

// ErrUnknownName is wrapped when a user or group name cannot be resolved.
var ErrUnknownName = errors.New("unknown user or group")

// Resolver turns user and group names into numeric ids. Grants are resolved
// only when the daemon needs them, with a Resolver it chooses; tests pass
// functions that need no accounts on the machine.
type Resolver struct {
	User  func(name string) (uint32, error)
	Group func(name string) (uint32, error)
}

// SystemResolver resolves names with os/user (the passwd and group
// databases).
func SystemResolver() Resolver {
	return Resolver{User: lookupUser, Group: lookupGroup}
}

func lookupUser(name string) (uint32, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if errors.As(err, &unknown) {
			return 0, fmt.Errorf("%w: no user %s on this system: create it, or grant its numeric id under uids", ErrUnknownName, quote(name))
		}
		return 0, fmt.Errorf("look up user %s: %w", quote(name), err)
	}
	return parseID(u.Uid)
}

func lookupGroup(name string) (uint32, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		var unknown user.UnknownGroupError
		if errors.As(err, &unknown) {
			return 0, fmt.Errorf("%w: no group %s on this system: create it, or grant its numeric id under gids", ErrUnknownName, quote(name))
		}
		return 0, fmt.Errorf("look up group %s: %w", quote(name), err)
	}
	return parseID(g.Gid)
}

func parseID(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("id %s: %w", quote(s), err)
	}
	return uint32(v), nil
}

// Principals are resolved grants: the uids and gids that may register
// sockets for a label, sorted and without repeats.
type Principals struct {
	UIDs []uint32
	GIDs []uint32
}

// Permits reports whether a peer with this uid, or one of these gids (its
// primary and supplementary groups, as SO_PEERCRED and SO_PEERGROUPS report
// them), is granted. Root is not special here; the
// caller decides what root may do.
func (p Principals) Permits(uid uint32, gids ...uint32) bool {
	if _, ok := slices.BinarySearch(p.UIDs, uid); ok {
		return true
	}
	for _, gid := range gids {
		if _, ok := slices.BinarySearch(p.GIDs, gid); ok {
			return true
		}
	}
	return false
}

// Resolve turns g into ids, looking names up with r.
func (r Resolver) Resolve(g settings.Grants) (Principals, error) {
	p := Principals{
		UIDs: slices.Clone(g.UIDs),
		GIDs: slices.Clone(g.GIDs),
	}
	for i, name := range g.Users {
		if r.User == nil {
			return Principals{}, fmt.Errorf("users[%d]: cannot resolve user %s: no resolver for user names", i, quote(name))
		}
		id, err := r.User(name)
		if err != nil {
			return Principals{}, fmt.Errorf("users[%d]: %w", i, err)
		}
		p.UIDs = append(p.UIDs, id)
	}
	for i, name := range g.Groups {
		if r.Group == nil {
			return Principals{}, fmt.Errorf("groups[%d]: cannot resolve group %s: no resolver for group names", i, quote(name))
		}
		id, err := r.Group(name)
		if err != nil {
			return Principals{}, fmt.Errorf("groups[%d]: %w", i, err)
		}
		p.GIDs = append(p.GIDs, id)
	}
	slices.Sort(p.UIDs)
	slices.Sort(p.GIDs)
	p.UIDs = slices.Compact(p.UIDs)
	p.GIDs = slices.Compact(p.GIDs)
	return p, nil
}
