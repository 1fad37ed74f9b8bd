package dispatch

import (
	"errors"
	"fmt"
	"slices"
	"syscall"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/sockinfo"
)

// Destination is the socket registered for a label, protocol and family.
type Destination struct {
	Label    string           `json:"label"`
	Protocol binding.Protocol `json:"protocol"`
	Family   binding.Family   `json:"family"`
	// Cookie is the socket's SO_COOKIE.
	Cookie uint64 `json:"cookie"`
	// Replaced is set by Register: another socket (another cookie) was
	// registered for the destination until this one took its place.
	Replaced bool `json:"-"`
}

func slotOf(id uint32, proto binding.Protocol, fam binding.Family) uint32 {
	s := id*4 + uint32(protoIndex(proto))*2
	if fam == binding.IPv6 {
		s++
	}
	return s
}

// Register makes conn's socket the destination of label for its protocol and
// family, replacing any socket registered there before. The dispatcher keeps
// no reference: when the service closes the socket, the destination empties.
func (d *Dispatcher) Register(label string, conn syscall.Conn) (Destination, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return Destination{}, fmt.Errorf("register %s: %w", label, err)
	}
	var dest Destination
	var regErr error
	if err := rc.Control(func(fd uintptr) { dest, regErr = d.RegisterFD(label, int(fd)) }); err != nil {
		return Destination{}, fmt.Errorf("register %s: %w", label, err)
	}
	return dest, regErr
}

// RegisterFD is Register for a raw file descriptor, which stays the caller's
// to close.
func (d *Dispatcher) RegisterFD(label string, fd int) (Destination, error) {
	if err := binding.ValidateLabel(label); err != nil {
		return Destination{}, err
	}
	info, err := sockinfo.Validate(fd, d.nsCookie)
	if err != nil {
		return Destination{}, fmt.Errorf("register %s: %w: %w", label, ErrBadSocket, err)
	}
	dest := Destination{Label: label, Protocol: info.Protocol, Family: info.Family, Cookie: info.Cookie}
	err = d.exclusive(func(m *model) error {
		if pr := m.protos[label]; pr != nil && pr[protoIndex(info.Protocol)] == 0 {
			has := binding.TCP
			if pr[0] == 0 {
				has = binding.UDP
			}
			return fmt.Errorf("register %s: %w: the label's bindings are %s only, and this is a %s socket (%s); register a %s socket, or bind the label for %s first",
				label, ErrBadSocket, has, info.Protocol, info, has, info.Protocol)
		}
		if _, ok := m.labels[label]; !ok {
			if err := d.allocLabels(m, []string{label}); err != nil {
				return err
			}
		}
		slot := slotOf(m.labels[label], info.Protocol, info.Family)
		// The sockmap drops a socket when it closes, so a cookie found
		// here is a live socket that this one replaces.
		if prev, ok := d.socketCookie(slot); ok && prev != info.Cookie {
			dest.Replaced = true
		}
		if err := d.objs.SySockets.Update(slot, uint64(fd), ebpf.UpdateAny); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) {
				return fmt.Errorf("register %s: %w: the kernel refused the socket for the sockmap (%s): %w", label, ErrBadSocket, info, err)
			}
			return fmt.Errorf("register %s: insert socket: %w", label, err)
		}
		return nil
	})
	if err != nil {
		return Destination{}, err
	}
	d.log.Info("registered socket", "label", label, "socket", info.String(), "replaced", dest.Replaced)
	return dest, nil
}

// Unregister empties a destination. The socket itself is not closed.
func (d *Dispatcher) Unregister(label string, proto binding.Protocol, fam binding.Family) error {
	return d.exclusive(func(m *model) error {
		id, ok := m.labels[label]
		if !ok {
			return fmt.Errorf("unregister %s: %w: no such label", label, ErrNotFound)
		}
		slot := slotOf(id, proto, fam)
		if err := d.objs.SySockets.Delete(slot); err != nil {
			// A sockmap answers the delete of an empty slot with EINVAL,
			// not ENOENT (net/core/sock_map.c, __sock_map_delete).
			if errors.Is(err, ebpf.ErrKeyNotExist) || errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("unregister %s %s %s: %w: no socket is registered", label, proto, fam, ErrNotFound)
			}
			return fmt.Errorf("unregister %s: %w", label, err)
		}
		return d.gcLabels(m)
	})
}

// Destinations lists the registered sockets, sorted by label.
func (d *Dispatcher) Destinations() ([]Destination, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.read()
	if err != nil {
		return nil, err
	}
	var out []Destination
	for name, id := range m.labels {
		for _, proto := range []binding.Protocol{binding.TCP, binding.UDP} {
			for _, fam := range []binding.Family{binding.IPv4, binding.IPv6} {
				if cookie, ok := d.socketCookie(slotOf(id, proto, fam)); ok {
					out = append(out, Destination{Label: name, Protocol: proto, Family: fam, Cookie: cookie})
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b Destination) int {
		if a.Label != b.Label {
			if a.Label < b.Label {
				return -1
			}
			return 1
		}
		return int(slotOf(0, a.Protocol, a.Family)) - int(slotOf(0, b.Protocol, b.Family))
	})
	return out, nil
}
