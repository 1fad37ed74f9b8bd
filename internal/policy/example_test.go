package policy_test

import (
	"context"
	"fmt"
	"log"
	"net"

	"github.com/switchyard-project/switchyard/dispatch"
	"github.com/switchyard-project/switchyard/internal/policy"
	"github.com/switchyard-project/switchyard/internal/settings"
)

// A daemon wires the policies of its labels: bypass for one, a splice proxy
// for another (spliced in userspace, the default engine), registering the proxy's listeners as the label's sockets.
func ExampleOpen() {
	d, err := dispatch.Open("", dispatch.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	m, err := policy.Open(d, policy.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close() // bypass stays in force; splice proxies stop

	if err := m.SetBypass("internal-api", true); err != nil {
		log.Fatal(err)
	}
	err = m.StartSplice(context.Background(), "edge-proxy", "10.0.0.7:same", settings.Userspace, func(ln *net.TCPListener) error {
		_, err := d.Register("edge-proxy", ln)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	status, err := m.Status()
	if err != nil {
		log.Fatal(err)
	}
	for label, state := range status {
		fmt.Println(label, state)
	}
}
