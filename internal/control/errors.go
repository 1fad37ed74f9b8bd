package control

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// Code classifies a failed request. The codes are part of the protocol: they
// are stable strings that clients match on, and a new code needs a new
// protocol version.
type Code string

const (
	// CodeInvalid: the request is malformed or an argument is wrong. Fix the
	// request; retrying it unchanged fails again.
	CodeInvalid Code = "invalid-argument"
	// CodePermission: the peer may not do this (see SO_PEERCRED and the
	// daemon's config).
	CodePermission Code = "permission-denied"
	// CodeNotFound: the binding, label or socket named does not exist.
	CodeNotFound Code = "not-found"
	// CodeConflict: the request clashes with existing state, for example a
	// binding that would make dispatch ambiguous.
	CodeConflict Code = "conflict"
	// CodeUnsupported: the peer speaks another protocol version, or the
	// operation or feature is not available on this host.
	CodeUnsupported Code = "unsupported"
	// CodeInternal: the daemon failed for a reason that is not the client's
	// fault. Its log says more.
	CodeInternal Code = "internal"
)

var codeText = map[Code]string{
	CodeInvalid:     "invalid argument",
	CodePermission:  "permission denied",
	CodeNotFound:    "not found",
	CodeConflict:    "conflict",
	CodeUnsupported: "unsupported",
	CodeInternal:    "internal error",
}

// Valid reports whether c is one of the codes this package defines.
func (c Code) Valid() bool {
	_, ok := codeText[c]
	return ok
}

// Error is a failed request as the daemon reports it, and also what this
// package returns for messages it refuses to decode. Match the code with the
// sentinels:
//
//	if errors.Is(err, control.ErrPermission) { ... }
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string {
	if e.Message != "" {
		return e.Message
	}
	if t, ok := codeText[e.Code]; ok {
		return t
	}
	return fmt.Sprintf("error %q", string(e.Code))
}

// Is makes errors.Is(err, ErrX) true for every *Error with the code of the
// sentinel ErrX. Errors with CodePermission, CodeNotFound, CodeConflict and
// CodeUnsupported also match fs.ErrPermission, fs.ErrNotExist, fs.ErrExist
// and errors.ErrUnsupported.
func (e *Error) Is(target error) bool {
	if t, ok := target.(*Error); ok {
		return t.Message == "" && t.Code == e.Code
	}
	switch e.Code {
	case CodePermission:
		return target == fs.ErrPermission
	case CodeNotFound:
		return target == fs.ErrNotExist
	case CodeConflict:
		return target == fs.ErrExist
	case CodeUnsupported:
		return target == errors.ErrUnsupported
	}
	return false
}

// Sentinels, one per code, for errors.Is. They carry no message.
var (
	ErrInvalid     = &Error{Code: CodeInvalid}
	ErrPermission  = &Error{Code: CodePermission}
	ErrNotFound    = &Error{Code: CodeNotFound}
	ErrConflict    = &Error{Code: CodeConflict}
	ErrUnsupported = &Error{Code: CodeUnsupported}
	ErrInternal    = &Error{Code: CodeInternal}
)

// Errorf builds an *Error with a formatted message. Use it on the server side
// to answer with a specific code.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func invalidf(format string, args ...any) *Error {
	return Errorf(CodeInvalid, format, args...)
}

// AsError turns any error into an *Error for a reply. An *Error anywhere in
// err's chain gives the code; otherwise binding.ErrInvalid maps to
// CodeInvalid, fs.ErrPermission to CodePermission, fs.ErrNotExist to
// CodeNotFound, fs.ErrExist to CodeConflict, errors.ErrUnsupported to
// CodeUnsupported and anything else to CodeInternal. The message is err's
// full text, so context added by wrapping is kept. AsError(nil) is nil.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var code Code
	var ce *Error
	switch {
	case errors.As(err, &ce):
		if ce == err {
			return ce
		}
		code = ce.Code
	case errors.Is(err, binding.ErrInvalid):
		code = CodeInvalid
	case errors.Is(err, fs.ErrPermission):
		code = CodePermission
	case errors.Is(err, fs.ErrNotExist):
		code = CodeNotFound
	case errors.Is(err, fs.ErrExist):
		code = CodeConflict
	case errors.Is(err, errors.ErrUnsupported):
		code = CodeUnsupported
	default:
		code = CodeInternal
	}
	return &Error{Code: code, Message: err.Error()}
}
