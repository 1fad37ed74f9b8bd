package control

import (
	"fmt"
	"runtime"
	"time"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// Streaming the ListBindings reply. A list of 1,048,576 bindings is about a
// hundred megabytes of JSON; encoding it whole for each request would let
// any local user who asks and never reads pin that much daemon memory per
// connection. WriteBindings encodes it as it sends, one datagram at a time,
// with the same bytes as WriteReply would send (the tests compare them), so
// clients need no change: the total length in each header comes from a
// first pass that only counts.

const (
	listPrefix = `{"result":{"bindings":[`
	listSuffix = `]}}`
)

// BindingFilter selects the bindings a listing includes; nil includes all.
type BindingFilter func(*binding.Binding) bool

// ListingSize is the payload length of the ListBindings reply that lists
// the bindings of bs that keep accepts. A server that sends the same list
// many times can compute it once and pass it to WriteBindings.
func ListingSize(bs []binding.Binding, keep BindingFilter) int {
	scratch := make([]byte, 0, 512)
	total := len(listPrefix) + len(listSuffix)
	n := 0
	for i := range bs {
		if keep != nil && !keep(&bs[i]) {
			continue
		}
		if n > 0 {
			total++
		}
		n++
		total += len(binding.AppendJSON(scratch[:0], &bs[i]))
	}
	return total
}

// WriteBindings sends the successful ListBindings reply listing the
// bindings of bs that keep accepts, in their order, for a request of
// protocol version; size is ListingSize(bs, keep), or 0 to compute it here.
// It holds at most one datagram of the reply in memory.
// Before each datagram it sets the write deadline to the earlier of now +
// frameTimeout and until, so a peer that stops reading is dropped once
// either passes. A failure after the first datagram leaves the connection
// unusable (ErrBroken).
func (c *Conn) WriteBindings(version uint16, bs []binding.Binding, keep BindingFilter, size int, frameTimeout time.Duration, until time.Time) error {
	if !SupportedVersion(version) {
		return versionError(version)
	}
	total := size
	if total <= 0 {
		total = ListingSize(bs, keep)
	}
	if total > MaxListMessage {
		return invalidf("control message: %s reply of %d bytes is over the limit of %d", OpListBindings, total, MaxListMessage)
	}

	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	sent := 0
	buf := make([]byte, 0, MaxChunk+512)
	var f frame
	flush := func(last bool) error {
		for len(buf) >= MaxChunk || (last && (len(buf) > 0 || sent == 0)) {
			chunk := buf[:min(len(buf), MaxChunk)]
			h := header{version: version, op: OpListBindings, flags: flagReply, total: uint32(total), length: uint32(len(chunk))}
			if sent+len(chunk) < total {
				h.flags |= flagMore
			}
			h.put(f.hdr[:])
			f.payload = chunk
			dl := time.Now().Add(frameTimeout)
			if !until.IsZero() && until.Before(dl) {
				dl = until
			}
			c.uc.SetWriteDeadline(dl)
			if err := c.sendFrame(&f, nil); err != nil {
				if sent > 0 {
					c.werr = fmt.Errorf("%w (%v)", ErrBroken, err)
				}
				return err
			}
			sent += len(chunk)
			buf = append(buf[:0], buf[len(chunk):]...)
			// A long listing yields after each datagram, so that a
			// server streaming many at once still answers short requests
			// (root's status) within a few time slices.
			runtime.Gosched()
			if last && len(buf) == 0 {
				break
			}
		}
		return nil
	}
	buf = append(buf, listPrefix...)
	first := true
	for i := range bs {
		if keep != nil && !keep(&bs[i]) {
			continue
		}
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = binding.AppendJSON(buf, &bs[i])
		if len(buf) >= MaxChunk {
			if err := flush(false); err != nil {
				return err
			}
		}
	}
	buf = append(buf, listSuffix...)
	if err := flush(true); err != nil {
		return err
	}
	if sent != total {
		c.werr = fmt.Errorf("%w (listing changed while it was sent: %d of %d bytes)", ErrBroken, sent, total)
		return c.werr
	}
	return nil
}

// Encoded is a reply encoded for sending, so that a server can weigh it
// before it sends it.
type Encoded struct {
	fs   []frame
	size int
}

// Size is the payload length of the encoded reply.
func (e *Encoded) Size() int { return e.size }

// EncodeReplyFrames encodes a reply for WriteEncoded.
func EncodeReplyFrames(rep *Reply) (*Encoded, error) {
	fs, err := encodeReply(rep)
	if err != nil {
		return nil, err
	}
	e := &Encoded{fs: fs}
	for _, f := range fs {
		e.size += len(f.payload)
	}
	return e, nil
}

// WriteEncoded sends an encoded reply, setting the write deadline before
// each datagram as WriteBindings does.
func (c *Conn) WriteEncoded(e *Encoded, frameTimeout time.Duration, until time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	for i := range e.fs {
		dl := time.Now().Add(frameTimeout)
		if !until.IsZero() && until.Before(dl) {
			dl = until
		}
		c.uc.SetWriteDeadline(dl)
		if err := c.sendFrame(&e.fs[i], nil); err != nil {
			if i > 0 {
				c.werr = fmt.Errorf("%w (%v)", ErrBroken, err)
			}
			return err
		}
	}
	return nil
}
