package allocate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
)

// Targets decides which addresses a custom allocation webhook may be
// called at. A webhook URL is whatever an enrollment writer typed, and its
// answer lands in the allocation log: without a check, anyone who may
// write enrollments could have dpsd fetch a cloud metadata service or its
// own debug listener and read the answer back.
//
// Three addresses are always refused: link-local ones (169.254.0.0/16,
// fe80::/10, where cloud metadata services live), the other well-known
// metadata addresses (fd00:ec2::254, 100.100.100.200), and the node's own
// listeners. Beyond those:
//
//   - TargetsLocal (the default) allows loopback and private addresses,
//     since a webhook on the developer's machine or the LAN is how people
//     start;
//   - TargetsPublic also refuses loopback, private (RFC 1918, fc00::/7),
//     shared (100.64.0.0/10), unspecified and multicast addresses, for
//     production nodes whose webhooks are public services;
//   - an allow list (CIDRs and host names) allows only those, and
//     nothing else.
//
// The check is made on the address actually dialled, after DNS
// resolution (net.Dialer.Control), so a name that resolves to a refused
// address, or changes to one between two calls, is refused too; redirects
// are never followed.
type Targets struct {
	mode  string
	allow []netip.Prefix
	hosts map[string]bool
	own   []netip.AddrPort
}

// Target modes.
const (
	TargetsLocal  = "local"
	TargetsPublic = "public"
)

// alwaysRefused are refused in every mode, an allow list included unless
// it names the exact address.
var alwaysRefused = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),     // IPv4 link-local; AWS, GCP, Azure, OCI metadata
	netip.MustParsePrefix("fe80::/10"),          // IPv6 link-local
	netip.MustParsePrefix("fd00:ec2::254/128"),  // AWS metadata over IPv6
	netip.MustParsePrefix("100.100.100.200/32"), // Alibaba Cloud metadata
}

// notPublic are refused by TargetsPublic as well.
var notPublic = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("fc00::/7"),
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("ff00::/8"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// ParseTargets reads a target setting: "" or "local", "public", or a
// comma-separated allow list of CIDRs, IP addresses and host names.
func ParseTargets(s string) (*Targets, error) {
	t := &Targets{mode: TargetsLocal}
	s = strings.TrimSpace(s)
	switch strings.ToLower(s) {
	case "", TargetsLocal:
		return t, nil
	case TargetsPublic:
		t.mode = TargetsPublic
		return t, nil
	}
	t.mode, t.hosts = "allow", map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch {
		case f == "":
			continue
		case strings.Contains(f, "/"):
			p, err := netip.ParsePrefix(f)
			if err != nil {
				return nil, fmt.Errorf("webhook targets: %q is not a CIDR: %w", f, err)
			}
			t.allow = append(t.allow, p.Masked())
		default:
			if a, err := netip.ParseAddr(f); err == nil {
				t.allow = append(t.allow, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
				continue
			}
			if strings.ContainsAny(f, " :/?#@") {
				return nil, fmt.Errorf("webhook targets: %q is neither a CIDR, an IP address nor a host name (want local, public or a list such as 10.1.0.0/16,hooks.example.com)", f)
			}
			t.hosts[strings.ToLower(strings.TrimSuffix(f, "."))] = true
		}
	}
	if len(t.allow) == 0 && len(t.hosts) == 0 {
		return nil, errors.New("webhook targets: the allow list is empty")
	}
	return t, nil
}

// WithOwn returns a copy of t that also refuses the node's own listeners.
// An unspecified listener address (":8443") stands for every address of
// the machine on that port.
func (t *Targets) WithOwn(addrs ...netip.AddrPort) *Targets {
	c := *t
	c.own = append(append([]netip.AddrPort(nil), t.own...), addrs...)
	return &c
}

// String describes the setting, for logs.
func (t *Targets) String() string {
	if t.mode != "allow" {
		return t.mode
	}
	var s []string
	for _, p := range t.allow {
		s = append(s, p.String())
	}
	for h := range t.hosts {
		s = append(s, h)
	}
	return strings.Join(s, ",")
}

// RefusedError says why a webhook target was refused.
type RefusedError struct {
	Addr   string
	Reason string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("webhook target %s refused: %s", e.Addr, e.Reason)
}

// check decides about one dialled address; byName says the URL's host name
// is on the allow list.
func (t *Targets) check(ap netip.AddrPort, byName bool) error {
	a := ap.Addr().Unmap().WithZone("")
	refuse := func(reason string) error { return &RefusedError{Addr: ap.String(), Reason: reason} }
	for _, o := range t.own {
		oa := o.Addr().Unmap()
		if o.Port() != ap.Port() {
			continue
		}
		if oa == a || (oa.IsUnspecified() && isLocalAddr(a)) {
			return refuse("it is one of this node's own listeners")
		}
	}
	explicit := false
	for _, p := range t.allow {
		if p.Contains(a) && p.Bits() == a.BitLen() {
			explicit = true
		}
	}
	if !explicit {
		for _, p := range alwaysRefused {
			if p.Contains(a) {
				return refuse("link-local and cloud metadata addresses are never webhook targets")
			}
		}
	}
	switch t.mode {
	case TargetsPublic:
		for _, p := range notPublic {
			if p.Contains(a) {
				return refuse("only public addresses are allowed (--webhook-targets public)")
			}
		}
	case "allow":
		if byName {
			return nil
		}
		for _, p := range t.allow {
			if p.Contains(a) {
				return nil
			}
		}
		return refuse("not on the webhook allow list (--webhook-targets)")
	}
	return nil
}

// isLocalAddr reports whether a is loopback or one of this machine's
// interface addresses: where a listener on an unspecified address answers.
func isLocalAddr(a netip.Addr) bool {
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a {
				return true
			}
		}
	}
	return false
}

// dialContext dials as d does, with every resolved address checked before
// the connection is made.
func (t *Targets) dialContext(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		byName := t.hosts[strings.ToLower(strings.TrimSuffix(host, "."))]
		dial := *d
		dial.Control = func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return &RefusedError{Addr: address, Reason: "not an IP address and port"}
			}
			return t.check(ap, byName)
		}
		return dial.DialContext(ctx, network, addr)
	}
}
