// Package server is the heart of switchyardd: it serves the control protocol
// on a unix socket for one network namespace, decides who may do what from
// the peer's credentials (SO_PEERCRED, SO_PEERGROUPS) and the label grants
// of the config, and carries requests out on a dispatch.Dispatcher.
//
// It owns the daemon's in-memory label settings (grants and policies) and
// their persistence across restarts; kernel state belongs to package
// dispatch, the wire format to package control.
package server
