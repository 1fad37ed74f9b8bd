// Command switchyardd is switchyard's daemon: one per network namespace. It
// attaches the dispatch program, serves the control socket, and exports
// metrics. See README.md.
package main

import (
	"os"

	"github.com/switchyard-project/switchyard/internal/server"
)

func main() { os.Exit(server.Main(server.OSEnv(), os.Args[1:])) }
