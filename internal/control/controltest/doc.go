// Package controltest is the one fake switchyardd for tests: a control
// socket served with the real transport (control.Listen, Conn) whose
// replies a test function gives. Tests of the daemon's own request handling use the real server
// (internal/server) instead.
//
// It owns no daemon logic: no state, no authorization, no sockets kept.
package controltest
