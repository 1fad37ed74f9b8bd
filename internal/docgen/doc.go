// Command docgen writes the man pages of switchyard(1) and switchyardd(8)
// from the programs' own help texts (`switchyard help`, `switchyard
// COMMAND -h`, `switchyardd -h`), so that the pages say what the binaries
// say. `make man` runs it:
//
//	go run ./internal/docgen -o bin/man
//
// It owns only the conversion from help text to roff; the texts themselves
// live beside the commands (internal/cli, internal/server).
package main
