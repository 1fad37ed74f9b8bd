package cli

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/switchyard-project/switchyard/internal/control"
)

// controlPath is the control socket to use: --control, or the default of
// the --netns namespace.
func (inv *invocation) controlPath() (string, error) {
	// A --netns that names no namespace is an error even beside
	// --control: the user meant some namespace, and this is not it.
	if inv.netns == "" && inv.control != "" {
		return inv.control, nil
	}
	ino, err := control.NetNSInode(inv.netns)
	if err == nil && inv.control != "" {
		return inv.control, nil
	}
	if err != nil {
		if inv.netns == "" {
			return "", fmt.Errorf("%s: find this process's network namespace: %w: give the control socket with --control PATH", inv.cmd.name, err)
		}
		return "", fmt.Errorf("%s: --netns %s: %w: give a network namespace file such as /run/netns/NAME or /proc/PID/ns/net", inv.cmd.name, inv.netns, err)
	}
	return control.DefaultPath(ino), nil
}

// dial connects to the daemon, with errors that say how to start it.
func (inv *invocation) dial() (*control.Client, error) {
	path, err := inv.controlPath()
	if err != nil {
		return nil, err
	}
	c, err := control.Dial(inv.ctx, path)
	if err != nil {
		return nil, inv.dialError(path, err)
	}
	return c, nil
}

func (inv *invocation) dialError(path string, err error) error {
	name := inv.cmd.name
	start := "switchyardd"
	if inv.netns != "" {
		start += " --netns " + inv.netns
	}
	if inv.control != "" {
		start += " --control " + inv.control
	}
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ECONNREFUSED):
		what := "switchyardd is not running for this network namespace"
		if inv.control != "" {
			what = "switchyardd is not running on that control socket"
		}
		errno := "no control socket at " + path
		if errors.Is(err, unix.ECONNREFUSED) {
			errno = "nothing listens on " + path
		}
		how := fmt.Sprintf("start it with '%s' (or 'systemctl start switchyardd')", start)
		if inv.control != "" {
			how += ", or correct --control"
		}
		return fmt.Errorf("%s: %s (%s): %s", name, what, errno, how)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return fmt.Errorf("%s: no permission to connect to switchyardd at %s: run as root, or ask for access to the control socket", name, path)
	case errors.Is(err, unix.EPROTOTYPE), errors.Is(err, unix.ENOTSOCK):
		return fmt.Errorf("%s: %s is not a switchyard control socket: check --control", name, path)
	}
	return fmt.Errorf("%s: connect to switchyardd: %w", name, err)
}

// requestError explains an error from the daemon, or from the connection to
// it. label is the label concerned, for grant hints.
func (inv *invocation) requestError(label string, err error) error {
	name := inv.cmd.name
	var ce *control.Error
	if !errors.As(err, &ce) {
		return fmt.Errorf("%s: talking to switchyardd failed: %w: check that it is running and see its log (journalctl -u switchyardd)", name, err)
	}
	switch {
	case errors.Is(err, control.ErrPermission):
		switch name {
		case "register", "register-pid", "unregister":
			return fmt.Errorf("%s: switchyardd refused: %w: registering sockets for label %q needs root or a grant for it in the daemon's config (labels: %s: grants: users, groups, uids or gids)", name, err, label, label)
		}
		return fmt.Errorf("%s: switchyardd refused: %w: changing bindings and label settings needs root; run it as root (sudo)", name, err)
	case errors.Is(err, control.ErrConflict):
		return fmt.Errorf("%s: %w: run 'switchyard bindings' to see what is bound, and unbind or change the other binding first", name, err)
	case errors.Is(err, control.ErrNotFound):
		switch name {
		case "unbind":
			return fmt.Errorf("%s: %w: run 'switchyard bindings' to see what is bound; the label must match too", name, err)
		case "unregister":
			return fmt.Errorf("%s: %w: run 'switchyard status' to see the registered sockets", name, err)
		}
		return fmt.Errorf("%s: %w: run 'switchyard status' to see the labels", name, err)
	case errors.Is(err, control.ErrUnsupported):
		return fmt.Errorf("%s: switchyardd cannot do this: %w: if switchyard and switchyardd are different releases, upgrade the older one ('switchyard version' shows both)", name, err)
	case errors.Is(err, control.ErrInternal):
		return fmt.Errorf("%s: switchyardd failed: %w: its log has the details (journalctl -u switchyardd)", name, err)
	}
	return fmt.Errorf("%s: switchyardd refused: %w", name, err)
}
