// Package config reads, validates and writes switchyard's YAML config file,
// the file that `switchyardd --config FILE` starts from and that
// `switchyard apply -f FILE` makes the daemon's state equal to. It also
// computes and prints the difference between two sets of bindings.
//
// It owns the file format only: it talks to no daemon and touches no kernel
// state. Bindings are parsed with package binding, so the file accepts
// exactly what the CLI accepts.
//
// # Schema (version 1)
//
//	# Comments are allowed anywhere.
//	version: 1                  # required; the only version there is
//
//	bindings:                   # list; order does not matter to dispatch
//	  - {label: dns-public, protocol: udp, prefix: 192.0.2.0/24, ports: "53"}
//	  - {label: dns-public, protocol: tcp, prefix: 192.0.2.0/24, ports: "53"}
//	  - {label: web, protocol: tcp, prefix: "2001:db8::/64", ports: "*"}
//	  - label: web-alt          # block style works too
//	    protocol: tcp
//	    prefix: 198.51.100.7    # a bare address means /32 or /128
//	    ports: 8000-8999
//
//	labels:                     # optional settings per label
//	  dns-public:
//	    grants:                 # who, besides root, may register sockets
//	      uids: [953]
//	      gids: []
//	      users: [knot]         # names are resolved when the daemon needs them
//	      groups: [dns]
//	    policy: none            # none (default) | bypass | splice
//	  web:
//	    policy: splice
//	    upstream: 10.0.0.5:same # host:port, or host:same for the dialled port
//
//	daemon:                     # optional; switchyardd only, flags win
//	  bypass_cgroup: /sys/fs/cgroup/unified
//	  control: /run/switchyard/control.sock
//	  bpffs: /sys/fs/bpf/switchyard
//	  metrics_addr: 127.0.0.1:9100
//
// Each binding has exactly the fields label, protocol (tcp or udp), prefix
// (an IPv4 or IPv6 CIDR prefix or bare address) and ports (a port "80", an
// inclusive range "8000-8999" or every port "*"). Quote "*" and IPv6
// prefixes that start or end with "::" (such as "::/0"): YAML reads them
// otherwise. Host bits of a prefix are cleared, as on the command line.
//
// # Rules
//
//   - Unknown fields, repeated fields, YAML aliases and a second YAML
//     document are errors. Values have strict types: a string field takes a
//     string or a plain number (ports: 53), never a list, a mapping, a
//     boolean or a date; uids and gids take decimal numbers.
//   - The file may be at most MaxFileSize (128 MiB) and hold at most
//     MaxBindings (1,048,576) bindings and MaxLabels (65536) label entries.
//   - Two entries with the same protocol, prefix and ports are an error,
//     whether the labels are equal (a repeat) or differ (a conflict); so are
//     two port ranges at the same protocol and prefix that partially overlap
//     (see binding.Conflict). Nested ranges are fine: the narrower one wins.
//   - policy splice needs an upstream; other policies must have none.
//   - A label may have settings and no bindings, and bindings and no
//     settings (then only root may register its sockets, with policy none).
//   - A byte that is not UTF-8, or a control character other than tab, CR
//     and LF, is reported before any other problem of the content, in the
//     YAML parser's words and without a line.
//
// Errors are *Error values naming the line and the entry (for example
// "line 7: bindings[2]: prefix ...: invalid: ..."); all problems, up to 20,
// are reported at once, sorted by line, joined with errors.Join.
//
// # Speed
//
// Bindings written one per line in the canonical flow form, or as simple
// block mappings, are read by a line scanner (fast.go), and the YAML parser
// reads the rest of the file. Files outside that subset are read entirely by
// the YAML parser, with the same result, tens of times slower. A bindings
// list of more than 2 MiB is scanned, each binding parsed from the file's
// bytes as it is found, in parts on every CPU (one part each, at most 8);
// a list the YAML parser read is parsed in parts from 32,768 entries; either
// way with the same result and errors as in one part. FuzzParse checks that
// the three ways agree. Conflicts are found by sorting the bindings into
// buckets by a hash of protocol and prefix, checked on every CPU.
// Measured with `go test -bench Parse10k
// -benchtime 20x -count 5 ./internal/config` (medians of 5, on a shared
// 2-core VM at load average 6.3): 10,000 bindings (0.7 MB) parse in 5.6 ms
// (127 MB/s, BenchmarkParse10k) through the scanner and in 155 ms (4.6
// MB/s, BenchmarkParse10kYAMLOnly) through the YAML parser alone. At the limit,
// BenchmarkParseMillion (Load of the 79 MB file of 1,048,576 bindings that
// tests/ applies; -benchtime 4x, three runs alternating with those of
// 981daaf, before this scanner parsed, at load 6.4-6.9): 764 ms of CPU
// and 1,150 ms of wall time per parse (medians), against 1,191 ms and
// 1,845 ms; 229 MB allocated against 523 MB.
package config
