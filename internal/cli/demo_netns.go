package cli

import (
	"net/netip"

	"github.com/switchyard-project/switchyard/internal/netns"
)

// newThrowawayNetNS creates a network namespace with lo up and prefix
// routed to lo as local (ip route add local PREFIX dev lo). The namespace
// lives as long as the returned NS and the sockets made in it.
func newThrowawayNetNS(prefix netip.Prefix) (*netns.NS, error) {
	return netns.New(func() error {
		if err := netns.LoUp(); err != nil {
			return err
		}
		return netns.AddLocalRoute(prefix)
	})
}
