// Command coredns is CoreDNS v1.14.7 with a trimmed plugin set for the
// real-node test cluster: the kubernetes plugin answers for cluster.local and
// nothing is forwarded, so pods never resolve or reach names outside it.
package main

import (
	// dnsserver registers the "dns" server type; each plugin registers
	// itself with it when imported. Only these seven exist in this binary.
	_ "github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
