package server

import (
	"flag"
	"fmt"
)

// usageHead is the start of switchyardd -h; the man page is generated
// from the whole help (make man).
const usageHead = `switchyardd dispatches new connections and datagrams of one network
namespace to the sockets of services: it loads and attaches switchyard's
sk_lookup program, keeps its state pinned in bpffs (so dispatching goes on
while the daemon is stopped or upgraded), accepts sockets and requests from
the switchyard command over a unix control socket, puts connection policies
in force, and exports Prometheus metrics.

It reads --config at start and applies a new version of the file by itself
when the file changes (renamed over, written in place, or a Kubernetes
ConfigMap's ..data symlink swapped), as on SIGHUP; an invalid version is
logged and counted and the running config stays. SIGTERM or SIGINT stop it
and leave dispatching in place. It speaks sd_notify (READY, RELOADING,
STATUS, STOPPING, WATCHDOG).

Usage: switchyardd [--netns PATH] [--config FILE] [--control PATH] [--bpffs DIR] [--metrics-addr ADDR] [flags]

Flags (each may be written -name or --name):
`

const usageTail = `
Exit status: 0 after a stop by signal or a passed --check, 1 on failure,
2 for a wrong command line. See switchyard(1) for the command line client.
`

func writeUsage(fs *flag.FlagSet) {
	fmt.Fprint(fs.Output(), usageHead)
	fs.PrintDefaults()
	fmt.Fprint(fs.Output(), usageTail)
}
