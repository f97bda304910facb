package builtinhub

import (
	"errors"
	"strings"
	"testing"

	wire "github.com/dpsd/dpsd/internal/amqp"
)

// TestRouteAMQP: what an AMQP connection carries when it opens decides
// its hub; signals that name none (an IP address, the provisioning
// service's own name, a registration's user name) leave it to the
// put-token; signals that name two hubs, or a hub that does not run, are
// refused with the cause.
func TestRouteAMQP(t *testing.T) {
	const (
		aHost = "hub-a.azure-devices.internal"
		bHost = "hub-b.azure-devices.internal"
		ip    = "127.0.23.9"
	)
	m := &Manager{hubs: map[string]*Hub{
		"hub-a": {cfg: Config{Name: "hub-a", HostName: aHost}},
		"hub-b": {cfg: Config{Name: "hub-b", HostName: bHost}},
	}}
	a, b := m.hubs["hub-a"], m.hubs["hub-b"]
	for _, tc := range []struct {
		name string
		s    amqpSignals
		want *Hub
		cond wire.Symbol // the refusal's condition, "" for none
		desc string      // a part of its description
	}{
		{name: "nothing", s: amqpSignals{}},
		{name: "IP address as hostname (GatewayHostName)", s: amqpSignals{Hostname: ip}},
		{name: "IP address and port as hostname", s: amqpSignals{Hostname: ip + ":5671"}},
		{name: "the provisioning service's name", s: amqpSignals{ServerName: "dpsd.example", Hostname: "dpsd.example"}},
		{name: "TLS server name", s: amqpSignals{ServerName: aHost, Hostname: ip}, want: a},
		{name: "open hostname", s: amqpSignals{Hostname: bHost}, want: b},
		{name: "open hostname with port, any case", s: amqpSignals{Hostname: "HUB-B.azure-devices.internal:5671"}, want: b},
		{name: "server name and hostname agree", s: amqpSignals{ServerName: aHost, Hostname: aHost}, want: a},
		{name: "device SASL user", s: amqpSignals{Hostname: ip, SASLUser: "dev-1@sas.hub-b"}, want: b},
		{name: "device id with @ in SASL user", s: amqpSignals{SASLUser: "me@home@sas.hub-a"}, want: a},
		{name: "service SASL user", s: amqpSignals{SASLUser: "iothubowner@sas.root.hub-a"}, want: a},
		{name: "SASL user with the host name", s: amqpSignals{SASLUser: "dev-1@sas." + bHost}, want: b},
		{name: "registration SASL user", s: amqpSignals{Hostname: ip, SASLUser: "0ne00000001/registrations/dev-1"}},
		{name: "server name and hostname disagree", s: amqpSignals{ServerName: aHost, Hostname: bHost},
			cond: wire.ErrUnauthorized, desc: "names two built-in hubs: " + aHost + " by its TLS server name and " + bHost + " by its open frame's hostname"},
		{name: "hostname and SASL user disagree", s: amqpSignals{Hostname: aHost, SASLUser: "dev-1@sas.hub-b"},
			cond: wire.ErrUnauthorized, desc: aHost + " by its open frame's hostname and " + bHost + " by its SASL user name"},
		{name: "SASL user for no hub", s: amqpSignals{Hostname: ip, SASLUser: "dev-1@sas.hub-x"},
			cond: wire.ErrNotFound, desc: `names hub "hub-x", which is no built-in hub here`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := m.routeAMQP(tc.s)
			if tc.cond != "" {
				var e *wire.Error
				if !errors.As(err, &e) || e.Condition != tc.cond || !strings.Contains(e.Description, tc.desc) {
					t.Fatalf("routeAMQP(%+v) = %v, %v; want %s: …%s…", tc.s, h, err, tc.cond, tc.desc)
				}
				return
			}
			if err != nil || h != tc.want {
				t.Fatalf("routeAMQP(%+v) = %v, %v; want %v", tc.s, name(h), err, name(tc.want))
			}
		})
	}
}

func name(h *Hub) string {
	if h == nil {
		return "no hub"
	}
	return h.cfg.Name
}

func TestSASLHubName(t *testing.T) {
	for user, want := range map[string]string{
		"dev@sas.hub":            "hub",
		"pol@sas.root.hub":       "hub",
		"a@b@SAS.hub":            "hub",
		"0ne/registrations/dev":  "",
		"dev@sas.":               "",
		"":                       "",
		"dev@sas.hub.example.io": "hub.example.io",
	} {
		got, ok := saslHubName(user)
		if got != want || ok != (want != "") {
			t.Errorf("saslHubName(%q) = %q, %v; want %q", user, got, ok, want)
		}
	}
}
