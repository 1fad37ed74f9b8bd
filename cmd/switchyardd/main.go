// Command switchyardd is switchyard's daemon: one per network namespace. It
// attaches the dispatch program, serves the control socket, and exports
// metrics. See README.md.
package main

import (
	"os"

	"github.com/switchyard-project/switchyard/internal/server"
	"github.com/switchyard-project/switchyard/internal/splice"
)

func main() {
	// The daemon runs each splice proxy as "switchyardd splice-worker ...".
	if len(os.Args) > 1 && os.Args[1] == "splice-worker" {
		os.Exit(splice.WorkerMain(os.Args[2:]))
	}
	os.Exit(server.Main(server.OSEnv(), os.Args[1:]))
}
