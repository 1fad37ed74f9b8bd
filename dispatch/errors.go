package dispatch

import "errors"

// Sentinel errors that callers branch on with errors.Is.
var (
	// ErrConflict: the change would make the choice between bindings
	// ambiguous, or rebinds a key to another label.
	ErrConflict = errors.New("conflicting binding")
	// ErrNotFound: no such binding, label or destination.
	ErrNotFound = errors.New("not found")
	// ErrCapacity: a fixed capacity of the maps would be exceeded.
	ErrCapacity = errors.New("capacity exceeded")
	// ErrBadSocket: the socket cannot serve as a destination.
	ErrBadSocket = errors.New("unusable socket")
	// ErrNoBPFFS: the state root is not on a bpf filesystem.
	ErrNoBPFFS = errors.New("no bpf filesystem")
	// ErrIncompatible: pinned state was made by a build whose layout this
	// build cannot migrate.
	ErrIncompatible = errors.New("incompatible pinned state")
	// ErrUnfinished: a change is in force (traffic follows it, and a
	// restarted process finds it) but a write after its commit point
	// failed; the next operation finishes it.
	ErrUnfinished = errors.New("the change is in force but was not finished")
)
