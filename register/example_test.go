package register_test

import (
	"context"
	"fmt"
	"log"

	"github.com/switchyard-project/switchyard/register"
)

// A service listens and hands its listener to switchyardd as the
// destination of label "web". In a real service the control path is ""
// (the default socket of the service's network namespace); this example
// talks to a stand-in daemon.
func ExampleListenTCP() {
	ctx := context.Background()
	ln, err := register.ListenTCP(ctx, controlPath, "web-example", "tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	fmt.Println("registered as web-example")
	// Now serve: ln.Accept() returns connections to every address and
	// port bound to "web-example", with their original destination as
	// the local address.

	// Output: registered as web-example
}

// A DNS-like UDP service answers each query from the address the client
// sent it to.
func ExampleUDPConn() {
	ctx := context.Background()
	raw, err := register.ListenUDP(ctx, "", "dns-public", "udp", "127.0.0.1:5353")
	if err != nil {
		log.Fatal(err)
	}
	u, err := register.NewUDPConn(raw)
	if err != nil {
		log.Fatal(err)
	}
	defer u.Close()
	buf := make([]byte, 1500)
	for {
		n, client, dst, err := u.ReadFrom(buf)
		if err != nil {
			log.Fatal(err)
		}
		if _, err := u.WriteTo(buf[:n], dst, client); err != nil {
			log.Print(err)
		}
	}
}
