// Command switchyard is the command-line client of switchyardd: it manages
// bindings, registers sockets and applies config files. Run `switchyard help`.
package main

import (
	"context"
	"os"

	"github.com/switchyard-project/switchyard/internal/cli"
)

func main() { os.Exit(cli.Main(context.Background(), cli.OSEnv(), os.Args[1:])) }
