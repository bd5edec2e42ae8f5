package proxyproto_test

import (
	"fmt"

	"github.com/lsmtp/lsmtp/internal/proxyproto"
)

// A connection from the load balancer arrives in pieces; the caller parses
// what it has buffered each time, waits while Parse needs more, and then
// drops the header's n bytes and hands the rest to SMTP.
func ExampleParse() {
	pieces := []string{"PROXY TCP4 192.0.2.1 ", "198.51.100.2 40000 25\r", "\nEHLO client.example\r\n"}
	var buf []byte
	for _, p := range pieces {
		buf = append(buf, p...)
		n, hdr, err := proxyproto.Parse(buf)
		switch {
		case err != nil:
			fmt.Println("close:", err)
			return
		case n == 0:
			fmt.Println("need more")
			continue
		}
		fmt.Println("client", hdr.Source, "local", hdr.Destination, "v", hdr.Version)
		fmt.Printf("SMTP input: %q\n", buf[n:])
	}

	_, _, err := proxyproto.Parse([]byte("PROXY TCP4 192.0.2.01 198.51.100.2 40000 25\r\n"))
	fmt.Println(err)
	// Output:
	// need more
	// need more
	// client 192.0.2.1:40000 local 198.51.100.2:25 v 1
	// SMTP input: "EHLO client.example\r\n"
	// proxyproto: invalid v1 header: byte 20 (source address): leading zero in an IPv4 octet
}
