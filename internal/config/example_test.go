package config_test

import (
	"fmt"
	"strings"

	"github.com/switchyard-project/switchyard/internal/config"
)

func ExampleParse() {
	c, err := config.Parse(strings.NewReader(`version: 1
bindings:
  - {label: dns, protocol: udp, prefix: 192.0.2.0/24, ports: "53"}
  - {label: web, protocol: tcp, prefix: 192.0.2.0/24, ports: 8000-8999}
  - {label: api, protocol: tcp, prefix: 192.0.2.0/24, ports: 8500-9500}
`))
	fmt.Println(c == nil)
	fmt.Println(err)
	// Output:
	// true
	// line 5: bindings[2]: conflicting bindings: api tcp 192.0.2.0/24 8500-9500 and bindings[1] (line 4: web tcp 192.0.2.0/24 8000-8999) have partially overlapping port ranges at the same protocol and prefix, so neither is more specific; make the ranges disjoint or put one inside the other
}

func ExampleFormatDiff() {
	old, _ := config.Parse(strings.NewReader(`version: 1
bindings:
  - {label: dns, protocol: udp, prefix: 192.0.2.0/24, ports: "53"}
  - {label: web, protocol: tcp, prefix: 192.0.2.0/24, ports: "80"}
`))
	new, _ := config.Parse(strings.NewReader(`version: 1
bindings:
  - {label: dns-public, protocol: udp, prefix: 192.0.2.0/24, ports: "53"}
  - {label: web, protocol: tcp, prefix: 192.0.2.0/24, ports: "80"}
  - {label: web, protocol: tcp, prefix: "2001:db8::/64", ports: "*"}
`))
	added, removed := config.Diff(old.Bindings, new.Bindings)
	fmt.Print(config.FormatDiff(added, removed))
	// Output:
	// - dns udp 192.0.2.0/24 53
	// + dns-public udp 192.0.2.0/24 53
	// + web tcp 2001:db8::/64 *
}
